r"""Entry point: python -m big_transfer_med.main --config=configs/X.py --workdir=DIR

Overrides: --config.batch_size=64, config arguments: --config=configs/X.py:arg.
Multi-host: --coordinator_address=HOST:PORT --num_processes=N --process_id=I,
or --coordinator_address=auto to let jax.distributed detect Cloud TPU / SLURM.
SIGTERM (to any host) saves a checkpoint at one step on every host and exits
with code 75 (preemption.EXIT_PREEMPTED): run the same command to continue.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from big_transfer_med import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "jax.distributed coordinator HOST:PORT, or 'auto'.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
flags.DEFINE_integer("process_id", None, "Index of this process.")
flags.DEFINE_integer("host_timeout_seconds", 100,
                     "Multi-host: a process that has sent no heartbeat for "
                     "this long is dead, and the others stop with an error "
                     "naming it.", lower_bound=1)
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a workdir whose saved config differs from --config "
                  "in keys that change the run (the old config.json is kept).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.coordinator_address:
    return
  # CPU collectives across processes need gloo (no-op on TPU/GPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address == "auto":
    jax.distributed.initialize(
        heartbeat_timeout_seconds=FLAGS.host_timeout_seconds)
  else:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.host_timeout_seconds)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.hide_accelerators_from_tensorflow()
  _initialize_distributed()
  cli.lock_shared_compilation_cache()
  from big_transfer_med import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                           allow_config_change=FLAGS.allow_config_change)


if __name__ == "__main__":
  cli.run(main)
