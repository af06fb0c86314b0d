"""Parameters with logical axis names, linear maps, embeddings and RMSNorm.

Every weight is an `nnx.Param` carrying `out_sharding` (logical axes: 'vocab', 'embed',
'mlp', 'heads', 'kv', 'persist', 'norm') for the sharding rules of a later issue; the
annotation is metadata only (`eager_sharding=False`), nothing is placed on a mesh here.

Axis legend: B batch, T tokens, D model width, F hidden width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def param(value: jax.Array, names: Sequence[str | None]) -> nnx.Param:
  """An nnx.Param annotated with logical axis names (metadata 'out_sharding'; not eagerly sharded)."""
  if len(names) != value.ndim:
    raise ValueError(f"{len(names)} axis names for a rank-{value.ndim} parameter")
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def normal_init(key, shape, fan_in: int, dtype) -> jax.Array:
  """Truncated-normal init with std 1/sqrt(fan_in) (variance scaling, fan-in)."""
  std = 1.0 / math.sqrt(fan_in)
  return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * std).astype(dtype)


class Linear(nnx.Module):
  """y = einsum(x, W) over the trailing input axes; W has shape in_shape + out_shape.

  `spec` is the einsum contraction, e.g. 'BTD,DHK->BTHK'.
  """

  def __init__(
    self,
    shape: Sequence[int],
    names: Sequence[str],
    spec: str,
    fan_in: int,
    *,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
    zero_init: bool = False,
  ):
    init = (
      jnp.zeros(tuple(shape), param_dtype)
      if zero_init
      else normal_init(rngs.params(), tuple(shape), fan_in, param_dtype)
    )
    self.kernel = param(init, names)
    self.spec = spec
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.einsum(self.spec, x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class Embed(nnx.Module):
  """Token embedding V×D; `attend` gives tied output logits."""

  def __init__(self, vocab: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.embedding = param(
      (jax.random.normal(rngs.params(), (vocab, dim), jnp.float32)).astype(param_dtype),
      ("vocab", "embed"),
    )
    self.dtype = dtype

  def __call__(self, tokens_BT: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)

  def attend(self, x_BTD: jax.Array) -> jax.Array:
    return jnp.einsum("BTD,VD->BTV", x_BTD, self.embedding[...].astype(x_BTD.dtype))


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float) -> jax.Array:
  """RMSNorm computed in fp32 (fp64 for fp64 x), returned in x's dtype."""
  f = jnp.promote_types(x.dtype, jnp.float32)
  x32 = x.astype(f)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(f).reshape((1,) * (y.ndim - 1) + scale.shape)
  return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale vector (init 1)."""

  def __init__(self, dim: int, *, param_dtype, eps: float = 1e-6, rngs: nnx.Rngs | None = None):
    del rngs
    self.scale = param(jnp.ones((dim,), param_dtype), ("norm",))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps)
