"""`NeuralMemory`: a thin flax.nnx module over the pure memory functions.

The slow parameters live in `self.params` as nnx.Param leaves in the pytree layout of
`titans_jax.memory.params`; `__call__` unwraps them and calls `memory.apply`.
"""
from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from titans_jax.memory import core, params as params_lib
from titans_jax.memory.config import MemoryConfig


def _is_variable(x):
    return isinstance(x, nnx.Variable)


class NeuralMemory(nnx.Module):
    """Neural long-term memory layer (SPEC §1) as an nnx module.

    Example:
      mem = NeuralMemory(MemoryConfig.paper(dim=64, heads=2), rngs=nnx.Rngs(0))
      y, state = mem(x)              # fresh memory
      y2, state = mem(x2, state)     # continue the stream
    """

    def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        tree = params_lib.init(rngs.params(), cfg)
        self.params = nnx.data(jax.tree.map(nnx.Param, tree))

    def param_tree(self) -> dict:
        """The slow parameters as a plain pytree of arrays (the `memory.apply` layout)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def init_state(self, batch_size: int) -> dict:
        return core.init_state(self.param_tree(), self.cfg, batch_size)

    def __call__(self, x: jax.Array, state: Optional[dict] = None):
        return core.apply(self.param_tree(), x, self.cfg, state)
