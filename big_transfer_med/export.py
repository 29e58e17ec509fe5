r"""Exports a run's parameters for other code bases.

  python -m big_transfer_med.export --workdir=RUN --format=npz --out=RUN.npz
  python -m big_transfer_med.export --workdir=RUN --format=seed --out=model.pth.tar
  python -m big_transfer_med.export --workdir=RUN:latest --format=timm --out=timm.pth

--workdir names the checkpoint as config.init.checkpoint does: RUN is its
best-validation checkpoint if the run kept one (what a transfer starts
from), else its latest; RUN:best and RUN:latest choose. Formats:
  npz   the flat names and layouts of Google's BiT releases (resnet/block1/
        unit01/a/standardized_conv2d/kernel, ..., the head a 1x1 conv): BiT's
        own code, big_vision and config.init.checkpoint read it;
  seed  the seed paper's model.pth.tar: {'model': state dict} of the BiT
        PyTorch model (root.conv, body.blockN.unitXX..., head.gn, head.conv);
  timm  a state dict that timm's resnetv2_<depth>x<width>_bit loads with
        strict=True (model.load_state_dict(torch.load(FILE,
        weights_only=True))). timm registers R50x1, R50x3, R101x1, R101x3,
        R152x2 and R152x4 only; for other sizes (R26x1, ...) the command
        says how to build the same model with timm's ResNetV2.
The PyTorch files are zips of raw tensors written without PyTorch, read by
torch.load(weights_only=True). Files are written atomically: an existing
file is replaced only by a complete one.
"""
from absl import flags

from big_transfer_med import cli
from big_transfer_med import models
from big_transfer_med import paths
from big_transfer_med import pretrained_weights
from big_transfer_med import run_dir
from big_transfer_med import torch_format
from input_pipeline import errors

FORMATS = ("npz", "seed", "timm")
# The BiT sizes timm registers as resnetv2_<depth>x<width>_bit.
TIMM_BIT_MODELS = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")


def timm_model(model_name: str) -> str:
  """The timm model that loads a timm export of `model_name`, as code."""
  depth, width = models.parse_name(model_name)
  if model_name in TIMM_BIT_MODELS:
    return f"timm.create_model('resnetv2_{depth}x{width}_bit', num_classes=N)"
  return (f"timm registers no resnetv2_{depth}x{width}_bit; build it as "
          f"timm.models.resnetv2.ResNetV2(layers={list(models.DEPTHS[depth])}, "
          f"width_factor={width}, num_classes=N, stem_type='fixed', "
          "conv_layer=functools.partial(timm.layers.StdConv2d, eps=1e-8))")


def export(workdir: str, out: str, fmt: str = "npz") -> str:
  """Writes the params of `workdir`'s checkpoint (RUN, RUN:best or
  RUN:latest) to `out` in format `fmt`; returns what was read."""
  if fmt not in FORMATS:
    raise errors.ConfigError(f"--format={fmt!r}: expected one of {FORMATS}.")
  if (fmt == "npz") != out.endswith(".npz"):
    raise errors.ConfigError(
        f"--out={out!r}: a {fmt} export is " +
        ("a .npz file." if fmt == "npz" else
         "a PyTorch file: give a name ending in .pth, .pt or .pth.tar."))
  path, choice = run_dir.split_choice(workdir)
  if run_dir.load_config(paths.absolute(path)).task != "classification":
    raise errors.ConfigError(
        f"--workdir={workdir!r} is a segmentation run: export writes "
        "classifiers only (BiT formats); use the workdir itself as "
        "config.init.checkpoint of another segmentation run.")
  variables, source = run_dir.read_checkpoint(paths.absolute(path), choice)
  out = paths.absolute(out)
  if fmt == "npz":
    pretrained_weights.save_bit_npz(variables["params"], out)
  else:
    state = pretrained_weights.torch_state_dict(variables["params"], fmt)
    torch_format.save({"model": state} if fmt == "seed" else state, out)
  return source


def main(argv):
  del argv
  f = flags.FLAGS
  source = export(f.workdir, f.out, f.format)
  print(f"Wrote {paths.absolute(f.out)} ({f.format}) from {source}")
  if f.format == "timm":
    path = paths.absolute(run_dir.split_choice(f.workdir)[0])
    print("Load it into " + timm_model(run_dir.load_config(path).model.name))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None,
                      "Run directory written by the trainer (RUN, RUN:best "
                      "or RUN:latest).")
  flags.DEFINE_enum("format", "npz", FORMATS, "What to write.")
  flags.DEFINE_string("out", None, "The file to write.")
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
