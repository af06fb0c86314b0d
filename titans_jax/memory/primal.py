"""The primal form of one commit-block step (`impl="primal"`, docs/memory.md §2): one
gradient tensor per chunk, the recurrences on weight-sized tensors, and retrieval from
each chunk group's own materialised weights. The dual form (`dual.py`) computes the same
without per-chunk weights; both run the recurrences and the soft clamp of `ops`.

Axis legend: B batch, H heads, K chunks per block, C chunk size, d head width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.networks import chunk_loss, memory_forward
from titans_jax.memory.ops import (
  clip_surprise_norm,
  forgetting_recurrence,
  momentum_recurrence,
  newton_schulz,
  softclamp_grad_norm,
  trail,
)


def block_step(cfg: MemoryConfig, carry, block):
  """One block of K chunks: gradients at W̄, scans, retrieval. See module docstring."""
  weights, momentum, grad_point = carry
  inner = jnp.dtype(cfg.inner_dtype)

  # One gradient per chunk, all at the block's gradient point W̄ (vmap over chunks of grad).
  def per_head(wbar, k_KCd, v_KCd, lr_KC):
    loss_grad = jax.grad(functools.partial(chunk_loss, cfg=cfg))
    return jax.vmap(loss_grad, in_axes=(None, 0, 0, 0))(
      wbar, k_KCd.astype(inner), v_KCd.astype(inner), lr_KC
    )

  grads = jax.vmap(jax.vmap(per_head))(grad_point, block["keys"], block["values"], block["lr"])

  new_weights, new_momentum, lagged = {}, {}, {}
  for i, name in enumerate(cfg.fast_weight_names()):
    g = grads[name]  # B×H×K×param
    if cfg.max_grad_norm is not None:
      g = softclamp_grad_norm(g, cfg.max_grad_norm)
    if cfg.per_parameter_lr_modulation:
      g = g * trail(block["lr_mod"][..., i], g.ndim)  # B×H×K
    if cfg.max_surprise_norm is not None:
      g = clip_surprise_norm(g, cfg.max_surprise_norm)
    update, momentum_ends = momentum_recurrence(cfg, block, -g, momentum.get(name))
    if momentum_ends:
      new_momentum[name] = jnp.stack(momentum_ends)
    if cfg.spectral_norm_surprises and update.ndim >= 5:
      mask = trail(block["valid"][None, None, :], update.ndim)
      update = jnp.where(mask, newton_schulz(update), 0.0)
    w_seq = forgetting_recurrence(cfg, block, update, weights[name])
    new_weights[name] = w_seq[:, :, -1]
    # Retrieval group j of this block reads the weights after chunk j−1.
    lagged[name] = jnp.concatenate([weights[name][:, :, None], w_seq[:, :, :-1]], axis=2)

  retrieve = jax.vmap(jax.vmap(jax.vmap(functools.partial(memory_forward, cfg=cfg))))
  y_BHKCd = retrieve(lagged, block["queries"].astype(inner))
  commit = block["commit"]
  new_grad_point = {n: jnp.where(commit, new_weights[n], grad_point[n]) for n in grad_point}
  return (new_weights, new_momentum, new_grad_point), y_BHKCd
