"""How long a run spends compiling, from JAX's own monitoring events.

Compiling is tracing, lowering to StableHLO and the XLA backend compile;
the last includes reading the persistent compilation cache
(JAX_COMPILATION_CACHE_DIR), whose hits are counted. The study reports the
share of each job's wall time spent compiling.
"""
import time
from typing import Dict

import jax

# jax._src.dispatch's JAXPR_TRACE_EVENT, JAXPR_TO_MLIR_MODULE_EVENT and
# BACKEND_COMPILE_EVENT.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"


class CompileClock:
  """Sums the compile time from creation on; a context manager that stops
  listening on exit."""

  def __init__(self):
    self._start = time.monotonic()
    self.compile_seconds = 0.0
    self.cache_hits = self.cache_misses = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)

  def _on_duration(self, event: str, duration_secs: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.compile_seconds += duration_secs

  def _on_event(self, event: str, **_) -> None:
    self.cache_hits += event == CACHE_HIT_EVENT
    self.cache_misses += event == CACHE_MISS_EVENT

  def report(self) -> Dict[str, float]:
    """Wall and compile seconds so far, and the cache hits and misses."""
    return {"wall_seconds": time.monotonic() - self._start,
            "compile_seconds": self.compile_seconds,
            "compile_cache_hits": self.cache_hits,
            "compile_cache_misses": self.cache_misses}

  def __enter__(self) -> "CompileClock":
    return self

  def __exit__(self, *exc_info) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_duration)
    jax.monitoring.unregister_event_listener(self._on_event)
