"""The memory network M_W: R^d -> R^d whose parameters W are the fast weights.

Fast weights are a dict {"w0": d×h, ..., "w{L-1}": h×d, ["gamma": d]} for ONE head;
callers vmap over batch and heads. Axis legend: N tokens, d head width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from titans_jax.memory.config import MemoryConfig

LAYERNORM_EPS = 1e-5  # titans-pytorch's nn.LayerNorm(elementwise_affine=False) default


def activation_fn(name: str | None):
  """Activation by name. "gelu" is the exact (erf) GELU, as torch's F.gelu."""
  if name is None or name == "identity":
    return lambda x: x
  return {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
  }[name]


def init_fast_weights(key: jax.Array, cfg: MemoryConfig, dtype) -> dict[str, jax.Array]:
  """Initial fast weights W_0 for all heads: each matrix H×d_in×d_out, xavier-uniform
  (as titans-pytorch's MemoryMLP), gamma H×d zeros (LayerNorm scale is gamma + 1)."""
  shapes = cfg.fast_weight_shapes()
  weights = {}
  keys = jax.random.split(key, cfg.depth)
  for i in range(cfg.depth):
    fan_in, fan_out = shapes[f"w{i}"]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    weights[f"w{i}"] = jax.random.uniform(
      keys[i], (cfg.heads, fan_in, fan_out), dtype, -limit, limit
    )
  if cfg.residual_norm:
    weights["gamma"] = jnp.zeros((cfg.heads, cfg.head_dim), dtype)
  return weights


def layernorm_noaffine(x: jax.Array, eps: float = LAYERNORM_EPS) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def memory_forward(weights: dict[str, jax.Array], x_Nd: jax.Array, cfg: MemoryConfig) -> jax.Array:
  """M_W(x) for one head's fast weights; x has any leading axes and last axis d."""
  act = activation_fn(cfg.activation)
  h = x_Nd
  for i in range(cfg.depth):
    if i > 0:
      h = act(h)
    h = h @ weights[f"w{i}"]
  if cfg.residual_norm:
    gamma = weights["gamma"] + 1.0
    h = layernorm_noaffine(h) * gamma.reshape((1,) * (h.ndim - 1) + gamma.shape) + x_Nd
  return h


def chunk_loss(weights, keys_Cd, values_Cd, lr_C, cfg: MemoryConfig) -> jax.Array:
  """ℓ(W) = Σ_t θ_t · mean_d (M_W(k_t) − v_t)² over the tokens of one chunk."""
  pred = memory_forward(weights, keys_Cd, cfg)
  per_token = jnp.square(pred - values_Cd).mean(-1)
  return jnp.sum(per_token * lr_C)
