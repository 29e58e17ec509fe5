"""Our TFDS builders; importing this package registers them with TFDS.

Build one with:
  tfds build --imports=input_pipeline.datasets NAME --manual_dir=DIR
"""
import os
import sys

from input_pipeline import errors

# pylint: disable=unused-import
from input_pipeline.datasets import cxr_chexpert  # noqa: F401
from input_pipeline.datasets import cxr_folder  # noqa: F401
from input_pipeline.datasets import cxr_mimic  # noqa: F401
from input_pipeline.datasets import cxr_nih14  # noqa: F401
from input_pipeline.datasets import cxr_padchest  # noqa: F401
from input_pipeline.datasets import cxr_segmentation  # noqa: F401
from input_pipeline.datasets import cxr_targets  # noqa: F401
from input_pipeline.datasets import fashion_mnist_local  # noqa: F401


def _user_errors_in_one_line(hook):
  """`tfds build --imports=input_pipeline.datasets ...` runs our builders
  under TFDS's command line, which lets a missing manual_dir surface as a
  ~60-line traceback: our errors (which say what to do) print as ERROR:
  lines with exit code 2 instead, as our own commands print them."""
  def excepthook(kind, value, traceback):
    if not isinstance(value, errors.UserError):
      return hook(kind, value, traceback)
    print(f"ERROR: {value}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)  # pylint: disable=protected-access
  return excepthook


sys.excepthook = _user_errors_in_one_line(sys.excepthook)
