r"""Writes the index of each split of a dataset built before indexes existed
(split_index.py says what an index holds), without a rebuild:

  python -m input_pipeline.record_index cxr_nih14/default --data_dir=DIR
"""
import sys
from typing import Sequence

from absl import app
from absl import flags

import input_pipeline.datasets  # noqa: F401  (registers our builders)
from input_pipeline import errors
from input_pipeline import pipeline
from input_pipeline import split_index


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("Usage: python -m input_pipeline.record_index "
                         "NAME[/CONFIG] --data_dir=DIR")
  try:
    builder = pipeline.load_builder(argv[1], flags.FLAGS.data_dir)
  except errors.UserError as e:
    sys.exit(f"ERROR: {e}")  # One line, as the trainer's entry points.
  split_index.write_all(builder, builder.info.splits.values())
  for split in builder.info.splits:
    print(split_index.path(builder.data_dir, builder.name, split))


if __name__ == "__main__":
  flags.DEFINE_string("data_dir", None, "The TFDS data_dir of the build.")
  app.run(main)
