"""AdamW with linear warmup + cosine decay and global-norm clipping (the paper's recipe)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


@functools.lru_cache(maxsize=16)
def lr_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine to `lr * min_lr_ratio`."""
  t = train_cfg
  warmup = min(t.warmup_steps, t.steps // 2)  # a short run (--set train.steps=5) still decays
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=t.lr,
    warmup_steps=warmup,
    decay_steps=max(t.steps, warmup + 1),
    end_value=t.lr * t.min_lr_ratio,
  )


def _decay_mask(params):
  """Weight decay on matrices only (not biases, norm scales or other vectors)."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


@functools.lru_cache(maxsize=16)
def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """clip_by_global_norm (if grad_clip > 0) then AdamW on the warmup-cosine schedule.

  Cached per (frozen, hashable) TrainConfig so the jitted step built on it is reused.
  """
  t = train_cfg
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(
    optax.adamw(
      lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=_decay_mask
    )
  )
  return optax.chain(*parts)
