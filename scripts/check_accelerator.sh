#!/usr/bin/env bash
# Checks that JAX computes on the accelerators, then benchmarks one train step
# there (float32 and bfloat16) beside the matmul peak.
#   bash scripts/check_accelerator.sh [extra benchmark flags, e.g. --model=R152x4]
# Needs only JAX and small pure-Python packages, no TensorFlow: on a fresh
# accelerator machine install them as the README's "Accelerators" says, and
# this runs with that Python. Where that Python lacks them, the repo's .venv
# (scripts/setup_env.sh, CPU JAX) is used. JAX_PLATFORMS=cpu runs the same
# check on the CPU (it then only warns).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! python -c "import jax, flax, optax, ml_collections" 2>/dev/null; then
  source "$REPO/scripts/setup_env.sh"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import sys
import jax
import jax.numpy as jnp

devices = jax.devices()
print(f"JAX {jax.__version__}, backend {jax.default_backend()}: "
      f"{len(devices)} devices ({devices[0].device_kind}), "
      f"{jax.process_count()} process(es)")
try:
  import tensorflow as tf
except ImportError:
  print("TensorFlow: not installed (this check does not need it; training "
        "reads data with it: README, Accelerators).")
else:
  # TensorFlow only feeds data; it must not take accelerator memory.
  print("TensorFlow devices:",
        [d.device_type for d in tf.config.list_physical_devices()])
x = jnp.ones((1024, 1024))
print("matmul on", (x @ x).devices(), "ok")
if jax.default_backend() == "cpu":
  message = ("JAX sees only the CPU: install the jax extra for this machine "
             "(README, Accelerators) and unset LD_LIBRARY_PATH.")
  if "cpu" not in (jax.config.jax_platforms or ""):
    sys.exit("ERROR: " + message)
  print("WARNING: " + message)
PY
for precision in float32 bfloat16; do
  python -m big_transfer_med.benchmark --what=peak,train,memory --precision="$precision" \
    --model=R50x1 --resolution=224 --batch_size="${BATCH:-64}" --steps=10 "$@"
done
