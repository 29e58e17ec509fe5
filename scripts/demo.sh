#!/usr/bin/env bash
# The embedded default: a complete transfer mini-study on real Fashion-MNIST.
#   1. pre-train a BiT R26x1 on classes 0-4 (configs/fashion_mnist_upstream.py);
#   2. fine-tune it and the same model from scratch on classes 5-9, full-shot
#      and 1/5/10-shot with 3 seeds (configs/studies/fmnist_demo.py);
#   3. print the table, write the plot and check every output.
#   bash scripts/demo.sh [extra --config.key=value flags for the pre-training]
# Environment: WORKDIR (default workdirs, relative to the current directory),
# FMNIST_DIR (the idx files; default /usr/share/datasets/fashion-mnist),
# TFDS_DATA_DIR, JAX_COMPILATION_CACHE_DIR (default WORKDIR/.jax_cache),
# DEMO_SMOKE=1 (every stage in a few steps: one seed, one shot
# count; what CI runs).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup_env.sh"

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

# Paths are passed on as typed: the entry points take them from here.
WORKDIR="${WORKDIR:-workdirs}"
UPSTREAM="$WORKDIR/fmnist_upstream"
STUDY="$WORKDIR/fmnist_study"
# One compilation cache for every stage (and for a re-run of the demo).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/.jax_cache}"
UPSTREAM_ARGS=() STUDY_ARGS=()
if [ "${DEMO_SMOKE:-0}" = 1 ]; then
  echo "(smoke mode: a few steps per stage)"
  UPSTREAM_ARGS=(--config.total_epochs=0 --config.total_steps=4
    --config.checkpoint.every_steps=2 --config.data.eval_split='test[:2%]'
    --config.evals.fewshot.shots='(1,)' --config.evals.fewshot.seeds='(0,)'
    --config.evals.fewshot.eval_split='test[:5%]')
  STUDY_ARGS=(--spec.seeds='(0,)' --spec.shots='(1,)'
    --spec.fewshot_args=steps=2,batch=16,lr=0.5,eval_split='test[:5%]')
fi

SPEC="$REPO/configs/studies/fmnist_demo.py"
study() {
  python -m big_transfer_med.study --spec="$SPEC" --spec.workdir="$STUDY" \
    --spec.sources.fmnist_0to4="$UPSTREAM" "${STUDY_ARGS[@]}" "$@" 2>&1 \
    | { grep --line-buffered -vE "^[IWE][0-9]{4} |^WARNING|^I0000|oneDNN|cpu_feature_guard|rebuild TensorFlow" || true; }
}
start=$SECONDS
# Study jobs run in-process (--in_process: each program is compiled once per
# process, no start-up per job), in two processes at a time: two use the 2
# cores of a small machine better than one (README, "Measured"). The
# from-scratch jobs need no pre-trained model, so they run beside the
# pre-training; then the pre-trained model's full-shot job beside its
# few-shot jobs.
mkdir -p "$STUDY"
study --in_process --sources=scratch > "$STUDY/jobs_scratch.txt" &
scratch=$!

echo "== 1/2: pre-training on Fashion-MNIST classes 0-4 -> $UPSTREAM"
echo "   (beside it, the study's from-scratch jobs -> $STUDY)"
python -m big_transfer_med.main --config="$REPO/configs/fashion_mnist_upstream.py" \
  --workdir="$UPSTREAM" "${UPSTREAM_ARGS[@]}" "$@" 2>&1 \
  | { grep --line-buffered -E "train.py|train_metrics.py|fewshot.py|main.py|ERROR|Error" || true; }
python - "$UPSTREAM/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"Upstream test accuracy on classes 0-4 after {r['step']} steps: "
      f"{100 * r['metrics']['accuracy']:.2f}% ({int(r['metrics']['examples'])} images)")
probe = {int(k.rsplit("_", 1)[1][:-4]): v for k, v in r["fewshot"].items()
         if k.endswith("shot")}
print("Linear few-shot probe of its features on classes 5-9 (mean over seeds): "
      + ", ".join(f"{k}-shot {100 * probe[k]:.1f}%" for k in sorted(probe)))
PY
echo "   pre-training done at $((SECONDS - start)) s"

echo "== 2/2: transfer study (fine-tuning vs from scratch) -> $STUDY"
study --in_process --sources=fmnist_0to4 --shots=0 > "$STUDY/jobs_full.txt" &
full=$!
study --in_process --sources=fmnist_0to4 --shots=1,5,10 > "$STUDY/jobs_fewshot.txt"
for pid in "$scratch" "$full"; do wait "$pid" || true; done
grep -h "^\[" "$STUDY"/jobs_*.txt || true
# Runs whatever is still missing (a failed job fails here, with its error),
# then prints the table.
study --in_process
echo "   study done at $((SECONDS - start)) s"
python "$REPO/scripts/check_demo_outputs.py" "$UPSTREAM" "$STUDY"
