"""titans_jax: Titans (Behrouz, Zhong, Mirrokni, 2025) in JAX / Flax NNX."""

from titans_jax import memory
from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.module import NeuralMemory

__all__ = ["memory", "MemoryConfig", "NeuralMemory"]
__version__ = "0.1.0"
