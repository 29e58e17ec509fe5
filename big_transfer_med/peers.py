"""What users would otherwise run, measured by the benchmark on the same machine.

  * PyTorch + timm `resnetv2_<depth>x<width>_bit` (for BiT models) or
    torchvision's model of the same name (resnet50, ...): the same train step
    (softmax cross-entropy, SGD with momentum 0.9) at the same batch and
    resolution; float32 on the CPU, AMP bfloat16 + channels_last on a GPU.
  * The seed paper's input recipe: OpenCV read, centre crop to the shorter
    side, area resize, albumentations shift-scale-rotate and horizontal flip,
    scale to [-1, 1]; one process on one core (its DataLoader workers each
    run this loop), so its rate is per core.

These need the packages in requirements-peers.txt, which the trainer and the
test suite do not.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Sequence

import numpy as np

from big_transfer_med import cli
from big_transfer_med import models
from input_pipeline import errors

PEER_REQUIREMENTS = "requirements-peers.txt"


def _import(name: str):
  # albumentations would otherwise look for a newer release online.
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise errors.ConfigError(
        f"The peer benchmarks need {name!r} ({e}); install them with "
        f"pip install -r {PEER_REQUIREMENTS}") from e


def timm_name(model_name: str) -> str:
  """'R50x1' -> 'resnetv2_50x1_bit' (timm's BiT ResNet-v2)."""
  depth, width = models.parse_name(model_name)
  return f"resnetv2_{depth}x{width}_bit"


def timm_train_step(model_name: str, resolution: int, batch_size: int,
                    steps: int, warmup_steps: int, precision: str = "float32",
                    channels: int = 3, num_classes: int = 1000
                    ) -> Dict[str, Any]:
  """Median step time of a PyTorch train step on random data: timm's BiT
  model, or torchvision's for its ResNet family (models.RESNET_V1)."""
  torch = _import("torch")
  gpu = torch.cuda.is_available()
  device = torch.device("cuda" if gpu else "cpu")
  torch.manual_seed(0)
  if model_name in models.RESNET_V1:
    library = _import("torchvision")
    name = f"torchvision {model_name}"
    if not hasattr(library.models, model_name):  # SimCLR's resnet50x2 / x4.
      raise errors.ConfigError(f"torchvision has no {model_name} to compare "
                               "with.")
    model = getattr(library.models, model_name)(num_classes=num_classes)
    if channels != 3:
      model.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
  else:
    library = _import("timm")
    name = timm_name(model_name)
    if name not in library.list_models(name):
      raise errors.ConfigError(f"timm has no {name} to compare {model_name} "
                               "with.")
    model = library.create_model(name, pretrained=False,
                                 num_classes=num_classes, in_chans=channels)
  model = model.to(device).train()
  memory_format = torch.channels_last if gpu else torch.contiguous_format
  model = model.to(memory_format=memory_format)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                              weight_decay=1e-4)
  images = torch.randn(batch_size, channels, resolution, resolution,
                       device=device).to(memory_format=memory_format)
  labels = torch.randint(0, num_classes, (batch_size,), device=device)
  amp = precision == "bfloat16"

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    if gpu:
      torch.cuda.synchronize()

  for _ in range(warmup_steps):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"peer": f"pytorch {torch.__version__} + {library.__name__} "
                  f"{library.__version__} {name}",
          "peer_precision": ("amp_bfloat16" if amp else "float32") + (
              " channels_last" if gpu else ""),
          "peer_device": (torch.cuda.get_device_name() if gpu else
                          f"cpu, {torch.get_num_threads()} threads"),
          "peer_step_seconds": seconds,
          "peer_images_per_sec": batch_size / seconds}


def timm_train_step_in_subprocess(**kwargs) -> Dict[str, Any]:
  """timm_train_step(**kwargs) in a fresh Python: PyTorch crashes when it is
  imported after TensorFlow (which the benchmark has loaded), and a separate
  process also gives it its own thread pools."""
  args = [f"--{k}={v}" for k, v in kwargs.items()]
  result = subprocess.run([sys.executable, "-m", __name__, *args],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    lines = result.stderr.strip().splitlines() or ["(no output)"]
    raise errors.ConfigError(f"The timm peer failed: {lines[-1]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def seed_input_recipe(paths: Sequence[str], resolution: int, shift: float,
                      scale: float, rotation: float) -> Dict[str, Any]:
  """Images/s of the seed recipe over image files, on one core."""
  cv2 = _import("cv2")
  albumentations = _import("albumentations")
  cv2.setNumThreads(1)  # One core, as in one DataLoader worker.
  augment = albumentations.Compose([
      albumentations.ShiftScaleRotate(
          shift_limit=shift, scale_limit=scale, rotate_limit=rotation,
          border_mode=cv2.BORDER_CONSTANT, p=1.0),
      albumentations.HorizontalFlip(p=0.5),
  ], seed=0)

  def load(path):
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
      raise errors.DataError(f"OpenCV could not read {path}.")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
    image = cv2.resize(image, (resolution, resolution),
                       interpolation=cv2.INTER_AREA)
    image = augment(image=image)["image"]
    scale_max = float(np.iinfo(image.dtype).max)
    return image.astype(np.float32) * (2.0 / scale_max) - 1.0

  load(paths[0])  # Warm-up (OpenCV / albumentations first-call costs).
  start = time.perf_counter()
  for path in paths:
    load(path)
  seconds = time.perf_counter() - start
  images = len(paths)
  return {"peer": f"OpenCV {cv2.__version__} + albumentations "
                  f"{albumentations.__version__} (seed recipe)",
          "peer_images": images,
          "peer_images_per_sec_per_core": images / seconds}


def write_encoded_images(images: Sequence[bytes], directory: str,
                         extension: str) -> list:
  """Writes encoded images as files `directory`/<i>.<extension>."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i, data in enumerate(images):
    path = os.path.join(directory, f"{i:06d}.{extension}")
    with open(path, "wb") as f:
      f.write(data)
    paths.append(path)
  return paths


def main():
  parser = argparse.ArgumentParser(description="The timm train-step peer; "
                                   "prints one JSON line.")
  for name, kind in (("model_name", str), ("resolution", int),
                     ("batch_size", int), ("steps", int),
                     ("warmup_steps", int), ("precision", str),
                     ("channels", int), ("num_classes", int)):
    parser.add_argument(f"--{name}", type=kind, required=name in (
        "model_name", "resolution", "batch_size", "steps", "warmup_steps"))
  args = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
  try:
    print(json.dumps(timm_train_step(**args)), flush=True)
  except errors.UserError as e:
    cli.fail(str(e))


if __name__ == "__main__":
  main()
