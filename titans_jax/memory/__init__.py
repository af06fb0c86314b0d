"""Neural long-term memory (Titans §3): config, slow-parameter init, state, apply."""

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.core import apply, init_state, retrieve
from titans_jax.memory.diagnostics import diagnostics
from titans_jax.memory.params import init

__all__ = ["MemoryConfig", "apply", "diagnostics", "init", "init_state", "retrieve"]
