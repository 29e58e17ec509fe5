r"""Your own chest X-rays as a dataset: a folder of images and a labels CSV.

  python -m big_transfer_med.import_folder --name=myhosp --images=DIR \
      --labels=labels.csv --check_only
  python -m big_transfer_med.import_folder --name=myhosp --images=DIR \
      --labels=labels.csv [--data_dir=~/tensorflow_datasets]

The CSV (input_pipeline/datasets/folder_labels.py): `path` (relative to
--images) and `patient_id` are required; `split`, `study_id`, `view`, `sex`, `age` are
optional; labels are one `label` column (single-label) or one column per
finding of 1 / 0 / -1 / blank (multi-label; which columns are findings is
printed, --findings chooses them). Images: DICOM, 8/16-bit PNG, JPEG, in any
sub-folders. Splits are patient-disjoint: the `split` column's, or drawn by
patient (--split=80/10/10, --seed).

--check_only reads every row and image, writes nothing, and prints one line
per kind of problem with its count, then the dataset's summary. The build
(the cxr_folder TFDS builder, ArrayRecord, `tfds.load`-able) skips bad rows
(or stops at the first with --strict), writes errors.csv
(row,path,column,value,problem) beside the dataset, and leaves nothing behind
if it fails. Then: configs/transfer.py:target=folder:NAME.
"""
import collections
import os
import re
import sys

import numpy as np
from absl import app
from absl import flags

from big_transfer_med import cli
from input_pipeline import errors
from input_pipeline.datasets import folder_labels

FLAGS = flags.FLAGS
flags.DEFINE_string("name", None, "Dataset name (letters, digits, _).")
flags.DEFINE_string("images", None, "Folder of the images (any sub-folders).")
flags.DEFINE_string("labels", None, "The labels CSV.")
flags.DEFINE_string("data_dir", None,
                    "TFDS data_dir to build into (default "
                    "~/tensorflow_datasets; train with "
                    "--config.data.data_dir set to the same).")
flags.DEFINE_bool("check_only", False,
                  "Read and check everything; write nothing.")
flags.DEFINE_bool("strict", False, "Stop at the first bad row or image.")
flags.DEFINE_list("findings", [], "Multi-label: the finding columns "
                  "(default: the columns holding 1 / 0 / -1).")
flags.DEFINE_string("split", "80/10/10",
                    "train/validation/test percentages by patient, for a CSV "
                    "without a 'split' column.")
flags.DEFINE_integer("seed", 0, "Seeds the split by patient.")
flags.DEFINE_integer("max_short_side", 512,
                     "Stored images' shorter side at most (0 = as read).")
flags.mark_flags_as_required(["name", "images", "labels"])

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_inputs(name: str, images: str) -> None:
  if not _NAME_RE.match(name):
    raise errors.ConfigError(f"--name={name!r}: use lower-case letters, "
                             "digits and _, starting with a letter.")
  if not os.path.isdir(images):
    raise errors.DataError(f"--images={images}: no such folder.")
  if not any(files for _, _, files in os.walk(images)):
    raise errors.DataError(f"--images={images}: the folder holds no files.")


def _describe_labels(table: folder_labels.Table) -> str:
  kind = ("single-label, classes" if table.single_label
          else "multi-label, findings")
  unused = (f"; columns not used: {', '.join(table.unused_columns)}"
            if table.unused_columns else "")
  return f"{kind}: {', '.join(table.label_names)}{unused}"


def _image_problems(table, skipped) -> list:
  """A Problem per (source_path, ImageError); the error's text without its
  path."""
  line = {r["source_path"]: r["row"] for r in table.rows}
  return [folder_labels.Problem(
              line[path], path, "path", path,
              "unreadable image: " + str(error).split(": ", 1)[-1].rstrip("."))
          for path, error in skipped]


def _read_every_image(table, images: str, max_short_side) -> list:
  """Problems of the rows whose image does not read (the check's pass)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from input_pipeline.datasets import cxr_common  # pylint: disable=g-import-not-at-top
  from input_pipeline.datasets import cxr_folder  # pylint: disable=g-import-not-at-top
  bad = []
  for row in tqdm(table.rows, unit="image", leave=False,
                  disable=not sys.stderr.isatty()):
    try:
      cxr_folder.read_image(os.path.join(images, row["source_path"]),
                            max_short_side)
    except cxr_common.ImageError as e:
      bad.append((row["source_path"], e))
  return _image_problems(table, bad)


def report(table, problems) -> str:
  """One line per kind of problem (count, first row), then per split of the
  rows without a problem: images, patients and positives per label."""
  bad = {p.row for p in problems}
  good_rows = [r for r in table.rows if r["row"] not in bad]
  lines = [f"{table.csv_path}: {table.num_rows} rows; "
           f"{_describe_labels(table)}"]
  kinds = collections.defaultdict(list)
  for p in problems:
    kinds[p.problem.split(" (")[0].split(":")[0]].append(p)
  for kind, found in sorted(kinds.items(), key=lambda k: -len(k[1])):
    count = len({p.row for p in found})
    lines.append(f"  {count} row{'s' * (count > 1)}: {kind} (first: "
                 f"{found[0].line()})")
  if not kinds:
    lines.append("  no problems found")
  header = ["split", "images", "patients"] + list(table.label_names)
  table_rows = []
  for split in folder_labels.SPLITS:
    rows = [r for r in good_rows if r["split"] == split]
    if not rows:
      continue
    if table.single_label:
      positives = [sum(r["label"] == c for r in rows)
                   for c in table.label_names]
    else:
      values = np.array([r["labels"] for r in rows], np.float32)
      positives = list(np.sum(values == 1.0, axis=0).astype(int))
    table_rows.append([split, len(rows), len({r["patient_id"] for r in rows}),
                       *positives])
  widths = [max(len(str(x)) for x in column)
            for column in zip(header, *table_rows)]
  lines.append(f"{len(good_rows)} usable images of "
               f"{len({r['patient_id'] for r in good_rows})} patients"
               + ("" if table.single_label else " (positives per finding)")
               + ":")
  for row in [header] + table_rows:
    lines.append("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
  return "\n".join(lines)


def _build(table, max_short_side):
  """Builds the dataset; returns (builder, image problems). A failed build
  leaves no folder behind (base.ArrayRecordBuilderMixin)."""
  from input_pipeline.datasets import cxr_folder  # pylint: disable=g-import-not-at-top
  target = cxr_folder.dataset_dir(FLAGS.name, FLAGS.data_dir)
  if target.parent.exists():
    raise errors.DataError(
        f"{target.parent} exists: a dataset named {FLAGS.name!r} is already "
        "built there. Choose another --name, or delete that folder to rebuild.")
  config = cxr_folder.FolderConfig(
      name=FLAGS.name, images=os.path.abspath(FLAGS.images),
      labels=os.path.abspath(FLAGS.labels), findings=tuple(FLAGS.findings),
      split=FLAGS.split, split_seed=FLAGS.seed,
      max_short_side=max_short_side, strict_images=FLAGS.strict,
      description=f"{FLAGS.images} labelled by {FLAGS.labels}")
  builder = cxr_folder.CxrFolder(config=config, data_dir=FLAGS.data_dir)
  builder.download_and_prepare()
  return builder, _image_problems(table, builder.skipped_images)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _check_inputs(FLAGS.name, FLAGS.images)
  max_short_side = FLAGS.max_short_side or None
  table = folder_labels.read_table(
      FLAGS.labels, FLAGS.images, tuple(FLAGS.findings),
      folder_labels.parse_fractions(FLAGS.split), FLAGS.seed)
  if not table.rows:
    raise errors.DataError(
        f"{FLAGS.labels}: no usable row ({len(table.problems)} problems; "
        f"first: {table.problems[0].line() if table.problems else 'none'}).")
  if FLAGS.check_only:
    problems = table.problems + _read_every_image(table, FLAGS.images,
                                                  max_short_side)
    print(report(table, problems))
    return
  builder, image_problems = _build(table, max_short_side)
  problems = sorted(table.problems + image_problems, key=lambda p: p.row)
  errors_csv = os.path.join(builder.data_dir, "errors.csv")
  folder_labels.write_problems(errors_csv, problems)
  print(report(table, problems))
  print(f"Built {FLAGS.name} in {builder.data_dir} ({len(problems)} problems "
        f"listed in {errors_csv}). Train on it with\n  python -m "
        "big_transfer_med.main --config=configs/transfer.py:target=folder:"
        f"{FLAGS.name},init=... --workdir=runs/{FLAGS.name}"
        + (f" --config.data.data_dir={FLAGS.data_dir}" if FLAGS.data_dir
           else ""))


if __name__ == "__main__":
  cli.run(main)
