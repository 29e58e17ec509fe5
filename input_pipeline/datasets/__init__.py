"""Our TFDS builders; importing this package registers them with TFDS.

Build one with:
  tfds build --imports=input_pipeline.datasets NAME --manual_dir=DIR
"""
# pylint: disable=unused-import
from input_pipeline.datasets import cxr_chexpert  # noqa: F401
from input_pipeline.datasets import cxr_folder  # noqa: F401
from input_pipeline.datasets import cxr_mimic  # noqa: F401
from input_pipeline.datasets import cxr_nih14  # noqa: F401
from input_pipeline.datasets import cxr_padchest  # noqa: F401
from input_pipeline.datasets import cxr_segmentation  # noqa: F401
from input_pipeline.datasets import cxr_targets  # noqa: F401
from input_pipeline.datasets import fashion_mnist_local  # noqa: F401
