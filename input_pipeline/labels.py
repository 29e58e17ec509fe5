"""Label harmonisation across chest X-ray datasets.

Every dataset stores labels in its own order (builder.info.metadata
['label_names']) with values 1.0 positive, 0.0 negative, -1.0 uncertain and
NaN not mentioned. Training maps them onto a label set of canonical findings:
  * synonyms map each dataset's names (and PadChest's free-text terms) onto
    canonical names;
  * a canonical finding that a source does not annotate is masked;
  * uncertain labels follow a policy (`UNCERTAIN_POLICIES`);
  * not-mentioned labels are masked (the seed code) or negative.
"""
import re
from typing import Dict, Sequence, Union

import numpy as np

from input_pipeline import errors

NO_FINDING = "No Finding"

# CheXpert / MIMIC-CXR observation columns, in their CSV order.
CHEXPERT_COLUMNS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices")
NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
    "Nodule", "Pneumonia", "Pneumothorax", "Consolidation", "Edema",
    "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")

# Canonical names of every finding any source annotates (the `union` set).
CANONICAL = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
    "Pneumonia", "Pneumothorax", "Enlarged Cardiomediastinum", "Lung Opacity",
    "Lung Lesion", "Pleural Other", "Fracture", "Support Devices",
    "Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis",
    "Pleural Thickening", "Hernia", "Granuloma", "Flattened Diaphragm",
    "Bronchiectasis", "Aortic Elongation", "Scoliosis", "Hilar Enlargement",
    "Tuberculosis", "Air Trapping", "Costophrenic Angle Blunting",
    "Aortic Atheromatosis", "Hemidiaphragm Elevation")

# Dataset label name -> canonical name, where they differ.
SYNONYMS = {
    "Pleural Effusion": "Effusion",
    "Pleural_Thickening": "Pleural Thickening",
}

# PadChest's 27 harmonised findings and the free-text terms that count for
# each (matched on word boundaries within one label term, so that
# 'pseudonodule' is not a nodule). Terms equal to the lower-cased finding
# name are implied.
PADCHEST_FINDINGS = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema",
    "Emphysema", "Fibrosis", "Effusion", "Pneumonia", "Pleural Thickening",
    "Cardiomegaly", "Nodule", "Mass", "Hernia", "Fracture", "Granuloma",
    "Flattened Diaphragm", "Bronchiectasis", "Aortic Elongation", "Scoliosis",
    "Hilar Enlargement", "Tuberculosis", "Air Trapping",
    "Costophrenic Angle Blunting", "Aortic Atheromatosis",
    "Hemidiaphragm Elevation", "Support Devices")
PADCHEST_TERMS = {
    "Infiltration": ("infiltrates", "interstitial pattern",
                     "ground glass pattern", "alveolar pattern",
                     "consolidation", "air bronchogram"),
    "Consolidation": ("air bronchogram",),
    "Edema": ("pulmonary edema",),
    "Effusion": ("pleural effusion",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Nodule": ("nodules",),
    "Hernia": ("hiatal hernia",),
    "Hilar Enlargement": ("adenopathy", "pulmonary artery enlargement"),
    "Support Devices": ("device", "pacemaker", "catheter", "tube"),
}

LABEL_SETS: Dict[str, Sequence[str]] = {
    "common7": ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                "Effusion", "Pneumonia", "Pneumothorax"),
    # The CheXpert competition's 5 findings (mean AUC of the transfer papers).
    "chexpert5": ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                  "Effusion"),
    "chexpert13": tuple(SYNONYMS.get(c, c) for c in CHEXPERT_COLUMNS[1:]),
    "nih14": tuple(SYNONYMS.get(c, c) for c in NIH_LABELS),
    "padchest27": PADCHEST_FINDINGS,
    "union": CANONICAL,
}
# config.data.no_finding: what 'No Finding' = 1 makes negative.
NO_FINDING_RULES = ("unmentioned", "all")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones", "lsr_zeros", "lsr_ones")
# Label-smoothing ranges of the CheXpert paper's U-Zeros+LSR / U-Ones+LSR.
LSR_RANGES = {"lsr_zeros": (0.0, 0.3), "lsr_ones": (0.55, 0.85)}


def canonical(name: str) -> str:
  return SYNONYMS.get(name, name)


def _term_pattern(phrase: str) -> re.Pattern:
  return re.compile(r"(^|\W)" + re.escape(phrase) + r"($|\W)")


_PADCHEST_PATTERNS = {
    finding: [_term_pattern(p) for p in
              (finding.lower(),) + PADCHEST_TERMS.get(finding, ())]
    for finding in PADCHEST_FINDINGS
}


def padchest_findings(terms: Sequence[str]) -> np.ndarray:
  """1.0/0.0 vector over PADCHEST_FINDINGS for a list of PadChest label terms.

  An empty list (or only 'normal' / 'unchanged') gives all zeros.
  """
  terms = [t.strip().lower() for t in terms if t and t.strip()]
  return np.array([float(any(p.search(t) for p in patterns for t in terms))
                   for patterns in _PADCHEST_PATTERNS.values()], np.float32)


def label_set(name: str) -> Sequence[str]:
  if name not in LABEL_SETS:
    raise errors.ConfigError(f"config.data.label_set={name!r}: expected one "
                             f"of {sorted(LABEL_SETS)}.")
  return LABEL_SETS[name]


class Harmonizer:
  """Maps one source's label vectors onto a label set, with a loss mask.

  `__call__` works on TF tensors (inside tf.data) and eagerly on NumPy.
  """

  def __init__(self, source_label_names: Sequence[str],
               label_set_name: Union[str, Sequence[str]],
               uncertain: str = "ignore", missing: str = "mask",
               no_finding: str = "unmentioned"):
    if uncertain not in UNCERTAIN_POLICIES:
      raise errors.ConfigError(f"config.data.uncertain={uncertain!r}: "
                               f"expected one of {UNCERTAIN_POLICIES}.")
    if no_finding not in NO_FINDING_RULES:
      raise errors.ConfigError(f"config.data.no_finding={no_finding!r}: "
                               f"expected one of {NO_FINDING_RULES}.")
    if missing not in ("mask", "zeros"):
      raise errors.ConfigError(f"config.data.missing={missing!r}: expected "
                               "'mask' or 'zeros'.")
    # A name of LABEL_SETS, or the label names themselves (a folder
    # dataset's own findings).
    self.names = tuple(label_set(label_set_name)
                       if isinstance(label_set_name, str) else label_set_name)
    by_canonical = {canonical(n): i for i, n in enumerate(source_label_names)}
    # Column of the source for each target finding; -1 = not annotated.
    self.columns = np.array([by_canonical.get(n, -1) for n in self.names],
                            np.int32)
    self.annotated = [n for n, c in zip(self.names, self.columns) if c >= 0]
    self.no_finding_column = (list(source_label_names).index(NO_FINDING)
                              if NO_FINDING in source_label_names else None)
    self.uncertain = uncertain
    self.missing = missing
    self.no_finding = no_finding

  def __call__(self, values, rng=None):
    """Returns (labels, mask), both float32 [..., len(label set)], for label
    vectors `values` [..., source labels] (one or a batch).

    `rng` ([2] int seed) is needed only by the lsr_* policies.
    """
    # Imported here: the label tables above serve config validation where
    # only JAX is installed.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    values = tf.convert_to_tensor(values, tf.float32)
    if self.no_finding_column is not None:
      # No Finding = 1: the unmentioned findings are negative ('unmentioned');
      # the seed made every finding negative, a positive one too ('all').
      no_finding = tf.equal(values[..., self.no_finding_column:
                                   self.no_finding_column + 1], 1.0)
      if self.no_finding == "unmentioned":
        no_finding &= tf.math.is_nan(values)
      values = tf.where(no_finding, 0.0, values)
    annotated = tf.constant(self.columns >= 0)
    picked = tf.gather(values, np.maximum(self.columns, 0), axis=-1)
    picked = tf.where(annotated, picked, tf.constant(np.nan, tf.float32))
    mentioned = tf.logical_not(tf.math.is_nan(picked))
    uncertain = tf.equal(picked, -1.0)
    labels = tf.where(mentioned, picked, 0.0)
    mask = tf.cast(mentioned if self.missing == "mask" else
                   tf.broadcast_to(annotated, tf.shape(picked)), tf.float32)
    if self.uncertain == "ignore":
      mask = tf.where(uncertain, 0.0, mask)
    elif self.uncertain in ("zeros", "ones"):
      labels = tf.where(uncertain, 1.0 if self.uncertain == "ones" else 0.0,
                        labels)
    else:
      low, high = LSR_RANGES[self.uncertain]
      smooth = tf.random.stateless_uniform(tf.shape(labels), rng, low, high)
      labels = tf.where(uncertain, smooth, labels)
    labels = tf.where(uncertain & (mask == 0), 0.0, labels)
    return labels, mask
