r"""Benchmarks: one JSON line per measurement.

  python -m big_transfer_med.benchmark --model=R50x1 --resolution=224 \
      --batch_size=8 --steps=10                          # train step (+ peak)
  python -m big_transfer_med.benchmark --what=memory --model=R152x4 --resolution=480
  python -m big_transfer_med.benchmark --what=fit --model=R152x4 --resolution=480 \
      --device_memory=80GiB --global_batch=512 --devices=8 --conv_lowering=native
  python -m big_transfer_med.benchmark --what=input,e2e \
      --config=configs/r50x1_chest.py:sources=nih14 --config.data.data_dir=DIR
  python -m big_transfer_med.benchmark --what=startup \
      --startup_rows=20000,100000,377000 --startup_image_sizes=16,384
  python -m big_transfer_med.benchmark --what=train,timm --model=R50x1 \
      --resolution=128 --batch_size=16 --xla_cpu=default,onednn,xnnpack

Measurements (`--what`, comma-separated):
  peak    dense matmul FLOP/s of one device in --precision (the MFU
          denominator);
  train   the trainer's pmapped train step on random data: step time,
          images/s, GFLOPs per image (XLA cost analysis), FLOP/s and MFU;
          with --xla_cpu=A,B,...: under each XLA:CPU kernel option
          (xla_cpu.py), each in a fresh process, alternating over --rounds;
  memory  the train step's device memory (XLA memory analysis of the
          compiled step; compiles only, so any size can be asked for);
  fit     what fits on devices of --device_memory: the largest per-device
          micro-batch at each of --precisions and --remat, and the
          --config.accum_steps a --global_batch on --devices needs (XLA
          memory analysis of compiled steps, none run; pass
          --conv_lowering=native for what accelerators run);
  input   images/s (and per CPU core) of the config's training pipeline:
          built TFDS data through the real decoding, preprocessing and
          augmentation;
  input_stages  where one core's input time goes: ms per image (one
          thread) to decode --peer_images stored images, to decode and
          resize, and to preprocess whole;
  eval    seconds per pass of each evaluator of the config (config.evals),
          first pass (compiling) and later ones, as periodic evaluations run;
  e2e     training steps/s with the config's pipeline feeding the step, as a
          fraction of the model-only rate at the same shapes;
  startup seconds from opening the data (Pipeline(...)) to the first
          training batch of --config (default: r50x1_chest on NIH) on
          generated cxr_nih14 builds (full metadata rows) of each of
          --startup_rows and --startup_image_sizes, kept in
          --startup_fixtures; with the build's record index and without;
  timm    peer: PyTorch + timm's BiT ResNet-v2 (torchvision's own model for
          resnet50 and its family) train step at the same model,
          resolution, batch and precision (AMP bfloat16 + channels_last on a
          GPU); `ratio` = our images/s over its images/s (with `train`);
  seed_input  peer: the seed paper's OpenCV + albumentations recipe on the
          same encoded images as `input` reads; `ratio` = our images/s per
          core over its images/s per core (with `input`).
`train`, `memory` and `timm` take --model, --resolution, --batch_size (per
device), --precision, --channels, --num_classes (`fit` all but the batch
and precision); `input`, `e2e`, `eval` and
`seed_input` take them from --config. The peers need requirements-peers.txt.
peak, train and memory need no TensorFlow (an accelerator machine with only
JAX: README, "Accelerators").
"""
import functools
import glob
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from big_transfer_med import cli
from big_transfer_med import config_lib
from big_transfer_med import config_validation
from big_transfer_med import losses
from big_transfer_med import memory_fit
from big_transfer_med import models
from big_transfer_med import optim
from big_transfer_med import parallel
from big_transfer_med import paths
from big_transfer_med import peers
from big_transfer_med import train_state
from big_transfer_med import xla_cpu
from input_pipeline import choices
from input_pipeline import errors

FLAGS = flags.FLAGS
# Untimed steps first: the step is compiled again when the state or batch
# arrives with another layout (first call vs. later calls).
WARMUP_STEPS = 2
E2E_ROUNDS = 3  # Alternating model-only / with-input blocks of --steps.
MEASUREMENTS = ("peak", "train", "memory", "fit", "input", "input_stages",
                "e2e", "eval", "startup", "timm", "seed_input")


def emit(record: Dict[str, Any]) -> Dict[str, Any]:
  print(json.dumps(record, sort_keys=True), flush=True)
  return record


def _device() -> Dict[str, Any]:
  d = jax.local_devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "local_devices": jax.local_device_count(),
          "cpu_cores": os.cpu_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _best_time(fn, repeats: int) -> float:
  """Best wall time of `fn()` (which must block) over `repeats` runs."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak(size: int = 2048, repeats: int = 5,
                dtype=jnp.float32) -> Dict[str, Any]:
  """Measured dense matmul FLOP/s of one device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  dot = jax.jit(lambda x: x @ x)
  dot(a).block_until_ready()
  seconds = _best_time(lambda: dot(a).block_until_ready(), repeats)
  return emit({"measurement": "matmul_peak", "size": size,
               "dtype": jnp.dtype(dtype).name, "seconds": seconds,
               "flops_per_sec": 2 * size ** 3 / seconds, **_device()})


# The loss each task's benchmark steps with.
TASK_LOSSES = {"classification": "softmax_xent",
               "segmentation": "dice_sigmoid_xent"}


def _parts(model_name: str, num_classes: int, loss: str,
           precision: str = "float32", conv_lowering: str = "auto",
           remat: str = "none", accum_steps: int = 1,
           task: str = "classification"):
  """Model (a U-Net for task='segmentation'), the trainer's optimiser
  (constant rate) and its train_step."""
  model = models.get_model(model_name, num_classes, precision,
                           conv_lowering=conv_lowering, remat=remat,
                           bn_axis_name=parallel.AXIS, task=task)
  schedule = optim.create_schedule(0.01, 1_000_000)
  optimizer = optim.create_optimizer(schedule, weight_decay=1e-4)
  step_fn = functools.partial(train_state.train_step, model=model,
                              loss_fn=losses.get_loss(loss),
                              optimizer=optimizer, schedule=schedule,
                              accum_steps=accum_steps)
  return model, optimizer, step_fn


def _pmapped(step_fn):
  return parallel.per_device(step_fn, donate_argnums=(0,))


def _label_shape(task: str, image_shape, num_classes: int) -> tuple:
  """One example's labels: a one-hot vector, or a mask per class."""
  return ((num_classes,) if task == "classification" else
          tuple(image_shape[:2]) + (num_classes,))


def _random_batch(per_device_batch: int, image_shape, num_classes: int,
                  task: str = "classification"):
  """A batch of noise images and one-hot labels (segmentation: random
  0/1 masks), on the local devices."""
  rng = np.random.default_rng(0)
  shape = (jax.local_device_count(), per_device_batch)
  labels = (np.eye(num_classes, dtype=np.float32)[
      rng.integers(0, num_classes, shape)] if task == "classification" else
            (rng.random(shape + _label_shape(task, image_shape, num_classes))
             < 0.3).astype(np.float32))
  return parallel.to_devices({
      "image": rng.standard_normal(shape + image_shape, dtype=np.float32),
      "labels": labels, "mask": np.ones(shape, np.float32)})


def train_step_speed(model_name: str, resolution: int, per_device_batch: int,
                     steps: int, channels: int = 3, num_classes: int = 1000,
                     peak=None, precision: str = "float32",
                     conv_lowering: str = "auto", task: str = "classification"
                     ) -> Dict[str, Any]:
  """Step time, images/s, GFLOPs/image and MFU of the trainer's step."""
  model, optimizer, step_fn = _parts(model_name, num_classes,
                                     TASK_LOSSES[task], precision,
                                     conv_lowering, task=task)
  image_shape = (resolution, resolution, channels)
  state = parallel.replicate(train_state.create_train_state(
      config_lib.base_config(), model, optimizer, image_shape))
  step = _pmapped(step_fn)
  batch = _random_batch(per_device_batch, image_shape, num_classes, task)
  compiled = step.lower(state, batch).compile()
  flops = _flops(compiled)  # One device's share of one step.
  for _ in range(WARMUP_STEPS):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  devices = jax.local_device_count()
  record = {"measurement": "train_step", "model": model_name, "task": task,
            "resolution": resolution, "per_device_batch": per_device_batch,
            "precision": precision, "steps": steps,
            "conv_lowering": models.resolve_conv_lowering(conv_lowering),
            "step_seconds": seconds, "step_seconds_min": float(min(times)),
            "images_per_sec": devices * per_device_batch / seconds,
            **_device()}
  if flops:
    record["gflops_per_image"] = flops / per_device_batch / 1e9
    record["flops_per_sec_per_device"] = flops / seconds
    if peak:
      record["mfu"] = flops / seconds / peak
  return emit(record)


def train_step_speed_per_xla_option(options: Sequence[str], rounds: int,
                                    model_name: str, resolution: int,
                                    per_device_batch: int, steps: int,
                                    conv_lowering: str = "auto",
                                    task: str = "classification",
                                    **shape_args) -> List[Dict[str, Any]]:
  """The train step under each XLA:CPU option (xla_cpu.OPTIONS), each run in
  a fresh process (XLA reads its flags once per process), the options
  alternating over `rounds` so that the machine's drift spreads over all of
  them; one record per option with the median images/s. An option whose
  process fails is reported with its error, and the others go on."""
  args = [f"--model={model_name}", f"--resolution={resolution}",
          f"--batch_size={per_device_batch}", f"--steps={steps}",
          f"--conv_lowering={conv_lowering}", f"--task={task}",
          *(f"--{k}={v}" for k, v in shape_args.items())]
  runs = {name: [] for name in options}
  run_flags, failures = {}, {}
  for _ in range(rounds):
    for name in options:
      if name in failures:
        continue
      env = dict(os.environ, XLA_FLAGS=xla_cpu.xla_flags(name))
      done = subprocess.run(
          [sys.executable, "-m", "big_transfer_med.benchmark", "--what=train",
           *args], env=env, capture_output=True, text=True, check=False)
      records = [json.loads(line) for line in done.stdout.splitlines()
                 if line.startswith("{")]
      if done.returncode or not records:
        lines = [l for l in done.stderr.splitlines() if l.strip()]
        failures[name] = (f"exit {done.returncode}: "
                          + next((l for l in lines if "rror" in l),
                                 lines[-1] if lines else "no output"))
      else:
        runs[name].append(records[-1]["images_per_sec"])
        run_flags[name] = records[-1]["xla_flags"]
  default = np.median(runs.get("default") or [np.nan])
  out = []
  for name in options:
    record = {"measurement": "train_step_xla_cpu", "xla_cpu": name,
              "xla_cpu_flags": xla_cpu.OPTIONS[name], "model": model_name,
              "resolution": resolution, "per_device_batch": per_device_batch,
              "steps": steps, "rounds": rounds,
              "conv_lowering": models.resolve_conv_lowering(conv_lowering),
              "images_per_sec_runs": runs[name], **shape_args, **_device()}
    if name in failures:
      record["error"] = failures[name]
    else:
      record["run_xla_flags"] = run_flags[name]  # As the process saw them.
      record["images_per_sec"] = float(np.median(runs[name]))
      if not np.isnan(default):
        record["vs_default"] = record["images_per_sec"] / default
    out.append(emit(record))
  return [r for r in out if "images_per_sec" in r]


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one per computation.
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def train_step_memory(*args, **kwargs) -> Dict[str, Any]:
  """Prints and returns step_memory(*args, **kwargs)."""
  return emit(step_memory(*args, **kwargs))


def step_memory(model_name: str, resolution: int, per_device_batch: int,
                channels: int = 3, num_classes: int = 1000,
                precision: str = "float32", conv_lowering: str = "auto",
                remat: str = "none", accum_steps: int = 1,
                task: str = "classification") -> Dict[str, Any]:
  """Device memory of one compiled train step (no step is run) on a
  per-device batch of `per_device_batch`, in `accum_steps` micro-batches
  (which must divide it)."""
  model, optimizer, fn = _parts(model_name, num_classes, TASK_LOSSES[task],
                                precision, conv_lowering, remat, accum_steps,
                                task)
  image_shape = (resolution, resolution, channels)
  state = jax.eval_shape(lambda: train_state.create_train_state(
      config_lib.base_config(), model, optimizer, image_shape))
  batch = {"image": jax.ShapeDtypeStruct((per_device_batch,) + image_shape,
                                         jnp.float32),
           "labels": jax.ShapeDtypeStruct(
               (per_device_batch,) + _label_shape(task, image_shape,
                                                  num_classes), jnp.float32),
           "mask": jax.ShapeDtypeStruct((per_device_batch,), jnp.float32)}
  # One device's program; psum over a 1-device axis keeps the trainer's code.
  compiled = jax.jit(jax.vmap(fn, axis_name=parallel.AXIS),
                     donate_argnums=(0,)).lower(
      *jax.tree.map(lambda x: jax.ShapeDtypeStruct((1,) + x.shape, x.dtype),
                    (state, batch))).compile()
  m = compiled.memory_analysis()
  parts = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
           ("argument", "output", "temp", "alias", "generated_code")}
  peak = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {"measurement": "train_step_memory", "model": model_name,
          "task": task, "resolution": resolution, "per_device_batch": per_device_batch,
          "precision": precision,
          "conv_lowering": models.resolve_conv_lowering(conv_lowering),
          "remat": remat, "accum_steps": accum_steps,
          "parameters": params, "peak_bytes": peak,
          "peak_gib": peak / 2 ** 30,
          **{f"{k}_bytes": v for k, v in parts.items()}, **_device()}


def fit_in_memory(model_name: str, resolution: int,
                  device_memories: Sequence[int], global_batch: int,
                  devices: int, precision: str, remat: str,
                  conv_lowering: str, channels: int = 3,
                  num_classes: int = 1000, task: str = "classification"
                  ) -> List[Dict[str, Any]]:
  """What fits on a device of each of `device_memories` bytes, from XLA's
  memory analysis of compiled train steps (none is run): the largest
  per-device micro-batch, and the micro-batches (config.accum_steps) a
  global batch of `global_batch` on `devices` devices needs."""
  @functools.lru_cache(maxsize=None)  # Shared by the memory sizes.
  def peak(micro_batch: int, accum_steps: int = 1) -> int:
    return step_memory(model_name, resolution, micro_batch * accum_steps,
                       channels, num_classes, precision=precision,
                       conv_lowering=conv_lowering, remat=remat,
                       accum_steps=accum_steps, task=task)["peak_bytes"]

  share, records, known = global_batch // devices, [], {}
  for memory in device_memories:
    compiled_before = peak.cache_info().misses
    largest, exact = memory_fit.largest_fitting(peak, memory, known)
    accum = memory_fit.accumulation(share, largest,
                                    lambda k: peak(share // k, k), memory)
    records.append(emit({
        "measurement": "fit", "model": model_name, "task": task,
        "resolution": resolution,
        "precision": precision, "remat": remat,
        "conv_lowering": models.resolve_conv_lowering(conv_lowering),
        "device_memory_gib": memory / 2 ** 30,
        "largest_micro_batch": largest, "largest_is_exact": exact,
        "peak_gib_at_largest": peak(largest) / 2 ** 30 if largest else None,
        "global_batch": global_batch, "devices": devices,
        "per_device_batch": share, "accum_steps": accum,
        "micro_batch": share // accum if accum else None,
        "peak_gib_with_accum": (peak(share // accum, accum) / 2 ** 30
                                if accum else None),
        "compiled_steps": peak.cache_info().misses - compiled_before,
        **_device()}))
  return records


def _data(config):
  """The config's data, and the config resolved on it (BiT-HyperRule)."""
  from big_transfer_med import train  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  data = pipeline.Pipeline(config.data, **parallel.host_layout())
  return data, train.resolve_config(config, data)


def _built_fixture(root: str, rows: Dict[str, int], image_size: int) -> str:
  """A TFDS data_dir under `root` with each chest X-ray source of `rows`
  (source -> images) built from generated images of image_size px in the
  release's layout, with full metadata rows (made once, then reused)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline.datasets  # noqa: F401  pylint: disable=g-import-not-at-top
  from tests import make_cxr_testdata  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(root, "tfds")
  for source, count in rows.items():
    builder = tfds.builder(f"{choices.CXR_SOURCES[source]}/default",
                           data_dir=data_dir)
    if builder.is_prepared():
      continue
    manual = os.path.join(root, "manual", source)
    shutil.rmtree(manual, ignore_errors=True)  # A half-written one.
    make_cxr_testdata.AT_SCALE[source](manual, count, image_size)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return data_dir


def _seconds_to_first_batch(config, later_batches: int = 2
                            ) -> tuple[float, float, float]:
  """Seconds to open the data and to the first training batch, and seconds
  per batch after it (what one batch costs once running)."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  pipeline._INDEXES.clear()  # pylint: disable=protected-access
  start = time.perf_counter()
  data, config = _data(config)
  opened = time.perf_counter() - start
  batches = data.train_batches(config, 0)
  next(batches)
  first = time.perf_counter() - start
  for _ in range(later_batches):
    next(batches)
  return opened, first, (time.perf_counter() - start - first) / later_batches


def _startup_with_and_without_index(config, **fields) -> List[Dict[str, Any]]:
  """Start-up records of `config` on its built data: with the builds' record
  indexes, then with them hidden (the path of datasets built before them)."""
  from input_pipeline import split_index  # pylint: disable=g-import-not-at-top
  data, _ = _data(config)
  builders = [s.builder for s in data.train.sources]
  indexes = [split_index.path(b.data_dir, b.name, s)
             for b in builders for s in b.info.splits]
  stored = sum(f.stat().length for b in builders
               for f in epath.Path(b.data_dir).glob("*.array_record-*"))
  rows = sum(s.num_examples for b in builders for s in b.info.splits.values())
  records = []
  for indexed in (True, False):
    hidden = [] if indexed else [f.rename(f.with_name(f.name + ".hidden"))
                                 for f in indexes]
    try:
      opened, first_batch, per_batch = _seconds_to_first_batch(config)
    finally:
      for f, original in zip(hidden, indexes):
        f.rename(original)
    records.append(emit({
        "measurement": "startup", "data": "+".join(config.data.sources),
        "rows": rows, **fields, "index": indexed,
        "bytes_per_record": round(stored / rows),
        "seconds_to_open": round(opened, 3),
        "seconds_to_first_batch": round(first_batch, 3),
        "seconds_per_later_batch": round(per_batch, 3),
        # Start-up proper: the first batch beyond what any batch costs.
        "startup_seconds": round(first_batch - per_batch, 3),
        "batch_size": config.batch_size, **_device()}))
  return records


# Images of each chest X-ray release.
RELEASE_ROWS = {"chexpert": 223_648, "mimic": 377_110, "nih14": 112_120,
                "padchest": 160_861}


def startup_time(config, rows: Sequence[int], image_sizes: Sequence[int],
                 release_scale: float, fixtures: str) -> List[Dict[str, Any]]:
  """Start-up of `config` (Pipeline(...) up to its first training batch) on
  generated cxr_nih14 builds of each number of rows and image size; then of
  the four-source r50x1_chest config (at the batch size and resolution of
  `config`) on all four releases at `release_scale` times their real sizes
  (16 px images). Each with the builds' record index
  and without. `startup_seconds` is the time to the first batch less what a
  later batch takes: decoding one batch grows with image size at any time."""
  records = []
  for count, size in itertools.product(rows, image_sizes):
    config.data.data_dir = _built_fixture(os.path.join(
        fixtures, f"nih14_{count}_rows_{size}px"), {"nih14": count}, size)
    if not records:
      _seconds_to_first_batch(config)  # Warm-up: TF's one-time set-up.
    records += _startup_with_and_without_index(config, image_size=size)
  if release_scale:
    four = _startup_config("")
    four.batch_size, four.data.resolution = (config.batch_size,
                                             config.data.resolution)
    four.data.data_dir = _built_fixture(
        os.path.join(fixtures, f"releases_x{release_scale:g}_16px"),
        {s: max(100, round(n * release_scale))
         for s, n in RELEASE_ROWS.items()}, 16)
    records += _startup_with_and_without_index(four, image_size=16,
                                               release_scale=release_scale)
  return records


def input_speed(config, batches: int) -> Dict[str, Any]:
  """Images/s of the config's training pipeline (after one warm-up batch)."""
  data, config = _data(config)
  iterator = data.train_batches(config, 0)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  images = batches * config.batch_size
  cores = config.data.num_threads or os.cpu_count()
  return emit({"measurement": "input_pipeline",
               "data": "+".join(config.data.sources) or config.data.name,
               "augment": config.data.augment,
               "resolution": config.data.resolution, "batches": batches,
               "images_per_sec": images / seconds,
               "images_per_sec_per_core": images / seconds / cores,
               "cores": cores, **_device()})


def input_stages(config, images: int, passes: int = 3) -> Dict[str, Any]:
  """Where one core's input time goes: ms per image (one thread, best of
  `passes`) to decode the stored images of the config's first training
  source, to decode and resize them, and to preprocess them whole (decode,
  resize, the config's augmentation, channels, normalisation)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline import preprocessing  # pylint: disable=g-import-not-at-top
  data, config = _data(config)
  source = data.train.sources[0]
  encoded = source.encoded_images(np.arange(min(images, len(source))))
  decode, c = source.image_feature.decode_example, config.data
  stages = {
      "decode": decode,
      "decode_resize": lambda x: preprocessing.resize(decode(x), c.resolution),
      "preprocess": lambda x: preprocessing.preprocess(
          decode(x), c, train=True, rng=tf.constant([0, 1], tf.int64)),
  }
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  ms = {}
  for name, stage in stages.items():
    dataset = tf.data.Dataset.from_tensor_slices(encoded).map(
        tf.autograph.experimental.do_not_convert(stage)).with_options(options)
    for _ in dataset:  # Warm-up: tracing.
      pass
    ms[name] = round(_best_time(lambda d=dataset: [_ for _ in d], passes)
                     / len(encoded) * 1000, 3)
  return emit({"measurement": "input_stages",
               "data": f"{source.builder.name}/{c.builder_config}",
               "encoding": source.image_feature.encoding_format,
               "stored_shape": list(decode(encoded[0]).shape),
               "augment": c.augment, "resolution": c.resolution,
               "images": len(encoded), "ms_per_image": ms, **_device()})


def end_to_end(config, steps: int) -> Dict[str, Any]:
  """Train steps/s fed by the real pipeline vs. the same step on one fixed
  batch (model only), in alternating blocks of `steps` (medians)."""
  data, config = _data(config)
  model, optimizer, step_fn = _parts(config.model.name, data.num_classes,
                                     config.loss, config.model.precision,
                                     config.model.conv_lowering,
                                     task=config.task)
  res = config.data.resolution
  state = parallel.replicate(train_state.create_train_state(
      config, model, optimizer, (res, res, config.data.channels)))
  step = _pmapped(step_fn)
  # The model-only rate first, while no tf.data threads compete for the
  # cores: the first batch comes from an iterator that is then dropped.
  fixed = parallel.to_devices(next(data.train_batches(config, 0)))
  for _ in range(WARMUP_STEPS):
    state, metrics = step(state, fixed)
  jax.block_until_ready(metrics)

  def run(next_batch):
    nonlocal state
    start = time.perf_counter()
    for _ in range(steps):
      state, out = step(state, next_batch())
    jax.block_until_ready(out)
    return steps / (time.perf_counter() - start)

  first_model_only = run(lambda: fixed)
  batches = parallel.prefetch(data.train_batches(config, 1))
  for _ in range(WARMUP_STEPS):  # Also fills the pipeline's buffers.
    state, metrics = step(state, next(batches))
  # Alternating blocks, medians: the machine's speed drifts (shared CPUs),
  # which would otherwise bias whichever rate was measured later.
  rates = [(run(lambda: fixed), run(lambda: next(batches)))
           for _ in range(E2E_ROUNDS)]
  model_only = float(np.median([first_model_only] + [r[0] for r in rates]))
  with_input = float(np.median([r[1] for r in rates]))
  return emit({"measurement": "end_to_end", "model": config.model.name,
               "data": "+".join(config.data.sources) or config.data.name,
               "resolution": res, "global_batch": config.batch_size,
               "steps": steps, "rounds": E2E_ROUNDS,
               "steps_per_sec": with_input,
               "model_only_steps_per_sec": model_only,
               "fraction_of_model_only": with_input / model_only,
               **_device()})


def evaluation_speed(config, passes: int) -> Dict[str, Any]:
  """Seconds per pass of each of the config's evaluators (config.evals) on
  the model at initialisation: the first pass (compiles) and the median of
  `passes` more, as the trainer's periodic evaluations run them."""
  from big_transfer_med import evaluators  # pylint: disable=g-import-not-at-top
  data, config = _data(config)
  model, optimizer, _ = _parts(config.model.name, data.num_classes,
                               config.loss, config.model.precision,
                               config.model.conv_lowering, task=config.task)
  res = config.data.resolution
  state = parallel.replicate(train_state.create_train_state(
      config, model, optimizer, (res, res, config.data.channels)))
  records = []
  for name, evaluator in evaluators.from_config(config, model, data).items():
    times = []
    for _ in range(passes + 1):
      start = time.perf_counter()
      evaluator.run(train_state.variables_of(state))
      times.append(time.perf_counter() - start)
    records.append(emit({
        "measurement": "evaluation", "evaluator": name,
        "type": config.evals[name].type, "model": config.model.name,
        "resolution": res, "passes": passes,
        "first_pass_seconds": times[0],
        "pass_seconds": float(np.median(times[1:])), **_device()}))
  return records


def timm_peer(model_name: str, resolution: int, per_device_batch: int,
              steps: int, precision: str, channels: int, num_classes: int,
              ours=None) -> Dict[str, Any]:
  """The timm train step at the same global batch; ratio = ours / peer
  (`ours`: our train_step records, one per convolution lowering)."""
  batch = jax.local_device_count() * per_device_batch
  record = {"measurement": "peer_train_step", "model": model_name,
            "resolution": resolution, "batch": batch, "precision": precision,
            "steps": steps,
            **peers.timm_train_step_in_subprocess(
                model_name=model_name, resolution=resolution, batch_size=batch,
                steps=steps, warmup_steps=WARMUP_STEPS, precision=precision,
                channels=channels, num_classes=num_classes), **_device()}
  for i, r in enumerate(ours or ()):
    ratio = r["images_per_sec"] / record["peer_images_per_sec"]
    if i == 0:
      record["ours_images_per_sec"], record["ratio"] = r["images_per_sec"], ratio
    # Per convolution lowering, or per XLA:CPU option (--xla_cpu).
    record[f"ratio_{r.get('xla_cpu') or r['conv_lowering']}"] = ratio
  return emit(record)


def seed_input_peer(config, images: int, files_pattern: str = "",
                    ours=None) -> Dict[str, Any]:
  """The seed recipe on the encoded images of the config's first training
  source (written out as files), or on `files_pattern` (e.g. the released
  files, which is what the seed code reads); ratio = ours per core / peer
  per core."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  c = config.data
  with tempfile.TemporaryDirectory() as directory:
    if files_pattern:
      paths = sorted(glob.glob(files_pattern))[:images]
      if not paths:
        raise errors.ConfigError(f"--peer_files={files_pattern!r} matches no "
                                 "file.")
      origin = {"peer_reads": files_pattern}
    else:
      source = pipeline.Pipeline(config.data).train.sources[0]
      positions = np.arange(min(images, len(source)))
      encoded = source.encoded_images(positions)
      encoding = source.image_feature.encoding_format or "png"  # TFDS default.
      paths = peers.write_encoded_images(encoded, directory, encoding)
      origin = {"peer_reads":
                f"{source.builder.name}[{source.split}] as stored",
                "encoding": encoding}
    result = peers.seed_input_recipe(paths, c.resolution, c.shift, c.scale,
                                     c.rotation)
  record = {"measurement": "peer_input", "resolution": c.resolution,
            **origin, **result, **_device()}
  if ours:
    record["ours_images_per_sec_per_core"] = ours["images_per_sec_per_core"]
    record["ratio"] = (ours["images_per_sec_per_core"] /
                       result["peer_images_per_sec_per_core"])
  return emit(record)


def _define_flags():
  flags.DEFINE_list("what", ["peak", "train"],
                    f"Measurements: {', '.join(MEASUREMENTS)}.")
  flags.DEFINE_string("model", "R50x1", "train/memory: model name.")
  flags.DEFINE_integer("resolution", 224, "train/memory: input size.")
  flags.DEFINE_integer("batch_size", 8, "train/memory: per-device batch.")
  flags.DEFINE_enum("precision", "float32", sorted(models.PRECISIONS),
                    "train/memory/timm: compute precision (model.precision).")
  flags.DEFINE_integer("channels", 3, "train/memory: image channels.")
  flags.DEFINE_integer("num_classes", 1000, "train/memory: classes (mask "
                       "channels for --task=segmentation).")
  flags.DEFINE_enum("task", "classification", sorted(TASK_LOSSES),
                    "train/memory/fit: the model's task (segmentation: a "
                    "U-Net on --model, per-pixel Dice + cross-entropy).")
  flags.DEFINE_list("conv_lowering", ["auto"],
                    "train/memory: model.conv_lowering, one or more of "
                    f"{', '.join(models.CONV_LOWERINGS)} (each measured; "
                    "the timm ratio is given for each).")
  flags.DEFINE_list("remat", ["none"], "memory: model.remat, one or more of "
                    f"{', '.join(models.REMATS)} (each measured).")
  flags.DEFINE_list("accum_steps", ["1"], "memory: micro-batches per device "
                    "batch (config.accum_steps), one or more (each measured).")
  flags.DEFINE_list("precisions", ["float32", "bfloat16"],
                    "fit: compute precisions, each fitted.")
  flags.DEFINE_list("device_memory", ["16GiB", "40GiB", "80GiB"],
                    "fit: device memory sizes, e.g. 80GiB (GiB, GB, MiB, MB).")
  flags.DEFINE_integer("global_batch", 512, "fit: the global batch to split.",
                       lower_bound=1)
  flags.DEFINE_integer("devices", 8, "fit: devices the global batch is "
                       "spread over.", lower_bound=1)
  flags.DEFINE_integer("steps", 10, "Timed steps (train, e2e) or batches (input).")
  flags.DEFINE_list("xla_cpu", [], "train: XLA:CPU kernel options to compare, "
                    f"some of {', '.join(xla_cpu.OPTIONS)} (xla_cpu.py): "
                    "each in a fresh process, alternating over --rounds; "
                    "with timm, each one's ratio to it.")
  flags.DEFINE_integer("rounds", 2, "train with --xla_cpu: rounds over the "
                       "options (the median is reported).", lower_bound=1)
  flags.DEFINE_integer("passes", 3, "eval: timed passes per evaluator.")
  flags.DEFINE_integer("peak_size", 2048, "peak: matmul size.")
  flags.DEFINE_integer("peer_images", 256, "seed_input: images to read.")
  flags.DEFINE_string("peer_files", "", "seed_input: a glob of image files "
                      "(e.g. the released ones) instead of the stored images.")
  flags.DEFINE_list("startup_rows", ["20000", "100000", "377000"],
                    "startup: rows (images) of each generated build.")
  flags.DEFINE_list("startup_image_sizes", ["16", "384"],
                    "startup: image sizes (px) of each generated build.")
  flags.DEFINE_float("startup_release_scale", 1.0,
                     "startup: the four-source config on all four chest X-ray "
                     "releases at this fraction of their real sizes (0: "
                     "skip).", lower_bound=0)
  flags.DEFINE_string("startup_fixtures", os.path.join(
      tempfile.gettempdir(), "big_transfer_med_startup"),
                      "startup: where the generated builds are made and kept.")
  config_flags.DEFINE_config_file("config", None,
                                  "input/e2e/startup: a training config file "
                                  f"(startup: default configs/r50x1_chest.py:sources=nih14).",
                                  lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  what = set(FLAGS.what)
  unknown = what - set(MEASUREMENTS)
  if unknown:
    raise app.UsageError(f"--what: unknown {sorted(unknown)}.")
  if ({"input", "input_stages", "e2e", "eval", "seed_input"} & what
      and FLAGS.config is None):
    raise app.UsageError("--what=input/input_stages/e2e/eval/seed_input needs "
                         "--config=FILE (the data).")
  if not all(a.isdigit() and int(a) >= 1 and FLAGS.batch_size % int(a) == 0
             for a in FLAGS.accum_steps):
    raise app.UsageError(
        f"--accum_steps={','.join(FLAGS.accum_steps)}: expected integers "
        f">= 1 that divide --batch_size={FLAGS.batch_size}, e.g. "
        "--accum_steps=1,4.")
  bad = set(FLAGS.precisions) - set(models.PRECISIONS)
  if bad:
    raise app.UsageError(f"--precisions: unknown {sorted(bad)}; expected "
                         f"{', '.join(sorted(models.PRECISIONS))}.")
  bad = set(FLAGS.remat) - set(models.REMATS)
  if bad:
    raise app.UsageError(f"--remat: unknown {sorted(bad)}; expected "
                         f"{', '.join(models.REMATS)}.")
  bad = set(FLAGS.xla_cpu) - set(xla_cpu.OPTIONS)
  if bad:
    raise app.UsageError(f"--xla_cpu: unknown {sorted(bad)}; expected "
                         f"some of {', '.join(xla_cpu.OPTIONS)}.")
  if FLAGS.xla_cpu and len(FLAGS.conv_lowering) > 1:
    raise app.UsageError("--xla_cpu compares options at one --conv_lowering: "
                         "give one, or run once per lowering.")
  if "timm" in what and FLAGS.task != "classification":
    raise app.UsageError("--what=timm compares classifiers only: run it "
                         "with --task=classification.")
  if "fit" in what and FLAGS.global_batch % FLAGS.devices:
    raise app.UsageError(f"--global_batch={FLAGS.global_batch} does not "
                         f"divide over --devices={FLAGS.devices}.")
  memories = [_memory_bytes(m) for m in FLAGS.device_memory]
  if what <= {"memory", "fit"}:
    # Nothing runs: skip the backend's code optimisation (buffer sizes, and
    # so the memory analysis, are decided before it; ~2x faster compiles).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
  config = FLAGS.config and paths.absolute_config_paths(FLAGS.config)
  if config:
    config_validation.validate(config)
  _measure(what, config, memories)


_MEMORY_UNITS = {"GiB": 2 ** 30, "GB": 10 ** 9, "MiB": 2 ** 20, "MB": 10 ** 6}


def _memory_bytes(text: str) -> int:
  """'80GiB' -> bytes; a UsageError naming the flag otherwise."""
  match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GiB|GB|MiB|MB)", text.strip())
  if not match:
    raise app.UsageError(f"--device_memory: {text!r} is not a size like "
                         "80GiB (units: GiB, GB, MiB, MB).")
  return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def _measure(what, config, memories) -> None:
  """Runs the measurements named in `what`, in a fixed order."""
  model_args = (FLAGS.model, FLAGS.resolution, FLAGS.batch_size)
  shape_args = dict(channels=FLAGS.channels, num_classes=FLAGS.num_classes,
                    precision=FLAGS.precision)
  # MFU against the matmul peak of the precision the step computes in.
  peak = (matmul_peak(FLAGS.peak_size, dtype=models.PRECISIONS[
      FLAGS.precision])["flops_per_sec"] if "peak" in what else None)
  lowerings = FLAGS.conv_lowering
  for lowering in lowerings:
    models.resolve_conv_lowering(lowering)  # Fails before any measurement.
  if "train" in what and FLAGS.xla_cpu:
    ours = train_step_speed_per_xla_option(
        FLAGS.xla_cpu, FLAGS.rounds, *model_args, FLAGS.steps,
        conv_lowering=lowerings[0], task=FLAGS.task, **shape_args)
  else:
    ours = [train_step_speed(*model_args, FLAGS.steps, peak=peak,
                             conv_lowering=lowering, task=FLAGS.task,
                             **shape_args)
            for lowering in lowerings] if "train" in what else None
  if "timm" in what:
    timm_peer(*model_args, FLAGS.steps, ours=ours, **shape_args)
  if "memory" in what:
    for lowering, remat, accum in itertools.product(
        lowerings, FLAGS.remat, FLAGS.accum_steps):
      train_step_memory(*model_args, conv_lowering=lowering, remat=remat,
                        accum_steps=int(accum), task=FLAGS.task,
                        **shape_args)
  if "fit" in what:
    for lowering, precision, remat in itertools.product(
        lowerings, FLAGS.precisions, FLAGS.remat):
      fit_in_memory(FLAGS.model, FLAGS.resolution, memories,
                    FLAGS.global_batch, FLAGS.devices, precision, remat,
                    lowering, FLAGS.channels, FLAGS.num_classes, FLAGS.task)
  ours = input_speed(config, FLAGS.steps) if "input" in what else None
  if "input_stages" in what:
    input_stages(config, FLAGS.peer_images)
  if "seed_input" in what:
    seed_input_peer(config, FLAGS.peer_images, FLAGS.peer_files,
                    ours=ours)
  if "e2e" in what:
    end_to_end(config, FLAGS.steps)
  if "eval" in what:
    evaluation_speed(config, FLAGS.passes)
  if "startup" in what:
    startup_time(config or _startup_config("sources=nih14"),
                 _integers("startup_rows"), _integers("startup_image_sizes"),
                 FLAGS.startup_release_scale, FLAGS.startup_fixtures)


def _startup_config(arg: str):
  """configs/r50x1_chest.py:ARG (ARG '' for all four sources)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return config_lib.load_config_file(
      os.path.join(repo, "configs", "r50x1_chest.py") + (f":{arg}" if arg else ""))


def _integers(flag: str) -> List[int]:
  values = FLAGS[flag].value
  if not all(v.isdigit() and int(v) >= 1 for v in values):
    raise app.UsageError(f"--{flag}={','.join(values)}: expected integers "
                         ">= 1.")
  return [int(v) for v in values]


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
