"""Our TFDS builders; importing this package registers them with TFDS.

Build one with:
  tfds build --imports=input_pipeline.datasets NAME --manual_dir=DIR
"""
from input_pipeline.datasets import fashion_mnist_local  # noqa: F401  (registers)
