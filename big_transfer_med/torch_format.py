"""Reads and writes tensors in PyTorch's `torch.save` format without PyTorch,
never unpickling anything but tensors.

A torch.save file (PyTorch >= 1.6) is a zip: `<archive>/data.pkl` pickles the
object tree and each tensor's storage is the raw little-endian bytes of
`<archive>/data/<key>`. Like torch.load(weights_only=True), the unpickler only
resolves an allow-list of globals (tensor rebuild functions, storage types,
OrderedDict); anything else fails with an error naming it. This keeps a
~2 GB PyTorch install out of a JAX codebase that only needs the weights.

`save` writes what torch.save writes for a dict of float32 tensors (and
plain numbers/strings): data.pkl (protocol 2) whose tensors are
torch._utils._rebuild_tensor_v2(persistent storage ('storage',
torch.FloatStorage, key, 'cpu', numel), offset, size, stride, requires_grad,
OrderedDict()), raw little-endian storages under data/<key>, version and
byteorder; torch.load(weights_only=True) reads it. The committed
tests/testdata/torch/real_checkpoint.pth.tar, written by real PyTorch,
checks the reader against the genuine article.
"""
import collections
import io
import pickle
import zipfile
from typing import Any, Dict

import ml_dtypes
import numpy as np

from big_transfer_med import atomic_files
from input_pipeline import errors

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
  """A storage's dtype marker, as named in the pickle (torch.FloatStorage)."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *unused_args):
  return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_ALLOWED.update({("torch", name): _Storage(dtype)
                 for name, dtype in _STORAGE_DTYPES.items()})


class _WeightsUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages = {}

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise errors.CheckpointMismatchError(
          f"{self._path}: refusing to unpickle {module}.{name}; only tensors "
          "and dicts of tensors are read (as torch.load(weights_only=True)). "
          "Re-save the state dict alone: torch.save(model.state_dict(), PATH).")
    return _ALLOWED[(module, name)]

  def persistent_load(self, pid):
    kind, storage_type, key, unused_location, unused_numel = pid
    if kind != "storage" or not isinstance(storage_type, _Storage):
      raise errors.CheckpointMismatchError(
          f"{self._path}: unsupported storage record {pid!r}.")
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      self._storages[key] = np.frombuffer(
          raw, storage_type.dtype.newbyteorder("<"))
    return self._storages[key]


def load(path: str) -> Any:
  """Returns the object tree of a torch.save file, tensors as NumPy arrays."""
  if not zipfile.is_zipfile(path):
    raise errors.CheckpointMismatchError(
        f"{path} is not a zip-format torch.save file (PyTorch >= 1.6): it is "
        "truncated or not a checkpoint (copy it again), or was written by an "
        "old PyTorch (re-save it: torch.save(torch.load(PATH), NEW_PATH)).")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise errors.CheckpointMismatchError(
          f"{path}: expected one */data.pkl in the archive, found {pickles}.")
    prefix = pickles[0][:-len("/data.pkl")]
    byteorder = f"{prefix}/byteorder"
    if (byteorder in archive.namelist() and
        archive.read(byteorder).strip() != b"little"):
      raise errors.CheckpointMismatchError(f"{path}: big-endian tensors.")
    with archive.open(pickles[0]) as f:
      return _WeightsUnpickler(f, archive, prefix, path).load()


# Where training scripts put the model's state dict in a checkpoint dict:
# self-supervised releases (MoCo, PCL, ...: 'state_dict'), ours and the
# seed paper's ('model'), others ('network').
STATE_DICT_KEYS = ("state_dict", "model", "network")


def _is_state_dict(tree) -> bool:
  return isinstance(tree, dict) and bool(tree) and all(
      isinstance(v, np.ndarray) for v in tree.values())


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The {name: array} state dict in `path`: the file's dict itself, or the
  one under the first of STATE_DICT_KEYS that holds one (a training
  checkpoint {'state_dict': ..., 'optimizer': ..., 'epoch': ...})."""
  tree = load(path)
  if not _is_state_dict(tree) and isinstance(tree, dict):
    tree = next((tree[k] for k in STATE_DICT_KEYS
                 if _is_state_dict(tree.get(k))), tree)
  if not _is_state_dict(tree):
    raise errors.CheckpointMismatchError(
        f"{path}: expected a state dict of tensors (or one under one of "
        f"{STATE_DICT_KEYS}); found {type(tree).__name__} with keys "
        f"{list(tree)[:5] if isinstance(tree, dict) else '-'}.")
  return dict(tree)


class _GlobalRef:
  """Pickled as a reference to module.name (which need not be importable)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce functions be callable.
    raise NotImplementedError


class _StorageRecord:

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _TensorRecord:

  def __init__(self, storage: _StorageRecord, shape):
    self.storage, self.shape = storage, tuple(shape)

  def __reduce__(self):
    strides = tuple(int(np.prod(self.shape[i + 1:]))
                    for i in range(len(self.shape)))
    return (_GlobalRef("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, 0, self.shape, strides, False,
             collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def save_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[_GlobalRef] = save_ref

  def persistent_id(self, obj):
    if isinstance(obj, _StorageRecord):
      return ("storage", _GlobalRef("torch", "FloatStorage"), obj.key, "cpu",
              obj.array.size)
    return None


def save(tree, path: str, archive: str = "archive") -> None:
  """Saves a (nested) dict whose array leaves become float32 tensors, as
  torch.save does; atomically (an existing file is replaced only by a
  complete one)."""
  storages = []

  def convert(node):
    if isinstance(node, dict):
      return collections.OrderedDict((k, convert(v)) for k, v in node.items())
    if isinstance(node, np.ndarray):
      storage = _StorageRecord(str(len(storages)),
                         np.ascontiguousarray(node, np.float32))
      storages.append(storage)
      return _TensorRecord(storage, node.shape)
    return node

  buffer = io.BytesIO()
  _TorchPickler(buffer, protocol=2).dump(convert(tree))
  with atomic_files.open_atomically(path, "wb") as f, zipfile.ZipFile(
      f, "w") as z:
    z.writestr(f"{archive}/data.pkl", buffer.getvalue())
    z.writestr(f"{archive}/byteorder", "little")
    for storage in storages:
      z.writestr(f"{archive}/data/{storage.key}",
                 storage.array.astype("<f4").tobytes())
    z.writestr(f"{archive}/version", "3\n")
