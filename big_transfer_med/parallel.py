"""Data parallelism, in one place: the device axis, per-device functions,
copies to and from the devices, and gathers across hosts.

Everything else calls these, so a `jit` + sharding path could replace `pmap`
here alone. Host arrays of a batch are [local devices, per device, ...].
"""
import functools
import itertools
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

AXIS = "batch"  # The device axis of per-device functions.


def per_device(fn: Callable, donate_argnums: Sequence[int] = (),
               devices=None) -> Callable:
  """`fn` run on every local device over the leading axis of its arguments;
  inside it, `sum_over_devices` / `mean_over_devices` reduce over every device of every host."""
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=tuple(donate_argnums),
                  devices=devices)


@functools.lru_cache(maxsize=32)
def per_device_with(fn: Callable, donate_argnums: Sequence[int] = (),
                    **settings) -> Callable:
  """`per_device(functools.partial(fn, **settings))`, built once per distinct
  (fn, settings): runs in one process with equal settings (a study run with
  --in_process) reuse its traced and compiled executables. The settings must
  be hashable and compare by value (Flax modules do)."""
  return per_device(functools.partial(fn, **settings), tuple(donate_argnums))


def sum_over_devices(x):
  """Sum over every device (inside a `per_device` function)."""
  return jax.lax.psum(x, AXIS)


def mean_over_devices(x):
  """Mean over every device (inside a `per_device` function)."""
  return jax.lax.pmean(x, AXIS)


# One executable per shape, not one per call.
_as_per_device_output = per_device(lambda x: x)


def replicate(tree):
  """Copies `tree` to every local device, laid out as the outputs of a
  `per_device` function are, so such a function that takes and returns it
  is compiled once (not again at its second call)."""
  return _as_per_device_output(jax_utils.replicate(tree))


def to_devices(batch):
  """A host batch [local devices, ...] -> one shard per device, laid out as
  `per_device` outputs are."""
  return _as_per_device_output(batch)


def unreplicate(tree):
  """The first device's copy of a replicated tree, on the host (without a
  device dispatch per tensor, unlike indexing)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def prefetch(batches: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Host batches [n, ...] copied to the first n local devices (all of
  them, for a pipeline built for this host), `size` ahead of their use."""
  first = next(batches, None)
  if first is None:
    return iter(())
  devices = jax.local_devices()[:jax.tree.leaves(first)[0].shape[0]]
  return jax_utils.prefetch_to_device(itertools.chain([first], batches), size,
                                      devices)


def gather_batches(per_batch: Sequence[Any]):
  """Per-device outputs of consecutive batches (trees with leaves [devices,
  per device, ...]) -> host numpy arrays of every host, in the global order
  of the examples [examples, ...]: one transfer and one gather in all."""
  # [batches, devices, per device, ...]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(per_batch))
  if jax.process_count() > 1:
    # [hosts, batches, devices, ...] -> [batches, hosts, devices, ...]:
    # every global batch is the hosts' slices in host order.
    stacked = jax.tree.map(lambda x: np.swapaxes(x, 0, 1),
                           multihost_utils.process_allgather(stacked))
  leading = 4 if jax.process_count() > 1 else 3
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[leading:]), stacked)


def host_layout() -> dict:
  """This process's place among the hosts and its device count, as the
  input pipeline takes them."""
  return {"host_id": jax.process_index(), "num_hosts": jax.process_count(),
          "num_local_devices": jax.local_device_count()}
