r"""Exports a run's latest parameters as a BiT .npz file.

  python -m big_transfer_med.export --workdir=RUN --out=RUN.npz

The file has the flat names and layouts of Google's BiT releases
(resnet/block1/unit01/a/standardized_conv2d/kernel, ..., the head as a 1x1
convolution), so BiT's own code, big_vision and config.init.checkpoint of
ours read it. It is written atomically: an existing file is replaced only
by a complete one.
"""
from absl import flags

from big_transfer_med import cli
from big_transfer_med import paths
from big_transfer_med import pretrained_weights
from big_transfer_med import run_dir
from input_pipeline import errors


def export_bit_npz(workdir: str, out: str) -> None:
  """Writes the params of `workdir`'s latest checkpoint to `out` (.npz)."""
  if not out.endswith(".npz"):
    raise errors.ConfigError(f"--out={out!r}: give a file name ending in .npz.")
  pretrained_weights.save_bit_npz(
      run_dir.load_variables(paths.absolute(workdir))["params"],
      paths.absolute(out))


def main(argv):
  del argv
  export_bit_npz(flags.FLAGS.workdir, flags.FLAGS.out)
  print(f"Wrote {paths.absolute(flags.FLAGS.out)}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Run directory written by the trainer.")
  flags.DEFINE_string("out", None, "The .npz file to write.")
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
