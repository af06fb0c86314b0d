"""The memory's numeric pieces, shared by both forms of the block step (docs/memory.md):
norms, the causal conv, the soft clamp, Newton–Schulz, and the momentum / forgetting
recurrences — written once, run on weight-sized tensors by the primal form
(`primal.block_step`) and on coefficient vectors by the dual form (`dual.dual_block_step`).

Axis legend: B batch, H heads, K chunks per block, O momentum orders; `...` the trailing
axes of what a recurrence runs on (a fast-weight tensor, or the dual's P coefficients).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from titans_jax.memory.config import MemoryConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
L2_EPS = 1e-12  # torch.nn.functional.normalize


# ------------------------------------------------------------------- small pieces ---


def lead(t, ndim):
  """Add leading axes so `t` broadcasts against a rank-`ndim` array explicitly."""
  return t.reshape((1,) * (ndim - t.ndim) + t.shape)


def trail(t, ndim):
  """Add trailing axes so `t` broadcasts against a rank-`ndim` array explicitly."""
  return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def rmsnorm(x, scale=None):
  """torch.nn.RMSNorm with eps=None: eps = finfo(dtype).eps."""
  eps = jnp.finfo(x.dtype).eps
  y = x * lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
  return y if scale is None else y * lead(scale, y.ndim)


def l2normalize(x):
  norm = jnp.sqrt(jnp.square(x).sum(-1, keepdims=True))
  return x / jnp.maximum(norm, L2_EPS)


def causal_depthwise_conv(z_BSHd, conv):
  """y_t = bias + Σ_j kernel[j] · z_{t+j} over a window whose last entry is token t.

  z holds K−1 context tokens followed by the T new ones; returns the T outputs."""
  kernel = conv["kernel"]
  K = kernel.shape[0]
  T = z_BSHd.shape[1] - (K - 1)
  out = jnp.broadcast_to(conv["bias"].astype(z_BSHd.dtype), z_BSHd[:, :T].shape)
  for j in range(K):
    out = out + z_BSHd[:, j : j + T] * kernel[j].astype(z_BSHd.dtype)[None, None]
  return out


def _softclamp(sq_norm, max_norm):
  """(‖g‖ > 0, (tanh(‖g‖/(m/2))·m/2 + m/2) / ‖g‖) from ‖g‖²; the factor is finite (and
  unused) where g = 0: the sqrt is of a masked 1, not of 0, so its gradient stays finite."""
  nonzero = sq_norm > 0
  norm = jnp.sqrt(jnp.where(nonzero, sq_norm, 1.0))
  half = max_norm / 2.0
  return nonzero, (jnp.tanh(norm / half) * half + half) / norm


def softclamp_scale(sq_norm, max_norm):
  """titans-pytorch's soft clamp as the factor it multiplies a gradient g by, from ‖g‖²
  (the dual form's, from Gram matrices of g's factors); 0 for a zero gradient (where torch
  gives NaN)."""
  nonzero, factor = _softclamp(sq_norm, max_norm)
  return jnp.where(nonzero, factor, 0.0)


def clip_scale(sq_norm, max_norm):
  """The hard clip min(1, m / ‖u‖) as the factor a surprise u is multiplied by, from
  ‖u‖²: exactly 1 wherever ‖u‖ ≤ m. The rsqrt only ever sees ‖u‖² > m², so value and
  gradient stay finite at u = 0."""
  big = sq_norm > max_norm * max_norm
  return jnp.where(big, max_norm * lax.rsqrt(jnp.where(big, sq_norm, 1.0)), 1.0)


def clip_surprise_norm(g, max_norm):
  """`clip_scale` applied to each chunk's g (B×H×K×param, norm over the param axes)."""
  return g * clip_scale(jnp.square(g).sum(tuple(range(3, g.ndim)), keepdims=True), max_norm)


def softclamp_grad_norm(g, max_norm):
  """titans-pytorch's soft clamp of each chunk's gradient g (B×H×K×param, norm over the
  param axes): g · (tanh(‖g‖/(m/2))·m/2 + m/2) / ‖g‖. (A zero gradient, where torch would
  give NaN, stays zero.)"""
  nonzero, factor = _softclamp(jnp.square(g).sum(tuple(range(3, g.ndim)), keepdims=True), max_norm)
  return jnp.where(nonzero, g * factor, 0.0)


def newton_schulz(g):
  """Newton–Schulz (5 steps) orthogonalisation of the last two axes (a matrix update)."""
  transpose = g.shape[-2] > g.shape[-1]
  if transpose:
    g = jnp.swapaxes(g, -1, -2)
  norm = jnp.sqrt(jnp.square(g).sum((-1, -2), keepdims=True))
  g = g / jnp.maximum(norm, NS_EPS)
  a, b, c = NS_COEFFS
  for _ in range(NS_STEPS):
    A = g @ jnp.swapaxes(g, -1, -2)
    Bm = b * A + c * (A @ A)
    g = a * g + Bm @ g
  return jnp.swapaxes(g, -1, -2) if transpose else g


# ------------------------------------------------------------------- recurrences ---


def linear_recurrence(a_BHK, x_BHKp, h0_BHp, impl: str = "associative"):
  """h_j = a_j · h_{j−1} + x_j along axis 2 (K), with h_{−1} = h0.

  impl="associative": `jax.lax.associative_scan` with the operator
    (a₁, x₁)∘(a₂, x₂) = (a₁a₂, a₂x₁ + x₂)  — O(K log K) elementwise passes.
  impl="dense": h = Λ x + (Π a) h0 with Λ_ji = Π_{i<l≤j} a_l, one K×K matmul per
    (batch, head): the same sums, computed with far less memory traffic on CPU.
  """
  if impl == "dense":
    return _dense_recurrence(a_BHK, x_BHKp, h0_BHp)
  a = trail(a_BHK, x_BHKp.ndim).astype(x_BHKp.dtype)
  x = x_BHKp.at[:, :, 0].add(a[:, :, 0] * h0_BHp)

  def combine(left, right):
    a1, x1 = left
    a2, x2 = right
    return a1 * a2, a2 * x1 + x2

  _, h = lax.associative_scan(combine, (a, x), axis=2)
  return h


def decay_matrix(a_BHK):
  """Λ_ji = Π_{i<l≤j} a_l (0 above the diagonal), from segment sums of log a.

  Sums are built without subtraction (Mamba-2's segsum) so a gate of exactly 0 gives
  0, not NaN; log is clamped to keep its gradient finite there."""
  K = a_BHK.shape[-1]
  tiny = jnp.finfo(a_BHK.dtype).tiny
  log_a = jnp.log(jnp.maximum(a_BHK, tiny))
  rows = jnp.broadcast_to(log_a[..., :, None], a_BHK.shape + (K,))  # [j, i] = log a_j
  strictly_lower = jnp.tril(jnp.ones((K, K), bool), -1)
  seg = jnp.cumsum(jnp.where(strictly_lower, rows, 0.0), axis=-2)  # Σ_{i<l≤j} log a_l
  return jnp.where(jnp.tril(jnp.ones((K, K), bool)), jnp.exp(seg), 0.0)


def _dense_recurrence(a_BHK, x_BHKp, h0_BHp):
  dtype = x_BHKp.dtype
  lam = decay_matrix(a_BHK.astype(dtype))  # B×H×K×K
  cum = jnp.cumprod(a_BHK.astype(dtype), axis=-1)  # Π_{l≤j} a_l
  flat = x_BHKp.reshape(x_BHKp.shape[:3] + (-1,))
  h = jnp.einsum("bhji,bhip->bhjp", lam, flat)
  h = h + cum[..., None] * h0_BHp.reshape(h0_BHp.shape[:2] + (1, -1))
  return h.reshape(x_BHKp.shape)


def momentum_recurrence(cfg: MemoryConfig, block, surprise_BHK, momentum_start):
  """Momentum over a block's K chunks: S^o_j = η^o_j S^o_{j−1} + S^{o−1}_j (S^{−1} = u,
  the surprise), then the update the weights take — the last order, or the learned mix
  of the orders (and u) when `learned_momentum_combine`.

  `surprise_BHK` (B×H×K×…) is masked here: a chunk that is not valid enters as the
  identity (η = 1, x = 0). `momentum_start[o]` is S^o at the block start (B×H×…).
  Returns (update B×H×K×…, [S^o after the block's last chunk, per order]); without
  momentum, (the masked surprise, [])."""
  valid_b = block["valid"][None, None, :]
  mask = trail(valid_b, surprise_BHK.ndim)
  surprise = jnp.where(mask, surprise_BHK, 0.0)
  if not cfg.momentum:
    return surprise, []
  orders, s = [], surprise
  for o in range(cfg.momentum_order):
    eta = jnp.where(valid_b, block["eta"][..., o], 1.0)
    s = linear_recurrence(eta, jnp.where(mask, s, 0.0), momentum_start[o], cfg.recurrence)
    orders.append(s)
  ends = [s_o[:, :, -1] for s_o in orders]
  if not cfg.learned_momentum_combine:
    return orders[-1], ends
  stack = ([surprise] if cfg.learned_combine_include_zeroth else []) + orders
  comb = block["combine"]  # B×H×K×O'
  update = sum(trail(comb[..., j], s_j.ndim) * s_j for j, s_j in enumerate(stack))
  return update, ends


def forgetting_recurrence(cfg: MemoryConfig, block, update_BHK, weights_start):
  """The weights after each of a block's K chunks: W_j = (1 − α_j) W_{j−1} + update_j
  (α = 0 without `forget`), from W_start (B×H×…); invalid chunks are the identity.
  Returns B×H×K×…."""
  valid_b = block["valid"][None, None, :]
  mask = trail(valid_b, update_BHK.ndim)
  if cfg.forget:
    decay = 1.0 - block["alpha"]
  else:
    decay = jnp.ones(update_BHK.shape[:3], update_BHK.dtype)
  decay = jnp.where(valid_b, decay, 1.0)
  return linear_recurrence(decay, jnp.where(mask, update_BHK, 0.0), weights_start, cfg.recurrence)
