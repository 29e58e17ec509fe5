#!/usr/bin/env bash
# The embedded default: a complete transfer mini-study on real Fashion-MNIST.
#   1. pre-train a BiT R26x1 on classes 0-4 (configs/fashion_mnist_upstream.py);
#   2. fine-tune it and the same model from scratch on classes 5-9, full-shot
#      and 1/5/10-shot with 3 seeds (configs/studies/fmnist_demo.py);
#   3. print the table and write the plot.
#   bash scripts/demo.sh [extra --config.key=value flags for the pre-training]
# Environment: WORKDIR (default workdirs), FMNIST_DIR (the idx files; default
# /usr/share/datasets/fashion-mnist), TFDS_DATA_DIR.
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
  --manual_dir="$FMNIST_DIR" 2>&1 | { grep -E "Dataset generation complete|already exists|Error" || true; }

WORKDIR="${WORKDIR:-workdirs}"
UPSTREAM="$WORKDIR/fmnist_upstream"
echo "== 1/2: pre-training on Fashion-MNIST classes 0-4 -> $UPSTREAM"
python -m big_transfer_med.main --config=configs/fashion_mnist_upstream.py \
  --workdir="$UPSTREAM" "$@" 2>&1 | { grep --line-buffered -E "train.py|fewshot.py|main.py|ERROR|Error" || true; }
python - "$UPSTREAM/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"Upstream test accuracy on classes 0-4 after {r['step']} steps: "
      f"{100 * r['metrics']['accuracy']:.2f}% ({int(r['metrics']['examples'])} images)")
probe = {int(k.rsplit("_", 1)[1][:-4]): v for k, v in r["fewshot"].items()
         if k.endswith("shot")}
print("Linear few-shot probe of its features on classes 5-9 (mean of 3 seeds): "
      + ", ".join(f"{k}-shot {100 * probe[k]:.1f}%" for k in sorted(probe)))
PY

echo "== 2/2: transfer study (fine-tuning vs from scratch) -> $WORKDIR/fmnist_study"
python -m big_transfer_med.study --spec=configs/studies/fmnist_demo.py --parallel=2 \
  --spec.workdir="$WORKDIR/fmnist_study" \
  --spec.sources.fmnist_0to4="$UPSTREAM" 2>&1 | { grep --line-buffered -vE "^[IWE][0-9]{4} |^WARNING|^I0000|oneDNN|cpu_feature_guard|rebuild TensorFlow" || true; }
echo "Table: $WORKDIR/fmnist_study/summary.md; plot: $WORKDIR/fmnist_study/plot_fmnist_5to9_R26x1.png"
