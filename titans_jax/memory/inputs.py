"""The memory's input side, shared by `apply`, `retrieve` and `diagnostics`: the input
checks, the projections to q, k, v and θ (with the causal conv and the q/k norms), and
the per-chunk gates α, η, the momentum mix and the lr modulation (docs/spec.md §1).

Axis legend: B batch, T tokens, D model width, H heads, d head width, G chunks,
C chunk size, O momentum orders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.networks import activation_fn
from titans_jax.memory.ops import causal_depthwise_conv, l2normalize, lead, rmsnorm


def check_input(x, cfg: MemoryConfig, state):
  if x.ndim != 3:
    raise ValueError(f"memory input must be B×T×D (rank 3), got shape {x.shape}")
  if x.shape[-1] != cfg.dim:
    raise ValueError(f"memory input width {x.shape[-1]} != MemoryConfig.dim {cfg.dim}")
  if x.shape[1] < 1:
    raise ValueError("memory input has no tokens (T = 0)")
  if state is not None:
    sb = state["pending"]["x"].shape[0]
    if sb != x.shape[0]:
      raise ValueError(f"state batch size {sb} != input batch size {x.shape[0]}")
    if state["pending"]["x"].shape[1] != cfg.chunk_size:
      raise ValueError(
        "state was built for chunk_size "
        f"{state['pending']['x'].shape[1]}, config has {cfg.chunk_size}"
      )


def project(params, x_BTD, conv_state, cfg: MemoryConfig):
  """q (from the retrieve-normed input), k, v, θ (from the store-normed input).

  `conv_state` is the causal conv's context (B×(K−1)×3×H×d); None means zeros."""
  xs = rmsnorm(x_BTD, params["store_norm"]["scale"].astype(x_BTD.dtype)) if cfg.pre_norm else x_BTD
  xr = (
    rmsnorm(x_BTD, params["retrieve_norm"]["scale"].astype(x_BTD.dtype)) if cfg.pre_norm else x_BTD
  )
  proj = {
    "q": jnp.einsum("btD,Dhd->bthd", xr, params["q_proj"].astype(x_BTD.dtype)),
    "k": jnp.einsum("btD,Dhd->bthd", xs, params["k_proj"].astype(x_BTD.dtype)),
    "v": jnp.einsum("btD,Dhd->bthd", xs, params["v_proj"].astype(x_BTD.dtype)),
  }
  new_conv = None
  if cfg.qkv_conv:
    K = cfg.qkv_conv
    if conv_state is None and K > 1:  # a fresh stream: zero context
      conv_state = jnp.zeros(x_BTD.shape[:1] + (K - 1, 3) + proj["q"].shape[2:], x_BTD.dtype)
    for i, name in enumerate(("q", "k", "v")):
      ctx = conv_state[:, :, i] if K > 1 else proj[name][:, :0]
      z = jnp.concatenate([ctx.astype(proj[name].dtype), proj[name]], axis=1)
      proj[name] = causal_depthwise_conv(z, params[f"{name}_conv"])
      if K > 1:
        tail = z[:, -(K - 1) :]
        new_conv = (
          tail[:, :, None]
          if new_conv is None
          else jnp.concatenate([new_conv, tail[:, :, None]], axis=2)
        )
  act = activation_fn(cfg.qkv_activation)
  q, k, v = (act(proj[n]) for n in ("q", "k", "v"))
  if cfg.qk_l2norm:
    q, k = l2normalize(q), l2normalize(k)
  if cfg.qk_rmsnorm:
    q = rmsnorm(q, params["q_norm"]["gamma"].astype(q.dtype) + 1.0)
    k = rmsnorm(k, params["k_norm"]["gamma"].astype(k.dtype) + 1.0)
  inner = jnp.dtype(cfg.inner_dtype)
  lr_logits = jnp.einsum("btD,Dh->bth", xs.astype(inner), params["lr"]["w"].astype(inner))
  lr = cfg.max_lr * jax.nn.sigmoid(lr_logits + lead(params["lr"]["b"].astype(inner), 3))
  return xs, xr, q, k, v, lr, new_conv


def chunk_gates(params, xs_chunks_BGCD, cfg: MemoryConfig):
  """Per-chunk α, η, momentum-combine weights and lr modulation from the pooled chunk."""
  inner = jnp.dtype(cfg.inner_dtype)
  x = xs_chunks_BGCD.astype(inner)
  if cfg.attn_pool_chunks:
    logits = x @ params["attn_pool"]["w"].astype(inner) + lead(
      params["attn_pool"]["b"].astype(inner), 4
    )
    pooled = (x * jax.nn.softmax(logits, axis=2)).sum(2)
  else:
    pooled = x.mean(2)

  def linear(p):
    w = p["w"].astype(inner)
    out = jnp.einsum("bgD,D...->bg...", pooled, w)
    return out + lead(p["b"].astype(inner), out.ndim)

  gates = {}
  if cfg.forget:
    gates["alpha"] = jax.nn.sigmoid(linear(params["decay"]))  # B×G×H
  if cfg.momentum:
    gates["eta"] = jax.nn.sigmoid(linear(params["momentum"]))  # B×G×H×O
  if cfg.learned_momentum_combine:
    gates["combine"] = jax.nn.softmax(linear(params["momentum_combine"]), axis=-1)
  if cfg.per_parameter_lr_modulation:
    gates["lr_mod"] = jax.nn.sigmoid(linear(params["lr_modulation"])) * cfg.max_mem_layer_modulation
  return gates
