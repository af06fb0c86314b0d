"""`NeuralMemory`: a thin flax.nnx module over the pure memory functions.

The slow parameters live in `self.params` as nnx.Param leaves in the pytree layout of
`titans_jax.memory.params`, each annotated with its logical axis names
(`params.logical_axes`); `__call__` unwraps them and calls `memory.apply`.

Sharding: the memory core is left untouched; around the pure call the memory state
(fast weights, gradient point, momentum: B×H×… and O×B×H×…) is constrained to
(batch, mem_heads, …), so with the default rules each device holds its batch rows and
its heads of the fast weights (`mesh.memory_heads=replicated` keeps heads whole).
Outside a `titans_jax.sharding.use_rules` context the constraints are no-ops.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
from flax import nnx

from titans_jax.memory import core
from titans_jax.memory import params as params_lib
from titans_jax.memory.config import MemoryConfig
from titans_jax.sharding import rules as sharding_rules


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def _annotated(value: jax.Array, names) -> nnx.Param:
  if names is None or len(names) != value.ndim:
    names = (None,) * value.ndim
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def constrain_state(state: dict, cfg: MemoryConfig) -> dict:
  """The memory state with its per-head tensors constrained to (batch, mem_heads, …).

  Only leaves whose shape matches the documented layout are touched, so a state
  layout change in the core degrades to "no constraint", never to a wrong one.
  """
  if sharding_rules.active_mesh() is None:
    return state
  H = cfg.heads

  def per_head(lead: int):
    def f(x):
      if x.ndim < lead + 2 or x.shape[lead + 1] != H:
        return x
      names = (None,) * lead + ("batch", "mem_heads") + (None,) * (x.ndim - lead - 2)
      return sharding_rules.constrain(x, names)

    return f

  state = dict(state)
  for key, lead in (("weights", 0), ("grad_point", 0), ("momentum", 1)):
    if isinstance(state.get(key), dict):
      state[key] = jax.tree.map(per_head(lead), state[key])
  return state


class NeuralMemory(nnx.Module):
  """Neural long-term memory layer (docs/spec.md §1) as an nnx module.

  Example:
    mem = NeuralMemory(MemoryConfig.paper(dim=64, heads=2), rngs=nnx.Rngs(0))
    y, state = mem(x)              # fresh memory
    y2, state = mem(x2, state)     # continue the stream
  """

  def __init__(self, cfg: MemoryConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    tree = params_lib.init(rngs.params(), cfg)
    names = params_lib.logical_axes(tree)
    self.params = nnx.data(jax.tree.map(_annotated, tree, names))

  def param_tree(self) -> dict:
    """The slow parameters as a plain pytree of arrays (the `memory.apply` layout)."""
    return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

  def init_state(self, batch_size: int) -> dict:
    return constrain_state(core.init_state(self.param_tree(), self.cfg, batch_size), self.cfg)

  def __call__(self, x: jax.Array, state: Optional[dict] = None):
    params = self.param_tree()
    pin = functools.partial(constrain_state, cfg=self.cfg)
    if state is not None:
      state = pin(state)
    # A fresh memory stays `None` (apply then knows it starts at position 0); the
    # state apply builds for it is pinned like a given one.
    y, new_state = core.apply(params, x, self.cfg, state, constrain_fresh_state=pin)
    # The output's layout is pinned too: left to propagation, XLA (jax 0.10.2) gave
    # wrong rows for MAC on a (2, 2, 2) mesh in the RMSNorm that follows (rows of two
    # batch shards exchanged); see docs/sharding.md.
    y = sharding_rules.constrain(y, sharding_rules.ACT_BTD)
    return y, constrain_state(new_state, self.cfg)
