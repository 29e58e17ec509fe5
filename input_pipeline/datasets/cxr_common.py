"""Pieces shared by the chest X-ray builders: features, image loading, CSV fields."""
import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from input_pipeline import errors
from input_pipeline.choices import VIEWS
from input_pipeline.datasets import base

_VIEW_SYNONYMS = {
    "PA": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "ANTEROPOSTERIOR": "AP",
    "AP_HORIZONTAL": "AP_SUPINE", "AP SUPINE": "AP_SUPINE",
    "AP_SUPINE": "AP_SUPINE", "SUPINE": "AP_SUPINE",
    "L": "LATERAL", "LL": "LATERAL", "LATERAL": "LATERAL", "RL": "LATERAL",
}
DEFAULT_MAX_SHORT_SIDE = 512
# Pillow refuses images above ~179 MP as "decompression bombs"; radiographs
# are far below that, so the check only gets in the way of 16-bit files.
Image.MAX_IMAGE_PIXELS = None


def normalize_view(value: Optional[str]) -> str:
  """Maps a dataset's projection / view string onto VIEWS."""
  if value is None:
    return "OTHER"
  return _VIEW_SYNONYMS.get(str(value).strip().upper(), "OTHER")


def parse_float(value: Optional[str]) -> float:
  """'1.0' -> 1.0; blank, 'None', 'nan' -> NaN."""
  if value is None:
    return math.nan
  value = str(value).strip()
  if value in ("", "None", "nan", "NaN"):
    return math.nan
  return float(value)


def parse_age(value: Optional[str]) -> float:
  """Ages as released: '68', '68.0', '058Y' (NIH variants); else NaN."""
  if value is None:
    return math.nan
  value = str(value).strip().upper().rstrip("Y")
  try:
    return float(value)
  except ValueError:
    return math.nan


@dataclasses.dataclass
class CxrConfig(tfds.core.BuilderConfig):
  """max_short_side: downscale so that the shorter side is at most this
  (aspect kept, bit depth kept); None stores the released bytes.
  strict_images: a missing or bad image fails the build instead of being
  skipped. TFDS wants a new name for a custom config, e.g.
  tfds build ... --config='{"name": "strict", "strict_images": true}'
  (then train with config.data.builder_config='strict'). seed_split:
  split as the seed paper's code did, where a builder offers it."""
  max_short_side: Optional[int] = DEFAULT_MAX_SHORT_SIDE
  strict_images: bool = False
  seed_split: bool = False  # Builders that have one: the seed code's split.
  # How downscaled images are stored: 'png' (lossless) or 'jpeg' (quality 95,
  # TFDS's encoder default; 8-bit images only).
  image_format: str = "png"


BUILDER_CONFIGS = [
    CxrConfig(name="default", max_short_side=DEFAULT_MAX_SHORT_SIDE,
              description="Images downscaled to a shorter side of at most "
                          "512 px (area interpolation), bit depth kept."),
    CxrConfig(name="original", max_short_side=None,
              description="Image files stored exactly as released."),
]
# 8-bit sources also offer their default images as JPEG: decoding them is
# about 3x faster than PNG (README, Performance), at a small loss.
EIGHT_BIT_CONFIGS = BUILDER_CONFIGS + [
    CxrConfig(name="jpeg", max_short_side=DEFAULT_MAX_SHORT_SIDE,
              image_format="jpeg",
              description="As 'default', stored as JPEG of quality 95."),
]


def image_feature(config: CxrConfig, dtype=np.uint8) -> tfds.features.Image:
  """The grayscale image feature `config` stores (released bytes, or its
  downscaled images as config.image_format)."""
  return tfds.features.Image(
      shape=(None, None, 1), dtype=dtype,
      encoding_format=(None if config.max_short_side is None
                       else config.image_format))


def features(label_names: Sequence[str], image: tfds.features.Image,
             single_label: bool = False) -> tfds.features.FeaturesDict:
  """A chest X-ray example: 'labels', a float per finding (1, 0, -1, NaN),
  or with `single_label` 'label', one of `label_names`; and its metadata."""
  labels = ({"label": tfds.features.ClassLabel(names=label_names)}
            if single_label else
            {"labels": tfds.features.Tensor(shape=(len(label_names),),
                                            dtype=np.float32)})
  return tfds.features.FeaturesDict({
      "image": image,
      **labels,
      "patient_id": tfds.features.Text(),
      "study_id": tfds.features.Text(),
      "view": tfds.features.ClassLabel(names=VIEWS),
      "sex": tfds.features.Text(),
      "age": np.float32,
      "source_path": tfds.features.Text(),
  })


class ImageError(Exception):
  """An image listed in the metadata is missing, truncated or undecodable."""


def load_image(path: str, max_short_side: Optional[int], dtype=np.uint8):
  """Returns the image for the builder: a [H, W, 1] array, or the path itself
  when stored as released. Raises ImageError for a bad file."""
  if not epath.Path(path).exists():
    raise ImageError(f"{path}: missing")
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as image:
      image.load()
      array = np.asarray(image)
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"{path}: cannot decode ({e})") from e
  if array.ndim == 3:  # RGB(A) saved by some tools: keep the luminance.
    array = np.asarray(Image.fromarray(array[..., :3]).convert("L"))
  if array.ndim != 2:
    raise ImageError(f"{path}: unexpected image shape {array.shape}")
  if max_short_side is None:
    return path
  if dtype == np.uint16 and array.dtype != np.uint16:
    raise ImageError(f"{path}: expected a 16-bit image, got {array.dtype}")
  return downscale(array.astype(dtype), max_short_side)


def downscale(array: np.ndarray, max_short_side: int, method: str = "area"
              ) -> np.ndarray:
  """Integer [H, W] -> [h, w, 1] of its dtype with the shorter side at most
  `max_short_side` (aspect kept; `method` as tf.image.resize: 'area' for
  images, 'nearest' for masks)."""
  height, width = array.shape
  scale = max_short_side / min(height, width)
  if scale >= 1:
    return array[..., None]
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  resized = tf.image.resize(array[..., None].astype(np.float32), size,
                            method=method).numpy()
  info = np.iinfo(array.dtype)
  return np.clip(np.round(resized), info.min, info.max).astype(array.dtype)


def strict_image_error(dataset: str, split: str,
                       error: ImageError) -> errors.DataError:
  return errors.DataError(
      f"{dataset}[{split}]: {error}. Fix or restore the file, or build "
      "without strict_images to skip such images.")


class SkipCounter:
  """Counts images skipped during a build and logs the first few by name."""

  def __init__(self, dataset: str, split: str, fatal: bool, show: int = 5):
    self.dataset, self.split, self.fatal, self.show = dataset, split, fatal, show
    self.skipped = []

  def skip(self, error: ImageError):
    if self.fatal:
      raise strict_image_error(self.dataset, self.split, error) from error
    self.skipped.append(str(error))
    if len(self.skipped) <= self.show:
      logging.warning("%s[%s]: skipping image %s", self.dataset, self.split,
                      error)

  def report(self):
    if self.skipped:
      logging.warning("%s[%s]: skipped %d unreadable images (first: %s).",
                      self.dataset, self.split, len(self.skipped),
                      "; ".join(self.skipped[:self.show]))


def _beam_example(row, locate, max_short_side, dtype, strict, dataset, split):
  """Beam worker: [(key, example)] for one row, [] for a skipped image."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  try:
    image = load_image(locate(row), max_short_side, dtype)
  except ImageError as e:
    if strict:
      raise strict_image_error(dataset, split, e) from e
    beam.metrics.Metrics.counter(dataset, f"{split}_skipped_images").inc()
    logging.warning("%s[%s]: skipping image %s", dataset, split, e)
    return []
  return [(row["source_path"], dict(row, image=image))]


def patient_split(patient_ids: Sequence[str], fractions: dict, seed: int = 0
                  ) -> dict:
  """Assigns each patient to one split by a seeded shuffle of the sorted ids.

  `fractions` maps split name -> fraction; the first split takes what the
  others leave, and every other split gets at least one patient. Returns
  {patient_id: split}; deterministic and independent of row order.
  """
  patients = sorted(set(patient_ids))
  names = list(fractions)
  counts = {n: max(1, round(fractions[n] * len(patients))) for n in names[1:]}
  counts[names[0]] = len(patients) - sum(counts.values())
  if counts[names[0]] < 1:
    raise errors.DataError(f"Only {len(patients)} patients: too few to split "
                           f"into {names}.")
  order = np.random.default_rng(seed).permutation(len(patients))
  result, start = {}, 0
  for name in names:
    for i in order[start:start + counts[name]]:
      result[patients[i]] = name
    start += counts[name]
  return result


def seed_code_split(rows: Sequence, train_fraction: float, seed: int = 42
                    ) -> tuple:
  """(train, test) as the seed paper's code split its datasets: numpy
  RandomState(seed) shuffles the rows in the given order, the first
  int(train_fraction * N) train."""
  order = np.arange(len(rows))
  np.random.RandomState(seed).shuffle(order)
  cut = int(len(rows) * train_fraction)
  return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


class CxrBuilder(base.ArrayRecordBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Base of the chest X-ray builders (configs 'default' and 'original')."""

  BUILDER_CONFIGS = EIGHT_BIT_CONFIGS
  LABEL_NAMES: Sequence[str] = ()
  IMAGE_DTYPE = np.uint8
  HOMEPAGE = ""
  IMAGE_LAYOUT = "the layout of MANUAL_DOWNLOAD_INSTRUCTIONS"  # For errors.

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    # (source_path, ImageError) of the images a local build skipped.
    self.skipped_images = []

  def _info(self):
    return self.dataset_info_from_configs(
        description=self.__class__.__doc__,
        features=features(self.LABEL_NAMES, image_feature(
            self.builder_config, self.IMAGE_DTYPE)),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(label_names=list(self.LABEL_NAMES)),
    )

  def _generate_splits(self, dl_manager, download_config):
    # `tfds build --beam_pipeline_options=...` (or a DownloadConfig with a
    # Beam runner or options) builds through Beam: images are read and
    # resized by the runner's workers (Dataflow, Spark, Flink, DirectRunner).
    self._use_beam = bool(download_config.beam_runner or
                          download_config.beam_options)
    return super()._generate_splits(dl_manager, download_config)

  def _generate_examples(self, split: str, rows, locate):
    """The rows (example fields, keyed by source_path) with their images;
    `locate(row)` gives the image file. Bad images are skipped (counted), or
    fatal with strict_images. A generator, or a Beam PTransform when the
    build runs on Beam. A split none of whose first images exists fails
    here, before anything is written (a wrong layout, not bad files)."""
    require_images(rows, locate, self.IMAGE_LAYOUT)
    if getattr(self, "_use_beam", False):
      import apache_beam as beam  # pylint: disable=g-import-not-at-top
      return beam.Create(rows) | beam.FlatMap(functools.partial(
          _beam_example, locate=locate,
          max_short_side=self.builder_config.max_short_side,
          dtype=self.IMAGE_DTYPE, strict=self.builder_config.strict_images,
          dataset=self.name, split=split))
    return self._generate_local(split, rows, locate)

  def _read_image(self, path: str):
    """The stored image of one file (load_image; a builder reading other
    formats overrides it). Raises ImageError for a bad file."""
    return load_image(path, self.builder_config.max_short_side,
                      self.IMAGE_DTYPE)

  def _generate_local(self, split: str, rows, locate):
    counter = SkipCounter(self.name, split,
                          fatal=self.builder_config.strict_images)
    for row in rows:
      try:
        image = self._read_image(locate(row))
      except ImageError as e:
        counter.skip(e)
        self.skipped_images.append((row["source_path"], e))
        continue
      yield row["source_path"], dict(row, image=image)
    counter.report()


def require_images(rows: Sequence[dict], locate, layout: str,
                   sample: int = 20) -> None:
  """Fails before a split is built without images: when none of the first
  `sample` images its rows list exists, the error names the layout expected
  and what the nearest existing folder holds instead."""
  rows = list(rows[:sample])
  if not rows or any(epath.Path(locate(r)).exists() for r in rows):
    return
  folder = epath.Path(locate(rows[0])).parent
  while not folder.exists() and folder != folder.parent:
    folder = folder.parent
  found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
  raise errors.DataError(
      f"None of the images the metadata lists exists (e.g. {locate(rows[0])})"
      f": expected {layout}; {folder} holds {found[:12]}"
      f"{' ...' if len(found) > 12 else ''}.")


def parse_rows(path, numbered_rows, parse) -> list:
  """[parse(row) for each (number, row)]; a row that fails to parse stops the
  build with a DataError naming the file and row number."""
  parsed = []
  for number, row in numbered_rows:
    try:
      parsed.append(parse(row))
    except (KeyError, ValueError, SyntaxError) as e:
      raise errors.DataError(f"{path} row {number}: {e}") from e
  return parsed


def check_patient_disjoint(splits: dict, where: str) -> None:
  """Fails if any patient has rows in two splits ({split: [row, ...]})."""
  patients = {s: {r["patient_id"] for r in rows} for s, rows in splits.items()}
  names = list(patients)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared = patients[a] & patients[b]
      if shared:
        raise errors.DataError(
            f"{where}: patients in both {a} and {b} ({sorted(shared)[:5]}); "
            "the splits must be patient-disjoint.")
