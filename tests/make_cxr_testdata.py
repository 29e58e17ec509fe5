"""Writes the tiny chest X-ray test folders in tests/testdata (real layouts and
headers, generated images). Run from the repo root to regenerate:
  python -m tests.make_cxr_testdata
"""
import gzip
import os

import numpy as np
from PIL import Image

from input_pipeline.labels import NIH_LABELS

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
    "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
    "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
    "Support Devices")
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
              "Patient Gender,View Position,OriginalImage[Width,Height],"
              "OriginalImagePixelSpacing[x,y]")


def radiograph(height, width, seed, dtype=np.uint8):
  """A smooth synthetic 'chest': bright border (bone) and darker lungs."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / np.array([[height], [width]])[..., None]
  lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) * 20) + np.exp(
      -((x - 0.7) ** 2 + (y - 0.5) ** 2) * 20)
  image = 0.9 - 0.6 * lungs + 0.05 * rng.standard_normal((height, width))
  top = np.iinfo(dtype).max
  return np.clip(image * top, 0, top).astype(dtype)


def write(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def make_chexpert(root):
  release = os.path.join(root, "CheXpert-v1.0-small")
  train = [
      "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
      "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
      "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
      "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,,,,,,,1.0,",
      "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,",
      # Listed but never shipped: skipped and counted by the builder.
      "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Male,20,Frontal,PA,1.0,,,,,,,,,,,,,",
  ]
  valid = [
      "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
      "CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0",
  ]
  os.makedirs(release, exist_ok=True)
  for name, rows in (("train.csv", train), ("valid.csv", valid)):
    with open(os.path.join(release, name), "w") as f:
      f.write("\n".join([CHEXPERT_HEADER] + rows) + "\n")
  for i, row in enumerate(train[:-1] + valid):
    path = row.split(",")[0]
    # One large image checks the default config's downscaling.
    shape = (560, 530) if i == 0 else (40, 32)
    write(os.path.join(root, path), radiograph(*shape, seed=i), quality=90)


def make_nih(root):
  os.makedirs(root, exist_ok=True)
  rows = [
      ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA"),
      ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
      ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
      ("00000003_000.png", "Hernia", 0, 3, 81, "F", "PA"),
      ("00000003_001.png", "Hernia|Pleural_Thickening", 1, 3, 74, "F", "AP"),
      ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP"),
      ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA"),
      ("00000006_000.png", "Effusion|Infiltration", 0, 6, 60, "F", "PA"),
  ]
  with open(os.path.join(root, "Data_Entry_2017_v2020.csv"), "w") as f:
    f.write(NIH_HEADER + "\n")
    for r in rows:
      f.write(",".join(map(str, r)) + ",2682,2749,0.143,0.143\n")
  test = {"00000003_000.png", "00000003_001.png"}
  with open(os.path.join(root, "test_list.txt"), "w") as f:
    f.write("\n".join(sorted(test)) + "\n")
  with open(os.path.join(root, "train_val_list.txt"), "w") as f:
    f.write("\n".join(sorted(r[0] for r in rows if r[0] not in test)) + "\n")
  for i, r in enumerate(rows):
    folder = "images_001" if i < 4 else "images_002"
    write(os.path.join(root, folder, "images", r[0]), radiograph(36, 36, i))


def _encoded(size, seed, dtype=np.uint8, **kwargs):
  """One generated radiograph as file bytes (PNG, or JPEG with quality=)."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(radiograph(size, size, seed, dtype)).save(
      buffer, format="JPEG" if kwargs else "PNG", **kwargs)
  return buffer.getvalue()


def _write_all(root, relative_paths, content):
  """Writes `content` to every root/relative path (folders made once)."""
  made = set()
  for relative in relative_paths:
    path = os.path.join(root, relative)
    folder = os.path.dirname(path)
    if folder not in made:
      os.makedirs(folder, exist_ok=True)
      made.add(folder)
    with open(path, "wb") as f:
      f.write(content)


def _patients(rng, num_images, images_per_patient):
  """Patient number (1, 2, ...) of each image, consecutive images shared."""
  return np.cumsum(rng.random(num_images) < 1 / images_per_patient) + 1


# The metadata-scale writers below make a release's layout at any size, with
# full metadata rows, for start-up and read-count measurements: every image
# holds the same bytes, since neither depends on what they show.

def make_nih_at_scale(root, num_images, size=16, seed=0):
  """NIH ChestX-ray14: about 3.7 images per patient with follow-up numbers,
  half without findings, the others with 1-3 of the 14, ages, sexes, PA/AP;
  whole patients in test_list.txt (one in five); images_0NN/images/ folders
  of 10,000 as released."""
  rng = np.random.default_rng(seed)
  names = np.array(NIH_LABELS)
  patients = _patients(rng, num_images, 3.7)
  lines, test, train_val, files = [NIH_HEADER], [], [], []
  follow_up = 0
  for i, patient in enumerate(patients.tolist()):
    follow_up = follow_up + 1 if i and patient == patients[i - 1] else 0
    findings = ("No Finding" if rng.random() < 0.5 else "|".join(
        rng.choice(names, rng.integers(1, 4), replace=False)))
    name = f"{patient:08d}_{follow_up:03d}.png"
    lines.append(f"{name},{findings},{follow_up},{patient},"
                 f"{rng.integers(1, 95)},{'MF'[rng.integers(2)]},"
                 f"{'PA' if rng.random() < 0.6 else 'AP'},2500,2048,0.143,0.143")
    (test if patient % 5 == 0 else train_val).append(name)
    files.append(f"images_{i // 10000 + 1:03d}/images/{name}")
  _write_all(root, files, _encoded(size, seed))
  for file_name, content in (("Data_Entry_2017_v2020.csv", lines),
                             ("test_list.txt", test),
                             ("train_val_list.txt", train_val)):
    with open(os.path.join(root, file_name), "w") as f:
      f.write("\n".join(content) + "\n")


def _chexpert_labels(rng, count):
  """`count` CheXpert label fields: blank, 1.0, 0.0 or -1.0."""
  return ",".join(rng.choice(["", "", "1.0", "0.0", "-1.0"], count))


def make_chexpert_at_scale(root, num_images, size=16, seed=0):
  """CheXpert-v1.0-small: ~3.5 images per patient in studies of 2 views
  (frontal AP/PA, lateral), the 14 labels blank / 1 / 0 / -1; 234 images
  (or 1 in 1000) in valid.csv, JPEG images."""
  rng = np.random.default_rng(seed)
  patients = _patients(rng, num_images, 3.5)
  valid = max(1, min(234, num_images // 1000))
  rows = {"train": [], "valid": []}
  for i, patient in enumerate(patients.tolist()):
    split = "valid" if i >= num_images - valid else "train"
    lateral = rng.random() < 0.15
    path = (f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study"
            f"{i // 2 + 1}/view{i % 2 + 1}_"
            f"{'lateral' if lateral else 'frontal'}.jpg")
    rows[split].append(
        f"{path},{'Female' if i % 2 else 'Male'},{rng.integers(18, 90)},"
        f"{'Lateral' if lateral else 'Frontal'},"
        f"{'' if lateral else 'AP' if rng.random() < 0.7 else 'PA'},"
        f"{_chexpert_labels(rng, 14)}")
  # Patients straddling the cut would be in both splits: renumber valid ones.
  rows["valid"] = [r.replace("patient", "patient9", 1) for r in rows["valid"]]
  for split, lines in rows.items():
    os.makedirs(os.path.join(root, "CheXpert-v1.0-small"), exist_ok=True)
    with open(os.path.join(root, "CheXpert-v1.0-small", f"{split}.csv"),
              "w") as f:
      f.write("\n".join([CHEXPERT_HEADER] + lines) + "\n")
    _write_all(root, [r.split(",")[0] for r in lines],
               _encoded(size, seed, quality=90))


def make_mimic_at_scale(root, num_images, size=16, seed=0):
  """MIMIC-CXR-JPG: subjects with ~2 studies of ~1.5 images, PA/AP/LATERAL,
  a CheXpert-labeller row per study (some studies unlabelled), the official
  split file (about 1% validate and 2% test, by subject)."""
  rng = np.random.default_rng(seed)
  studies = _patients(rng, num_images, 1.5)
  subjects = np.cumsum(np.r_[True, np.diff(studies) > 0] &
                       (rng.random(num_images) < 0.5))
  metadata, labels, split, files = [MIMIC_METADATA_HEADER], [
      MIMIC_CHEXPERT_HEADER], ["dicom_id,study_id,subject_id,split"], []
  for i, (study, subject) in enumerate(zip(studies.tolist(),
                                           subjects.tolist())):
    dicom = f"{i:08x}-{seed:08x}-bench000-00000000-00000000"
    subject_id, study_id = f"1{subject:07d}", f"5{study:07d}"
    view = rng.choice(["PA", "AP", "LATERAL"], p=[0.4, 0.4, 0.2])
    metadata.append(f"{dicom},{subject_id},{study_id},CHEST (PA AND LAT),"
                    f"{view},3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
                    "postero-anterior,Erect")
    if (not i or study != studies[i - 1]) and rng.random() < 0.95:
      labels.append(f"{subject_id},{study_id},{_chexpert_labels(rng, 14)}")
    name = ("test" if subject % 50 == 0 else
            "validate" if subject % 100 == 1 else "train")
    split.append(f"{dicom},{study_id},{subject_id},{name}")
    files.append(f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/"
                 f"{dicom}.jpg")
  os.makedirs(root, exist_ok=True)
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz"), metadata)
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-chexpert.csv.gz"), labels)
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"), split)
  _write_all(root, files, _encoded(size, seed, quality=90))


PADCHEST_FINDINGS = ("normal", "cardiomegaly", "pleural effusion", "pneumonia",
                     "nodule", "scoliosis", "laminar atelectasis",
                     "aortic elongation", "chronic changes")


def make_padchest_at_scale(root, num_images, size=16, seed=0):
  """PadChest: ~1.7 images per patient, PA/L/AP/AP_horizontal projections,
  1-3 findings (or 'normal'), 16-bit PNGs in folders 0-50 and 54."""
  rng = np.random.default_rng(seed)
  patients = _patients(rng, num_images, 1.7)
  folders = list(range(51)) + [54]
  lines, files = [PADCHEST_HEADER], []
  for i, patient in enumerate(patients.tolist()):
    image = f"2168401113669640{i:012d}_00-{seed:03d}-000.png"
    folder = folders[i % len(folders)]
    findings = rng.choice(PADCHEST_FINDINGS, rng.integers(1, 4), replace=False)
    projection = rng.choice(["PA", "L", "AP", "AP_horizontal"],
                            p=[0.55, 0.3, 0.1, 0.05])
    quoted = '"' + str([str(f) for f in findings]) + '"'
    lines.append(
        f"{i},{image},{folder},20140915,study{i},p{patient},1930.0,"
        f"{'MF'[i % 2]},POSTEROANTERIOR,{projection},Manual review of DICOM "
        f"fields,No,CR,Maker,MONOCHROME2,0,None,None,12,2092,2251,1728,1872,"
        f"250,2,2500,10,-1.42,4765777, sin hallazg .,Physician,{quoted},[],"
        "[],[],[]")
    files.append(f"{folder}/{image}")
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "PADCHEST_chest_x_ray_images_labels_160K_"
                         "01.02.19.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _write_all(root, files, _encoded(size, seed, dtype=np.uint16))


MIMIC_CHEXPERT_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
    "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
    "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices")
MIMIC_METADATA_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
    "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
    "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning")
PADCHEST_HEADER = (
    ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,"
    "PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,Pediatric,"
    "Modality_DICOM,Manufacturer_DICOM,PhotometricInterpretation_DICOM,"
    "PixelRepresentation_DICOM,PixelAspectRatio_DICOM,SpatialResolution_DICOM,"
    "BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,"
    "Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,"
    "ExposureTime,RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,"
    "Localizations,LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS")


# Source name (config.data.sources) -> its metadata-scale writer.
AT_SCALE = {"chexpert": make_chexpert_at_scale, "mimic": make_mimic_at_scale,
            "nih14": make_nih_at_scale, "padchest": make_padchest_at_scale}


def write_gz(path, lines):
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines) + "\n")


def make_mimic(root):
  os.makedirs(root, exist_ok=True)
  # (dicom_id, subject, study, view, split)
  images = [
      ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
      ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
      ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "train"),
      ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "AP", "train"),
      ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", "10000898", "50771383", "PA", "validate"),
      ("ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c", "10001176", "53186264", "PA", "test"),
      ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "10001176", "54684191", "AP", "test"),
  ]
  labels = [
      "10000032,50414267,,,,,,,,,1.0,,,,,",
      "10000032,53189527,,,,,,,,,1.0,,,,,",
      "10000764,57375967,,,1.0,,,,,,,,,-1.0,,",
      "10000898,50771383,,,,,,,,,1.0,,,,,",
      "10001176,53186264,,,,,,,,,1.0,,,,,",
      # Study 54684191 has no label row: all labels not mentioned.
  ]
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz"),
           [MIMIC_METADATA_HEADER] + [
               f"{d},{s},{t},CHEST (PA AND LAT),{v},3056,2544,21800506,"
               f"213014.531,CHEST (PA AND LAT),postero-anterior,Erect"
               for d, s, t, v, _ in images])
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-chexpert.csv.gz"),
           [MIMIC_CHEXPERT_HEADER] + labels)
  write_gz(os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"),
           ["dicom_id,study_id,subject_id,split"] +
           [f"{d},{t},{s},{split}" for d, s, t, _, split in images])
  for i, (d, s, t, _, _) in enumerate(images):
    write(os.path.join(root, "files", f"p{s[:2]}", f"p{s}", f"s{t}", d + ".jpg"),
          radiograph(48, 40, seed=20 + i), quality=90)


def make_padchest(root):
  os.makedirs(root, exist_ok=True)
  # (ImageID, ImageDir, PatientID, Projection, Labels)
  rows = [
      ("20536686640136348236148679891455886468_k6ga29.png", 0, "p1", "PA", "['normal']"),
      ("135803415504923515076821959678074435083_fzis7d.png", 0, "p2", "L",
       "['pulmonary fibrosis', 'chronic changes', 'kyphosis', 'pseudonodule', 'ground glass pattern']"),
      ("113855343774216031107737439268243531979_3k951l.png", 1, "p3", "PA",
       "['chronic changes', 'pleural effusion', 'cardiomegaly']"),
      ("216840111366964012283393834152009033102258826_00-059-087.png", 1, "p3", "AP_horizontal",
       "['pneumonia']"),  # Known-missing file in the real release.
      ("216840111366964012339356563862009072111404053_00-043-192.png", 2, "p4", "AP",
       "['nodule', 'NSG tube']"),
      ("216840111366964012373310883942009117084022290_00-064-025.png", 2, "p5", "PA", ""),  # Null labels.
      ("216840111366964012373310883942009170084120009_00-097-074.png", 2, "p6", "EXCLUDE", "['normal']"),
      ("216840111366964012487858717522009280135853083_00-075-001.png", 54, "p7", "PA",
       "['hiatal hernia', 'scoliosis']"),
      ("216840111366964012558082906712009327122220177_00-102-064.png", 54, "p8", "PA",
       "['laminar atelectasis']"),
      ("216840111366964012819207061112010306085429121_04-020-102.png", 54, "p9", "PA",
       "['aortic elongation']"),
  ]
  with open(os.path.join(root, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"), "w") as f:
    f.write(PADCHEST_HEADER + "\n")
    for i, (image, folder, patient, projection, labels) in enumerate(rows):
      quoted = f'"{labels}"' if labels else ""
      f.write(f"{i},{image},{folder},20140915,study{i},{patient},1930.0,F,"
              f"POSTEROANTERIOR,{projection},Manual review of DICOM fields,No,"
              f"CR,Maker,MONOCHROME2,0,None,None,12,2092,2251,1728,1872,250,2,"
              f"2500,10,-1.42,4765777, sin hallazg .,Physician,{quoted},[],"
              f"[],[],[]\n")
  for i, (image, folder, _, _, _) in enumerate(rows):
    if i == 3:
      continue  # Missing from the release.
    write(os.path.join(root, str(folder), image),
          radiograph(40, 44, seed=40 + i, dtype=np.uint16))


def make_tuberculosis(root):
  # Shenzhen: 4 normal (one truncated) + 3 TB, one stored as RGB as some
  # real files are; Montgomery: 2 + 2. Plus the non-image files of the sets.
  files = ([f"ChinaSet_AllFiles/CXR_png/CHNCXR_{i:04d}_0.png" for i in (1, 2, 3, 4)]
           + [f"ChinaSet_AllFiles/CXR_png/CHNCXR_{i:04d}_1.png" for i in (327, 328, 329)]
           + [f"MontgomerySet/CXR_png/MCUCXR_{i:04d}_0.png" for i in (1, 2)]
           + [f"MontgomerySet/CXR_png/MCUCXR_{i:04d}_1.png" for i in (104, 108)])
  for i, name in enumerate(files):
    image = radiograph(36, 40, seed=60 + i)
    if i == 5:
      image = np.repeat(image[..., None], 3, axis=-1)
    write(os.path.join(root, name), image)
  with open(os.path.join(root, files[3]), "r+b") as f:
    f.truncate(60)  # Truncated: skipped and counted.
  with open(os.path.join(root, "ChinaSet_AllFiles/CXR_png/Thumbs.db"), "wb") as f:
    f.write(b"\0" * 16)
  os.makedirs(os.path.join(root, "MontgomerySet/ClinicalReadings"), exist_ok=True)
  with open(os.path.join(root, "MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt"), "w") as f:
    f.write("Patient's Sex: F\nPatient's Age: 040Y\nnormal\n")


def make_covidx(root):
  train = ["3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg positive cohen",
           "ANON25 COVID-19(100).png positive sirm",
           "8a6e8d2c 8a6e8d2c-2fe1-4f6c-a5b3-2b4c5b9a0c1f.png negative rsna",
           "1c2d3e4f 1c2d3e4f-aaaa-bbbb-cccc-000000000001.png negative rsna",
           "p77 MIDRC-RICORD-1C-SITE2-000216-28183-0.png positive ricord"]
  test = ["419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord",
          "0a2b3c4d 0a2b3c4d-1111-2222-3333-444455556666.png negative rsna",
          "0f0e0d0c 0f0e0d0c-1111-2222-3333-444455556666.png negative rsna"]
  os.makedirs(root, exist_ok=True)
  for split, rows in (("train", train), ("test", test)):
    with open(os.path.join(root, f"{split}.txt"), "w") as f:
      f.write("\n".join(rows) + "\n")
    for i, row in enumerate(rows):
      name = " ".join(row.split()[1:-2])
      image = radiograph(44, 38, seed=80 + i + 10 * (split == "test"))
      if name.endswith(".jpeg"):
        write(os.path.join(root, split, name),
              np.repeat(image[..., None], 3, axis=-1), quality=95)
      else:
        write(os.path.join(root, split, name), image)


if __name__ == "__main__":
  for name, make in (("cxr_chexpert", make_chexpert), ("cxr_nih14", make_nih),
                     ("cxr_mimic", make_mimic), ("cxr_padchest", make_padchest),
                     ("cxr_tuberculosis", make_tuberculosis),
                     ("cxr_covidx", make_covidx)):
    make(os.path.join(TESTDATA, name))
