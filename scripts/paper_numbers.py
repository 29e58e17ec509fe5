r"""Writes configs/studies/paper_numbers.py from the seed repository's
results/*.csv (SLAMPAI/large-scale-pretraining-transfer): the mean over
seeds, in percent, of every (target, source, model, shots) cell.

  python scripts/paper_numbers.py --results=SEED_REPO/results
"""
import argparse
import collections
import csv
import os

# Our target name -> (the seed's results file, its metric).
FILES = {
    "cifar10": "finetuning_results_cifar10_test_acc.csv",
    "cifar100": "finetuning_results_cifar100_test_acc.csv",
    "oxford_flowers102": "finetuning_results_flowers_oversampling_test_acc.csv",
    "oxford_iiit_pet": "finetuning_results_pets_test_acc.csv",
    "tuberculosis": "finetuning_results_tuberculosis_full_test_acc.csv",
    "covidx": "finetuning_results_covidx_cxr2_test_acc.csv",
    "padchest_cl": "finetuning_results_padchest_test_mean_auc.csv",
}
MODELS = {"bit50x1": "R50x1", "bit152x4": "R152x4"}


def cells(path):
  """{(source, model, shots): mean %} of one results file (rows repeat: one
  value per seed is kept)."""
  values = collections.defaultdict(dict)
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      source, _, model = row["pretrained_model"].rpartition("_")
      shots = 0 if row["shot"] == "full_shot" else int(row["shot"].split("_")[0])
      values[(source, MODELS[model], shots)][row["seed"]] = float(
          row["metric_value"])
  return {k: round(100 * sum(v.values()) / len(v), 1)
          for k, v in sorted(values.items())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", required=True)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
      "studies", "paper_numbers.py"))
  args = parser.parse_args()
  lines = ['"""The seed paper\'s numbers (Cherti & Jitsev 2021): mean over its 5',
           "seeds, in percent, of each cell of its released results/*.csv",
           "(accuracy; mean AUC for padchest_cl). Written by",
           'scripts/paper_numbers.py; do not edit."""', "",
           "# (target, source, model, shots; 0 = full) -> value.", "PAPER = {"]
  for target, name in FILES.items():
    for (source, model, shots), value in cells(
        os.path.join(args.results, name)).items():
      lines.append(f"    ({target!r}, {source!r}, {model!r}, {shots}): {value},")
  lines.append("}")
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
