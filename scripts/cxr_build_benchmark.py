r"""Measures chest X-ray dataset builds: seconds and stored MB per 1,000 images.

Writes N synthetic radiographs at each dataset's released size and format, in
its exact folder layout (reusing the test-data writers), builds them with
TFDS (--configs, default 'default': shorter side <= 512 px; 'jpeg': the same
as JPEG) and prints one JSON line per dataset and config.
  python scripts/cxr_build_benchmark.py --num_images=200
With --keep=DIR the built datasets stay in DIR (a TFDS data_dir) and their
source files in DIR/manual/<dataset>, for the input benchmarks, e.g. python -m big_transfer_med.benchmark --what=input,seed_input
--config=configs/r50x1_chest.py:sources=nih14 --config.data.data_dir=DIR
--peer_files='DIR/manual/cxr_nih14/images_001/images/*.png'.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import input_pipeline.datasets  # noqa: E402,F401  (registers the builders)
from tests import make_cxr_testdata as testdata  # noqa: E402

# Released image sizes: NIH 1024x1024 8-bit PNG; CheXpert-small ~390x320 JPEG;
# PadChest ~2000x2000 16-bit PNG; MIMIC-CXR-JPG ~3056x2544 JPEG.
SIZES = {"cxr_nih14": (1024, 1024), "cxr_chexpert": (390, 320),
         "cxr_padchest": (2000, 2000), "cxr_mimic": (3056, 2544)}


def _real_radiographs(size):
  """The 16 real radiographs of tests/kermany_radiographs.py, grayscale,
  resized to `size` (height, width) as the release stores them."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tests import kermany_radiographs  # pylint: disable=g-import-not-at-top
  return [np.asarray(Image.open(io.BytesIO(data)).convert("L").resize(
              size[::-1], Image.BICUBIC))
          for data in kermany_radiographs.jpegs().values()]


def _scale_up(name, manual, n, real=False):
  """Replicates the test folder's first rows to n images at released size
  (NIH with `real`: the real radiographs in turn, not a synthetic one)."""
  if name == "cxr_nih14":
    lines = open(os.path.join(manual, "Data_Entry_2017_v2020.csv")).read().splitlines()
    rows = [f"{i:08d}_000.png,No Finding,0,{i},50,M,PA,1024,1024,0.14,0.14"
            for i in range(1, n + 1)]
    with open(os.path.join(manual, "Data_Entry_2017_v2020.csv"), "w") as f:
      f.write("\n".join(lines[:1] + rows) + "\n")
    names = [r.split(",")[0] for r in rows]
    with open(os.path.join(manual, "test_list.txt"), "w") as f:
      f.write("\n".join(names[: n // 10]) + "\n")
    with open(os.path.join(manual, "train_val_list.txt"), "w") as f:
      f.write("\n".join(names[n // 10:]) + "\n")
    shutil.rmtree(os.path.join(manual, "images_001"))
    shutil.rmtree(os.path.join(manual, "images_002"))
    images = (_real_radiographs(SIZES[name]) if real else
              [testdata.radiograph(*SIZES[name], seed=0)])
    for i, image_name in enumerate(names):
      testdata.write(os.path.join(manual, "images_001", "images", image_name),
                     images[i % len(images)])
  elif name == "cxr_chexpert":
    release = os.path.join(manual, "CheXpert-v1.0-small")
    header = open(os.path.join(release, "train.csv")).readline().strip()
    image = testdata.radiograph(*SIZES[name], seed=0)
    for split, count, first in (("train", n - 10, 1), ("valid", 10, 70000)):
      rows = [f"CheXpert-v1.0-small/{split}/patient{first + i:05d}/study1/"
              f"view1_frontal.jpg,Male,50,Frontal,PA,1.0" + "," * 13
              for i in range(count)]
      with open(os.path.join(release, f"{'train' if split == 'train' else 'valid'}.csv"), "w") as f:
        f.write("\n".join([header] + rows) + "\n")
      for row in rows:
        testdata.write(os.path.join(manual, row.split(",")[0]), image, quality=95)
  elif name == "cxr_mimic":
    for f in os.listdir(manual):
      if f != "mimic-cxr-2.0.0-chexpert.csv.gz":
        path = os.path.join(manual, f)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    image = testdata.radiograph(*SIZES[name], seed=0)
    rows = [(f"{i:08d}-bench", f"1{i:07d}", f"5{i:07d}") for i in range(n)]
    testdata.write_gz(os.path.join(manual, "mimic-cxr-2.0.0-metadata.csv.gz"),
                      [testdata.MIMIC_METADATA_HEADER] +
                      [f"{d},{s},{t},,PA,3056,2544,,,,," for d, s, t in rows])
    testdata.write_gz(os.path.join(manual, "mimic-cxr-2.0.0-split.csv.gz"),
                      ["dicom_id,study_id,subject_id,split"] +
                      [f"{d},{t},{s},{'test' if i % 10 == 0 else 'validate' if i % 10 == 1 else 'train'}"
                       for i, (d, s, t) in enumerate(rows)])
    for d, s, t in rows:
      testdata.write(os.path.join(manual, "files", f"p{s[:2]}", f"p{s}",
                                  f"s{t}", d + ".jpg"), image, quality=95)
  elif name == "cxr_padchest":
    csv_name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    lines = open(os.path.join(manual, csv_name)).read().splitlines()
    template = lines[1].split(",", 3)
    image = testdata.radiograph(*SIZES[name], seed=0, dtype=np.uint16)
    rows = []
    for i in range(n):
      image_id = f"bench{i:06d}.png"
      rows.append(f"{i},{image_id},0,{template[3].replace('p1', f'q{i}', 1)}")
      testdata.write(os.path.join(manual, "0", image_id), image)
    with open(os.path.join(manual, csv_name), "w") as f:
      f.write("\n".join(lines[:1] + rows) + "\n")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_images", type=int, default=200)
  parser.add_argument(
      "--datasets", default="cxr_nih14,cxr_chexpert,cxr_padchest,cxr_mimic")
  parser.add_argument("--keep", default="",
                      help="Keep the built datasets in this TFDS data_dir.")
  parser.add_argument("--configs", default="default",
                      help="Builder configs to build, e.g. default,jpeg.")
  parser.add_argument("--real_images", action="store_true",
                      help="cxr_nih14: 16 real radiographs (Kermany et al. "
                           "2018, from a PyPI wheel) in turn, at 1024 px.")
  args = parser.parse_args()
  for name in args.datasets.split(","):
    work = tempfile.mkdtemp()
    # --keep also keeps the source files (the seed recipe's input).
    manual = os.path.join(args.keep or work, "manual", name)
    getattr(testdata, "make_" + name[len("cxr_"):].replace("14", ""))(manual)
    _scale_up(name, manual, args.num_images, args.real_images)
    data_dir = args.keep or os.path.join(work, "tfds")
    for config in args.configs.split(","):
      start = time.perf_counter()
      builder = tfds.builder(f"{name}/{config}", data_dir=data_dir)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual))
      seconds = time.perf_counter() - start
      images = sum(s.num_examples for s in builder.info.splits.values())
      size = sum(os.path.getsize(os.path.join(d, f))
                 for d, _, files in os.walk(builder.data_dir) for f in files)
      print(json.dumps({
          "dataset": name, "config": config, "images": images,
          "real_images": args.real_images,
          "data_dir": data_dir if args.keep else None,
          "source_size": SIZES[name],
          "seconds_per_1000": round(seconds / images * 1000, 1),
          "mb_per_1000": round(size / images * 1000 / 2**20, 1)}), flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
  main()
