"""A user's labels CSV for a folder of radiographs: columns, rows, problems
and patient-disjoint splits (read by the cxr_folder builder and by
`python -m big_transfer_med.import_folder`).

Required columns: `path` (relative to the images folder) and `patient_id`.
Optional: `split` (train / validation / test), `study_id`, `view`, `sex`,
`age`. Labels: one `label` column (single-label; its values are the class
names), or one column per finding (multi-label) holding 1 (positive), 0
(negative), -1 (uncertain) or blank (not labelled).
"""
import collections
import csv
import dataclasses
import math
import os
from typing import Optional, Sequence

from input_pipeline import errors
from input_pipeline.datasets import cxr_common

REQUIRED = ("path", "patient_id")
METADATA = ("split", "study_id", "view", "sex", "age")
SPLITS = ("train", "validation", "test")
_SPLIT_SYNONYMS = {"val": "validation", "valid": "validation"}
_LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0,
                 "-1.0": -1.0}
ERRORS_HEADER = ("row", "path", "column", "value", "problem")
# The one problem that stops a build whatever --strict says.
PATIENT_IN_TWO_SPLITS = "patient in two splits"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One bad row (`row` is the CSV line number; the header is line 1)."""
  row: int
  path: str
  column: str
  value: str
  problem: str

  def line(self) -> str:
    where = (f" in column {self.column!r}" + (f" ({self.value!r})"
                                               if self.value else "")
             if self.column not in ("", "path") else "")
    return f"row {self.row} ({self.path or 'no path'}): {self.problem}{where}"


@dataclasses.dataclass
class Table:
  """The CSV read: good rows (example fields, 'split' assigned), the label
  names (findings, or single-label classes) and the problems found."""
  csv_path: str
  num_rows: int
  single_label: bool
  label_names: list
  rows: list
  problems: list
  unused_columns: list
  split_from_csv: bool


def _fatal(csv_path: str, what: str) -> errors.DataError:
  return errors.DataError(f"{csv_path}: {what}")


def _read_csv(csv_path: str) -> tuple[list, list]:
  """(header, [(line number, row dict)]), or a one-line DataError."""
  if not os.path.isfile(csv_path):
    raise _fatal(csv_path, "no such file; --labels takes the labels CSV.")
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [h.strip() for h in (reader.fieldnames or [])]
      reader.fieldnames = header
      rows = [(reader.line_num, row) for row in reader]
  except (UnicodeDecodeError, csv.Error) as e:
    raise _fatal(csv_path, f"not a text CSV file ({e}).") from e
  missing = [c for c in REQUIRED if c not in header]
  if missing:
    raise _fatal(csv_path, f"the header lacks the column(s) {missing}; it has "
                 f"{header[:8]}. The first line must name the columns, "
                 "among them path and patient_id.")
  return header, rows


def _choose_findings(header: Sequence[str], rows, findings: Sequence[str],
                     csv_path: str) -> tuple[list, list]:
  """(finding columns, unused columns). Without `findings`, a column is a
  finding when most of its filled values are 1 / 0 / -1."""
  candidates = [c for c in header if c not in REQUIRED + METADATA and c]
  if findings:
    absent = [f for f in findings if f not in header]
    if absent:
      raise _fatal(csv_path, f"--findings names {absent}, which the header "
                   f"lacks; it has {candidates}.")
    return list(findings), [c for c in candidates if c not in findings]
  chosen = []
  for column in candidates:
    filled = [r.get(column, "").strip() for _, r in rows]
    filled = [v for v in filled if v]
    if filled and sum(v in _LABEL_VALUES for v in filled) > len(filled) / 2:
      chosen.append(column)
  return chosen, [c for c in candidates if c not in chosen]


def read_table(csv_path: str, images_dir: str,
               findings: Sequence[str] = (),
               fractions: Optional[dict] = None, seed: int = 0) -> Table:
  """Reads and checks the CSV (file existence included, not image content).

  Splits come from the `split` column, else each patient is drawn into one
  by a seeded shuffle (`fractions`, default 80/10/10). A CSV that cannot be
  read, lacks path / patient_id, or names no label raises a one-line
  DataError; bad rows become Problems.
  """
  header, raw_rows = _read_csv(csv_path)
  single_label = "label" in header
  if single_label:
    finding_columns = []
    unused = [c for c in header if c not in REQUIRED + METADATA + ("label",)]
  else:
    finding_columns, unused = _choose_findings(header, raw_rows, findings,
                                               csv_path)
    if not finding_columns:
      raise _fatal(csv_path, "no label column: give a 'label' column "
                   "(single-label) or columns of 1 / 0 / -1 / blank, one per "
                   f"finding (multi-label); the header has {header}.")
  problems, rows, seen = [], [], {}
  for line, raw in raw_rows:
    row_problems = []
    path = (raw.get("path") or "").strip()
    example, bad = _parse_row(raw, line, path, finding_columns, single_label,
                              "split" in header)
    row_problems += bad
    if not path:
      row_problems.append(Problem(line, "", "path", "", "missing path"))
    elif path in seen:
      row_problems.append(Problem(
          line, path, "path", path,
          f"duplicate path (first at row {seen[path]})"))
    elif not os.path.isfile(os.path.join(images_dir, path)):
      row_problems.append(Problem(line, path, "path", path, "missing file"))
    seen.setdefault(path, line)
    if row_problems:
      problems += row_problems
    else:
      rows.append(dict(example, row=line))
  if single_label:
    label_names = sorted({r["label"] for r in rows})
  else:
    label_names = finding_columns
  if "split" in header:
    problems += _patients_in_two_splits(rows)
  else:
    _draw_splits(rows, fractions or {"train": 0.8, "validation": 0.1,
                                     "test": 0.1}, seed, csv_path)
  return Table(csv_path, len(raw_rows), single_label, label_names, rows,
               problems, unused,
               "split" in header)


def _parse_row(raw: dict, line: int, path: str, finding_columns, single_label,
               has_split: bool) -> tuple[dict, list]:
  """(example fields, problems) of one CSV row."""
  problems = []
  example = {"source_path": path,
             "patient_id": (raw.get("patient_id") or "").strip(),
             "study_id": (raw.get("study_id") or "").strip(),
             "view": (raw.get("view") or "").strip(),
             "sex": (raw.get("sex") or "").strip(),
             "age": cxr_common.parse_age(raw.get("age"))}
  if not example["patient_id"]:
    problems.append(Problem(line, path, "patient_id", "", "missing patient id"))
  if has_split:
    value = (raw.get("split") or "").strip()
    split = _SPLIT_SYNONYMS.get(value.lower(), value.lower())
    if split not in SPLITS:
      problems.append(Problem(line, path, "split", value,
                              f"unknown split (expected one of {SPLITS})"))
    example["split"] = split
  if single_label:
    example["label"] = (raw.get("label") or "").strip()
    if not example["label"]:
      problems.append(Problem(line, path, "label", "",
                              "blank label in a single-label CSV"))
    return example, problems
  values = []
  for column in finding_columns:
    value = (raw.get(column) or "").strip()
    if value and value not in _LABEL_VALUES:
      problems.append(Problem(line, path, column, value,
                              "label value other than 1 / 0 / -1 / blank"))
    values.append(_LABEL_VALUES.get(value, math.nan))
  example["labels"] = values
  return example, problems


def _patients_in_two_splits(rows: list) -> list:
  """Problems for every row of a patient whose rows name two splits."""
  splits = collections.defaultdict(set)
  for row in rows:
    splits[row["patient_id"]].add(row["split"])
  mixed = {p for p, s in splits.items() if len(s) > 1}
  return [Problem(r["row"], r["source_path"], "split", r["split"],
                  f"{PATIENT_IN_TWO_SPLITS}: patient {r['patient_id']} is in "
                  f"splits {sorted(splits[r['patient_id']])}")
          for r in rows if r["patient_id"] in mixed]


def _draw_splits(rows: list, fractions: dict, seed: int, csv_path: str):
  """Assigns each row its patient's split (seeded, by patient)."""
  if not rows:
    return
  try:
    assignment = cxr_common.patient_split([r["patient_id"] for r in rows],
                                          fractions, seed)
  except errors.DataError as e:
    raise _fatal(csv_path, f"{e} Give fewer splits (--split) or a 'split' "
                 "column.") from e
  for row in rows:
    row["split"] = assignment[row["patient_id"]]


def parse_fractions(text: str) -> dict:
  """'80/10/10' (train/validation/test, any scale; 0 drops a split) ->
  {split: fraction}."""
  try:
    parts = [float(p) for p in text.split("/")]
  except ValueError:
    parts = []
  if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0:
    raise errors.ConfigError(f"--split={text!r}: expected train/validation/"
                             "test percentages such as 80/10/10.")
  return {s: p / sum(parts) for s, p in zip(SPLITS, parts) if p > 0}


def write_problems(path: str, problems: Sequence[Problem]) -> None:
  """errors.csv: row,path,column,value,problem."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(ERRORS_HEADER)
    for p in problems:
      writer.writerow([p.row, p.path, p.column, p.value, p.problem])
