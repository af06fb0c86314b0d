"""Slow parameters of the memory layer (trained by the outer optimiser) and their init.

Layout (axis letters: D model width, H heads, d head width, K conv kernel, O momentum
orders, P fast-weight tensors). Every projection is stored input-first (x @ W), with
the head axis explicit so that the layer can be sharded over heads:

  W0               {name: H×...}    initial fast weights (one copy per head)
  store_norm       {"scale": D}     RMSNorm before k, v, θ and the chunk gates (pre_norm)
  retrieve_norm    {"scale": D}     RMSNorm before q and the output gate (pre_norm)
  q_proj/k_proj/v_proj   D×H×d
  q_conv/k_conv/v_conv   {"kernel": K×H×d, "bias": H×d}   (qkv_conv > 0)
  q_norm/k_norm    {"gamma": H×d}   per-head RMSNorm of q/k (qk_rmsnorm)
  lr               {"w": D×H, "b": H}        θ
  decay            {"w": D×H, "b": H}        α (forget)
  momentum         {"w": D×H×O, "b": H×O}    η per order (momentum)
  momentum_combine {"w": D×H×O', "b": H×O'}  (learned_momentum_combine)
  lr_modulation    {"w": D×H×P, "b": H×P}    (per_parameter_lr_modulation)
  attn_pool        {"w": D×D, "b": D}        (attn_pool_chunks)
  post_norm        {"gamma": H×d}            (post_rmsnorm)
  gate             {"w": D×H}                per-head retrieval gate (has_gate)
  out_proj         H×d×D                     (has_out_proj)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.networks import init_fast_weights


def _uniform(key, shape, fan_in, dtype):
  # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _gate(key, cfg: MemoryConfig, out_shape: tuple[int, ...], init_bias, dtype):
  """A D -> out_shape linear with bias; zero weight + constant bias if init_bias set."""
  kw, kb = jax.random.split(key)
  if init_bias is not None:
    return {
      "w": jnp.zeros((cfg.dim,) + out_shape, dtype),
      "b": jnp.full(out_shape, init_bias, dtype),
    }
  return {
    "w": _uniform(kw, (cfg.dim,) + out_shape, cfg.dim, dtype),
    "b": _uniform(kb, out_shape, cfg.dim, dtype),
  }


def init(key: jax.Array, cfg: MemoryConfig) -> dict:
  """Initialise the slow parameters of one memory layer (see the module docstring)."""
  dtype = jnp.dtype(cfg.param_dtype)
  D, H, d = cfg.dim, cfg.heads, cfg.head_dim
  keys = iter(jax.random.split(key, 16))
  params: dict = {"W0": init_fast_weights(next(keys), cfg, dtype)}
  if cfg.pre_norm:
    params["store_norm"] = {"scale": jnp.ones((D,), dtype)}
    params["retrieve_norm"] = {"scale": jnp.ones((D,), dtype)}
  for name in ("q", "k", "v"):
    params[f"{name}_proj"] = _uniform(next(keys), (D, H, d), D, dtype)
  if cfg.qkv_conv:
    for name in ("q", "k", "v"):
      kk, kb = jax.random.split(next(keys))
      params[f"{name}_conv"] = {
        "kernel": _uniform(kk, (cfg.qkv_conv, H, d), cfg.qkv_conv, dtype),
        "bias": _uniform(kb, (H, d), cfg.qkv_conv, dtype),
      }
  if cfg.qk_rmsnorm:
    params["q_norm"] = {"gamma": jnp.zeros((H, d), dtype)}
    params["k_norm"] = {"gamma": jnp.zeros((H, d), dtype)}
  params["lr"] = _gate(next(keys), cfg, (H,), cfg.init_lr_bias, dtype)
  if cfg.forget:
    params["decay"] = _gate(next(keys), cfg, (H,), cfg.init_decay_bias, dtype)
  else:
    next(keys)
  if cfg.momentum:
    params["momentum"] = _gate(
      next(keys), cfg, (H, cfg.momentum_order), cfg.init_momentum_bias, dtype
    )
  else:
    next(keys)
  if cfg.learned_momentum_combine:
    params["momentum_combine"] = _gate(next(keys), cfg, (H, cfg.num_combine_weights), None, dtype)
  if cfg.per_parameter_lr_modulation:
    params["lr_modulation"] = _gate(next(keys), cfg, (H, len(cfg.fast_weight_names())), None, dtype)
  if cfg.attn_pool_chunks:
    # titans-pytorch starts the attention pool at zero logits, i.e. at the mean.
    params["attn_pool"] = {"w": jnp.zeros((D, D), dtype), "b": jnp.zeros((D,), dtype)}
  if cfg.post_rmsnorm:
    params["post_norm"] = {"gamma": jnp.zeros((H, d), dtype)}
  if cfg.has_gate:
    params["gate"] = {"w": _uniform(next(keys), (D, H), D, dtype)}
  if cfg.has_out_proj:
    params["out_proj"] = _uniform(next(keys), (H, d, D), H * d, dtype)
  return params


# Logical axis names of each slow parameter (rules: titans_jax.sharding.RULES). The
# memory's head axis is `mem_heads`, so one rule places W0, the per-head projections and
# (through the same name in `NeuralMemory`) the fast weights and momentum together.
_AXES_BY_KEY = {
  "store_norm": {"scale": ("norm",)},
  "retrieve_norm": {"scale": ("norm",)},
  "q_proj": ("embed", "mem_heads", None),
  "k_proj": ("embed", "mem_heads", None),
  "v_proj": ("embed", "mem_heads", None),
  "q_norm": {"gamma": ("mem_heads", None)},
  "k_norm": {"gamma": ("mem_heads", None)},
  "post_norm": {"gamma": ("mem_heads", None)},
  "attn_pool": {"w": ("embed", None), "b": (None,)},
  "gate": {"w": ("embed", "mem_heads")},
  "out_proj": ("mem_heads", None, "embed"),
}
_CONV = {"kernel": ("conv", "mem_heads", None), "bias": ("mem_heads", None)}
_HEAD_GATES = ("lr", "decay", "momentum", "momentum_combine", "lr_modulation")


def logical_axes(params: dict) -> dict:
  """The logical axis names of every leaf of `params` (same tree; leaves: tuples).

  Works on arrays or ShapeDtypeStructs; W0 leaves are H×... (heads first, the rest of
  each head's fast weight whole).
  """
  out: dict = {}
  for key, value in params.items():
    if key == "W0":
      out[key] = {n: ("mem_heads",) + (None,) * (w.ndim - 1) for n, w in value.items()}
    elif key in ("q_conv", "k_conv", "v_conv"):
      out[key] = dict(_CONV)
    elif key in _HEAD_GATES:
      out[key] = {
        "w": ("embed", "mem_heads") + (None,) * (value["w"].ndim - 2),
        "b": ("mem_heads",) + (None,) * (value["b"].ndim - 1),
      }
    elif key in _AXES_BY_KEY:
      out[key] = _AXES_BY_KEY[key]
    else:  # a parameter this table does not know yet: replicated, never wrong
      out[key] = jax.tree.map(lambda x: (None,) * x.ndim, value)
  return out
