"""SwiGLU feed-forward (Llama / Transformer++): W_down(silu(x W_gate) ⊙ x W_up).

Axis legend: B batch, T tokens, D model width, F hidden width.
"""

from __future__ import annotations

import jax
from flax import nnx

from titans_jax.layers.basic import Linear


class SwiGLU(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Linear((dim, hidden), ("embed", "mlp"), "BTD,DF->BTF", dim, **kw)
    self.up = Linear((dim, hidden), ("embed", "mlp"), "BTD,DF->BTF", dim, **kw)
    self.down = Linear((hidden, dim), ("mlp", "embed"), "BTF,FD->BTD", hidden, **kw)

  @jax.named_scope("ffn")  # perf.profile groups ops by scope
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD))
