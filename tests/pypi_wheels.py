"""Real files that ship inside PyPI wheels, fetched at test time.

A wheel is downloaded once into .cache/wheels/ (never committed) with
`pip download --no-deps`; its files are read from the zip, the package is
never installed or imported. Without a package index the test is skipped.
"""
import os
import subprocess
import sys

import pytest

CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache",
                     "wheels")


def path(package: str, version: str) -> str:
  """Path of the downloaded wheel of `package`==`version` (py3-none-any)."""
  name = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
  wheel = os.path.join(CACHE, name)
  if not os.path.exists(wheel):
    os.makedirs(CACHE, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         f"{package}=={version}", "-d", CACHE],
        capture_output=True, text=True)
    if result.returncode != 0 or not os.path.exists(wheel):
      pytest.skip(f"cannot download the {package} wheel: "
                  + result.stderr[-300:])
  return wheel
