"""Writes NumPy arrays in the torch.save zip layout, without PyTorch (tests only).

Mirrors what torch.save writes for a dict of float32 tensors: <name>/data.pkl
(protocol 2) whose tensors are torch._utils._rebuild_tensor_v2(persistent
storage ('storage', torch.FloatStorage, key, 'cpu', numel), offset, size,
stride, requires_grad, OrderedDict()), the raw little-endian storages under
<name>/data/<key>, and <name>/version and <name>/byteorder. The committed
file testdata/torch/real_checkpoint.pth.tar, written by real PyTorch, checks
the reader against the genuine article.
"""
import collections
import io
import pickle
import zipfile

import numpy as np


class _Global:
  """Pickled as a reference to module.name (which need not be importable)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce functions be callable.
    raise NotImplementedError


class _Storage:

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Tensor:

  def __init__(self, storage: _Storage, shape):
    self.storage, self.shape = storage, tuple(shape)

  def __reduce__(self):
    strides = tuple(int(np.prod(self.shape[i + 1:]))
                    for i in range(len(self.shape)))
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, 0, self.shape, strides, False,
             collections.OrderedDict()))


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def save_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[_Global] = save_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu",
              obj.array.size)
    return None


def save(tree, path: str, archive: str = "archive") -> None:
  """Saves a (nested) dict whose leaves are float32 arrays like torch.save."""
  storages = []

  def convert(node):
    if isinstance(node, dict):
      return collections.OrderedDict((k, convert(v)) for k, v in node.items())
    if isinstance(node, np.ndarray):
      storage = _Storage(str(len(storages)),
                         np.ascontiguousarray(node, np.float32))
      storages.append(storage)
      return _Tensor(storage, node.shape)
    return node

  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(convert(tree))
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{archive}/data.pkl", buffer.getvalue())
    z.writestr(f"{archive}/byteorder", "little")
    for storage in storages:
      z.writestr(f"{archive}/data/{storage.key}",
                 storage.array.astype("<f4").tobytes())
    z.writestr(f"{archive}/version", "3\n")
