"""The compile clock counts what JAX compiles while it runs, and only that."""
import jax
import jax.numpy as jnp
import numpy as np

from big_transfer_med import compile_clock


def test_counts_compilation_once_per_executable_and_stops_on_exit():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
  # A constant of its own: no earlier test compiled this program.
  f = jax.jit(lambda a: jnp.tanh(a @ a.T) * 1.2345678)
  with compile_clock.CompileClock() as clock:
    assert clock.report()["compile_seconds"] == 0.0
    f(x).block_until_ready()
    first = clock.report()
    assert 0 < first["compile_seconds"] < first["wall_seconds"]
    f(x).block_until_ready()  # Already compiled: nothing more.
    assert clock.report()["compile_seconds"] == first["compile_seconds"]
  jax.jit(lambda a: a * 7.654321)(x).block_until_ready()  # After exit.
  assert clock.compile_seconds == first["compile_seconds"]
