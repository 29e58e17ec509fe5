"""The input pipeline's named choices: what a config may name.

Plain Python, no TensorFlow: config validation reads them where only JAX is
installed (an accelerator check on a bare machine); the modules that act on
them (preprocessing, pipeline, the builders) import them from here.
"""

# config.data.augment. crop_flip: zero-pad, random crop back, flip; cxr: the
# seed's affine + flip; bit: resize to data.resize, random crop to
# data.resolution, flip (HyperRule); resized_crop: torchvision's
# RandomResizedCrop(resolution) (area 8-100%, aspect 3/4-4/3), flip, rotation
# by up to data.rotation degrees, and for evaluation Resize(data.resize) +
# CenterCrop(resolution): the benchmark paper's (Hosseinzadeh Taher et al.)
# ImageNet-style recipe.
AUGMENTATIONS = ("none", "flip", "crop_flip", "cxr", "bit", "resized_crop")
# config.data.normalization -> per-channel (mean, std) of [0, 1] pixels.
# Google's BiT weights and the seed paper's chest X-ray models expect [-1, 1];
# the seed's ImageNet-1k/21k PyTorch models expect ImageNet's statistics.
NORMALIZATIONS = {
    "minus_one_one": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# config.data.affine_fill: what the cxr augmentation shows outside the image:
# black, or the image mirrored about its border without repeating the edge
# pixel (OpenCV's BORDER_REFLECT_101, albumentations' ShiftScaleRotate
# default, as the seed code ran it).
AFFINE_FILLS = ("zeros", "reflect_101")
# config.data.views: the view positions every chest X-ray builder stores.
VIEWS = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
# config.data.sources: source name -> builder. padchest_seed: PadChest as the
# seed code formed it.
CXR_SOURCES = {"chexpert": "cxr_chexpert", "mimic": "cxr_mimic",
               "nih14": "cxr_nih14", "padchest": "cxr_padchest",
               "padchest_seed": "cxr_padchest_seed"}
# A user's folder dataset (import_folder --name=NAME) as a source, a label
# set (its own findings) or a transfer target: 'folder:NAME'.
FOLDER_PREFIX = "folder:"


def folder_name(value) -> str:
  """NAME of 'folder:NAME', else ''."""
  if isinstance(value, str) and value.startswith(FOLDER_PREFIX):
    return value[len(FOLDER_PREFIX):]
  return ""
