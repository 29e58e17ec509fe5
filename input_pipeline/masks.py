"""Segmentation masks as released: SIIM-ACR's run-length encoding and
binary mask images (Montgomery County's ManualMask PNGs)."""
import numpy as np

from input_pipeline import xray_io

SIIM_EMPTY = "-1"  # EncodedPixels of an image without pneumothorax.


def decode_siim_rle(encoded: str, height: int, width: int) -> np.ndarray:
  """SIIM-ACR EncodedPixels -> uint8 [height, width] of 0/1.

  Pairs '<gap> <length>': each run starts `gap` pixels after the end of the
  previous one (the first after pixel 0) and covers `length` pixels, in
  column-major order (pixel k is row k % height, column k // height: the
  competition's mask_functions.rle2mask(...).T). '-1' is an empty mask.
  Raises ValueError for an odd count, a negative number or a run past the
  image's end.
  """
  flat = np.zeros(height * width, np.uint8)
  encoded = str(encoded).strip()
  if encoded == SIIM_EMPTY:
    return flat.reshape(height, width)
  try:
    values = [int(v) for v in encoded.split()]
  except ValueError as e:
    raise ValueError(f"EncodedPixels is not a list of integers ({e})") from e
  if len(values) % 2 or any(v < 0 for v in values):
    raise ValueError(f"EncodedPixels has {len(values)} numbers or negative "
                     "ones: expected pairs '<gap> <length>' or -1")
  position = 0
  for gap, length in zip(values[0::2], values[1::2]):
    position += gap
    if position + length > flat.size:
      raise ValueError(f"a run ends at pixel {position + length}, past the "
                       f"{height}x{width} image")
    flat[position:position + length] = 1
    position += length
  return flat.reshape(width, height).T


def read_binary_mask(path) -> np.ndarray:
  """A mask image (PNG of any bit depth, 0 = background) as uint8 [H, W]:
  1 wherever it is nonzero (0/1 and 0/255 masks read alike)."""
  return (xray_io.read_xray(path) > 0).astype(np.uint8)
