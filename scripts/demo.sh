#!/usr/bin/env bash
# The embedded default: upstream pre-training of a BiT R26x1 on real
# Fashion-MNIST classes 0-4, from a fresh machine to a test accuracy.
#   bash scripts/demo.sh [extra --config.key=value flags]
# Environment: WORKDIR (default workdirs/fmnist_upstream), FMNIST_DIR (the idx
# files; default /usr/share/datasets/fashion-mnist), TFDS_DATA_DIR.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup_env.sh

FMNIST_DIR="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ ! -s "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && [ ! -s "$FMNIST_DIR/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's dataset-fashion-mnist (real Fashion-MNIST idx files)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    cat >&2 <<MSG
Fashion-MNIST not found in $FMNIST_DIR. Either
  sudo apt-get install dataset-fashion-mnist      (Debian/Ubuntu), or
  download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from
  https://github.com/zalandoresearch/fashion-mnist into a directory DIR and
  run again with FMNIST_DIR=DIR.
MSG
    exit 1
  fi
fi

tfds build --imports=input_pipeline.datasets fashion_mnist_local \
  --manual_dir="$FMNIST_DIR" 2>&1 | grep -E "Dataset generation complete|already exists|Error" || true

WORKDIR="${WORKDIR:-workdirs/fmnist_upstream}"
python -m big_transfer_med.main --config=configs/fashion_mnist_upstream.py \
  --workdir="$WORKDIR" "$@" 2>&1 | grep --line-buffered -E "train.py|main.py|ERROR|Error" || true
python - "$WORKDIR/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"Test accuracy on Fashion-MNIST classes 0-4 after {r['step']} steps: "
      f"{100 * r['metrics']['accuracy']:.2f}% ({int(r['metrics']['examples'])} images)")
PY
