"""Rotary position embedding (rotate-half / NeoX layout), computed in fp32 (fp64 for fp64).

Axis legend: B batch, T tokens, H heads, K head width (even).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(
  positions_T: jax.Array, head_dim: int, base: float, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
  """cos and sin of shape T×(K/2) for integer positions."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head width, got {head_dim}")
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
  ang = positions_T.astype(dtype)[:, None] * inv_freq[None, :]
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_BTHK: jax.Array, positions_T: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotate pairs (x_i, x_{i+K/2}) by angle pos · base^(−2i/K)."""
  f = jnp.promote_types(x_BTHK.dtype, jnp.float32)
  cos, sin = rope_angles(positions_T, x_BTHK.shape[-1], base, f)
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  x = x_BTHK.astype(f)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTHK.dtype)
