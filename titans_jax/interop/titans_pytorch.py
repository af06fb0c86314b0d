"""Load a `titans_pytorch.NeuralMemory` (titans-pytorch 0.5.5) and convert its state.

  cfg, params = from_torch(neural_memory)           # config + slow params
  state = state_from_torch(torch_state, cfg, params)  # NeuralMemState -> our state
  torch_state = state_to_torch(state, cfg)            # our state -> NeuralMemState

torch and titans-pytorch are imported lazily (the `parity` extra). Every setting that
titans_jax does not reproduce raises `UnsupportedTorchSetting` naming it: a converted
module either matches or refuses, never silently differs.

Weight layouts: torch Linear stores (out, in) and computes x @ Wᵀ; we store input-first
with an explicit head axis (see titans_jax.memory.params). Fast weights are named
"norm.gamma", "model.weights.i" (ResidualNorm) or "weights.i" in torch and
"gamma", "w{i}" here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from titans_jax.memory import core, inputs
from titans_jax.memory.config import MemoryConfig


class UnsupportedTorchSetting(ValueError):
  """A titans-pytorch setting (or memory model) that titans_jax does not reproduce."""


_TORCH_ACTIVATIONS = {"SiLU": "silu", "ReLU": "relu", "Identity": None}


def _np(t) -> np.ndarray:
  return t.detach().cpu().numpy()


def _dtype_name(torch_dtype) -> str:
  return {
    "torch.float32": "float32",
    "torch.float64": "float64",
    "torch.bfloat16": "bfloat16",
    "torch.float16": "float16",
  }[str(torch_dtype)]


def _linear_activation(module, what: str):
  """Activation name (None: a plain Linear) of titans-pytorch's Sequential(Linear, act)."""
  import torch.nn as nn

  if isinstance(module, nn.Linear):
    return None
  if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Linear):
    act = module[1]
    name = type(act).__name__
    if name == "GELU":
      return "gelu" if act.approximate == "none" else "gelu_tanh"
    if name in _TORCH_ACTIVATIONS:
      return _TORCH_ACTIVATIONS[name]
    raise UnsupportedTorchSetting(f"{what}: activation {name} is not supported")
  raise UnsupportedTorchSetting(f"{what}: unexpected module {type(module).__name__}")


def torch_fast_weight_names(cfg: MemoryConfig) -> dict[str, str]:
  """Our fast-weight name -> titans-pytorch's memory-model parameter name."""
  prefix = "model." if cfg.residual_norm else ""
  names = {f"w{i}": f"{prefix}weights.{i}" for i in range(cfg.depth)}
  if cfg.residual_norm:
    names["gamma"] = "norm.gamma"
  return names


def config_from_torch(nm) -> MemoryConfig:
  """Read a NeuralMemory's constructor settings into a MemoryConfig."""
  import torch.nn as nn
  from titans_pytorch.memory_models import MemoryMLP, ResidualNorm
  from titans_pytorch.neural_memory import (
    AttentionPool,
    AveragePool,
    MultiheadRMSNorm,
    default_adaptive_step_transform,
    default_loss_fn,
  )

  def refuse(what):
    raise UnsupportedTorchSetting(f"titans-pytorch setting not supported: {what}")

  if nm.retrieve_chunk_size != nm.store_chunk_size:
    refuse(f"different retrieve/store chunk sizes {nm.chunk_size!r}")
  if nm.num_kv_per_token != 1:
    refuse(f"num_kv_per_token={nm.num_kv_per_token}")
  if nm.qkv_receives_diff_views:
    refuse("qkv_receives_diff_views=True")
  if nm.to_learned_weight_residual_mix is not None:
    refuse("accept_weight_residual=True")
  if nm.transition_gate is not None:
    refuse("gated_transition=True")
  if nm.store_with_lookahead_value:
    refuse("store_with_lookahead_value=True")
  if not nm.per_head_learned_parameters:
    refuse("per_head_learned_parameters=False")
  if nm.store_memory_loss_fn is not default_loss_fn:
    refuse("a custom store_memory_loss_fn")
  step = nm.adaptive_step_transform
  if not (isinstance(step, functools.partial) and step.func is default_adaptive_step_transform):
    refuse("a custom adaptive_step_transform")
  max_lr = float(step.keywords.get("max_lr", 1e-2))

  model = nm.memory_model
  residual_norm = type(model) is ResidualNorm
  inner = model.model if residual_norm else model
  if type(inner) is not MemoryMLP:
    refuse(f"memory model {type(inner).__name__} (only MemoryMLP, optionally in ResidualNorm)")
  if residual_norm and type(model.norm).__name__ != "LayerNorm":
    refuse(f"ResidualNorm with norm {type(model.norm).__name__}")
  mats = [tuple(w.shape) for w in inner.weights]
  dim_head = mats[0][0]
  depth = len(mats)
  hidden = mats[0][1] if depth > 1 else dim_head
  chain = (dim_head,) + (hidden,) * (depth - 1) + (dim_head,)
  if mats != list(zip(chain[:-1], chain[1:])):
    refuse(f"MemoryMLP weight shapes {mats} (expected a d -> h -> ... -> d chain)")
  expansion = 4.0
  if depth > 1:
    # MemoryMLP's hidden width is int(d · expansion_factor): pick an expansion that
    # reproduces it exactly (hidden / d can round down under int()).
    expansion = hidden / dim_head
    if int(dim_head * expansion) != hidden:
      expansion = (hidden + 0.5) / dim_head
  dtypes = {p.dtype for p in nm.parameters()}
  if len(dtypes) != 1:
    refuse(f"parameters of mixed dtypes {sorted(map(str, dtypes))}")

  pre_norm = isinstance(nm.store_norm, nn.RMSNorm)
  if pre_norm != isinstance(nm.retrieve_norm, nn.RMSNorm):
    refuse("store and retrieve norms differ")
  if pre_norm:
    for norm in (nm.store_norm, nm.retrieve_norm):
      if norm.eps is not None or not norm.elementwise_affine:
        refuse("an RMSNorm with explicit eps or without affine weight")
  acts = {
    _linear_activation(m, n)
    for m, n in (
      (nm.to_queries, "to_queries"),
      (nm.to_keys, "to_keys"),
      (nm.to_values, "to_values"),
    )
  }
  if len(acts) != 1:
    refuse("different activations on queries / keys / values")
  qkv_activation = acts.pop()
  if not isinstance(nm.reduce_to_chunk_rep, (AveragePool, AttentionPool)):
    refuse(f"chunk pooling {type(nm.reduce_to_chunk_rep).__name__}")

  momentum = nm.to_momentum is not None
  learned_combine = nm.to_learned_momentum_combine is not None
  q_lin = nm.to_queries if isinstance(nm.to_queries, nn.Linear) else nm.to_queries[0]
  dim = q_lin.in_features
  cfg = MemoryConfig(
    dim=dim,
    heads=nm.heads,
    dim_head=dim_head,
    chunk_size=nm.store_chunk_size,
    commit_every=nm.batch_size,
    depth=depth,
    expansion=expansion,
    activation="gelu",
    residual_norm=residual_norm,
    pre_norm=pre_norm,
    qkv_conv=0,
    qkv_activation=qkv_activation,
    qk_l2norm=False,
    qk_rmsnorm=isinstance(nm.q_norm, MultiheadRMSNorm),
    post_rmsnorm=isinstance(nm.multihead_rmsnorm, MultiheadRMSNorm),
    gate=nm.retrieve_gate is not None,
    out_proj=isinstance(nm.combine_heads, nn.Linear),
    max_lr=max_lr,
    momentum=momentum,
    momentum_order=nm.momentum_order if momentum else 1,
    learned_momentum_combine=learned_combine,
    learned_combine_include_zeroth=bool(learned_combine and nm.learned_combine_include_zeroth),
    forget=True,
    attn_pool_chunks=isinstance(nm.reduce_to_chunk_rep, AttentionPool),
    per_parameter_lr_modulation=nm.to_layer_modulation is not None,
    max_mem_layer_modulation=float(nm.max_mem_layer_modulation),
    max_grad_norm=nm.max_grad_norm,
    spectral_norm_surprises=bool(nm.spectral_norm_surprises),
    dtype=_dtype_name(q_lin.weight.dtype),
    param_dtype=_dtype_name(q_lin.weight.dtype),
    inner_dtype=_dtype_name(q_lin.weight.dtype),
  )
  if depth > 1 and cfg.hidden_dim != hidden:
    refuse(f"MemoryMLP hidden width {hidden} for head width {dim_head}")
  return cfg


def params_from_torch_tensors(tensors: Mapping[str, Any], cfg: MemoryConfig) -> dict:
  """Map titans-pytorch parameter tensors (a state_dict, or the matching gradients)
  to our slow-parameter pytree. Also used to line up gradients in comparisons."""
  t = {k: _np(v) for k, v in tensors.items()}
  D, H, d = cfg.dim, cfg.heads, cfg.head_dim

  def linear(key):  # torch (out, in) -> (in, out)
    base = key if f"{key}.weight" in t else f"{key}.0"
    return t[f"{base}.weight"].T, t.get(f"{base}.bias")

  def heads_proj(key):  # (H*d, D) -> D×H×d
    return linear(key)[0].reshape(D, H, d)

  def gate(key, *shape):
    w, b = linear(key)
    return {"w": w.reshape((D,) + shape), "b": b.reshape(shape)}

  torch_names = torch_fast_weight_names(cfg)
  order = [k[len("memory_model.") :] for k in t if k.startswith("memory_model.")]
  params: dict = {"W0": {}}
  for ours in cfg.fast_weight_names():
    index = order.index(torch_names[ours])
    params["W0"][ours] = t[f"memory_model_parameters.{index}"]
  if cfg.pre_norm:
    params["store_norm"] = {"scale": t["store_norm.weight"]}
    params["retrieve_norm"] = {"scale": t["retrieve_norm.weight"]}
  for name, key in (("q", "to_queries"), ("k", "to_keys"), ("v", "to_values")):
    params[f"{name}_proj"] = heads_proj(key)
  if cfg.qk_rmsnorm:
    params["q_norm"] = {"gamma": t["q_norm.gamma"].reshape(H, d)}
    params["k_norm"] = {"gamma": t["k_norm.gamma"].reshape(H, d)}
  params["lr"] = gate("to_adaptive_step", H)
  params["decay"] = gate("to_decay_factor", H)
  if cfg.momentum:
    params["momentum"] = gate("to_momentum", H, cfg.momentum_order)
  if cfg.learned_momentum_combine:
    params["momentum_combine"] = gate("to_learned_momentum_combine", H, cfg.num_combine_weights)
  if cfg.per_parameter_lr_modulation:
    params["lr_modulation"] = gate("to_layer_modulation", H, len(cfg.fast_weight_names()))
  if cfg.attn_pool_chunks:
    w, b = linear("reduce_to_chunk_rep.to_attn_logits")
    params["attn_pool"] = {"w": w, "b": b}
  if cfg.post_rmsnorm:
    params["post_norm"] = {"gamma": t["multihead_rmsnorm.gamma"].reshape(H, d)}
  if cfg.has_gate:
    params["gate"] = {"w": linear("retrieve_gate")[0]}
  if cfg.has_out_proj:
    params["out_proj"] = linear("combine_heads")[0].reshape(H, d, D)
  dtype = jnp.dtype(cfg.param_dtype)
  _check_x64(dtype)
  return _to_jnp(params, dtype)


def _check_x64(dtype):
  if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
    raise ValueError(
      "the titans-pytorch module is float64 but JAX has x64 off (its arrays "
      "would silently become float32): convert inside "
      "`with jax.enable_x64(True):`, or call module.float() first"
    )


def _to_jnp(tree, dtype):
  if isinstance(tree, dict):
    return {k: _to_jnp(v, dtype) for k, v in tree.items()}
  return jnp.asarray(tree, dtype)


def from_torch(nm) -> tuple[MemoryConfig, dict]:
  """`(MemoryConfig, params)` reproducing a titans_pytorch.NeuralMemory."""
  cfg = config_from_torch(nm)
  named = dict(nm.named_parameters())
  return cfg, params_from_torch_tensors(named, cfg)


# ------------------------------------------------------------------------- state ---


def state_from_torch(torch_state, cfg: MemoryConfig, params: dict) -> dict:
  """Convert a titans-pytorch `NeuralMemState` into our memory state.

  The pending chunk's keys / values / θ are recomputed from its cached raw tokens
  with `params` (titans-pytorch keeps only the raw tokens)."""
  seq_index, weights, cache, states, _ = torch_state
  if weights is None or states is None:
    raise ValueError("torch state has no weights yet (it was never run); pass state=None")
  names = torch_fast_weight_names(cfg)
  any_w = weights[names[cfg.fast_weight_names()[0]]]
  B = any_w.shape[0] // cfg.heads
  inner = jnp.dtype(cfg.inner_dtype)

  def unflatten(t, lead=()):  # (..., B*H, ...) -> (..., B, H, ...)
    a = _np(t)
    n = len(lead)
    return jnp.asarray(a.reshape(a.shape[:n] + (B, cfg.heads) + a.shape[n + 1 :]), inner)

  last_update, last_momentum = states
  state = core.init_state(params, cfg, B)
  state["grad_point"] = {ours: unflatten(weights[theirs]) for ours, theirs in names.items()}
  state["weights"] = {ours: unflatten(last_update[theirs]) for ours, theirs in names.items()}
  if cfg.momentum:
    state["momentum"] = {
      ours: unflatten(last_momentum[theirs], lead=(0,)) for ours, theirs in names.items()
    }
  cache_len = 0 if cache is None else cache.shape[1]
  if cache_len >= cfg.chunk_size:
    raise ValueError(f"torch cache holds {cache_len} tokens, not fewer than chunk_size")
  pos = int(seq_index) + cache_len
  if cache_len:
    raw = jnp.asarray(_np(cache), jnp.dtype(cfg.dtype))
    _, _, _, k, v, lr, _ = inputs.project(params, raw, None, cfg)
    slot = int(seq_index) % cfg.chunk_size
    if slot:
      raise ValueError("torch seq_index is not a multiple of chunk_size")
    pend = state["pending"]
    state["pending"] = {
      "x": pend["x"].at[:, :cache_len].set(raw),
      "keys": pend["keys"].at[:, :cache_len].set(k.astype(pend["keys"].dtype)),
      "values": pend["values"].at[:, :cache_len].set(v.astype(pend["values"].dtype)),
      "lr": pend["lr"].at[:, :cache_len].set(lr.astype(pend["lr"].dtype)),
    }
  state["pos"] = jnp.asarray(pos, jnp.int32)
  return state


def state_to_torch(state: dict, cfg: MemoryConfig):
  """Convert our memory state into a titans-pytorch `NeuralMemState`."""
  import torch
  from tensordict import TensorDict
  from titans_pytorch.neural_memory import NeuralMemState

  names = torch_fast_weight_names(cfg)
  dtype = getattr(torch, cfg.inner_dtype)

  def flatten(a, lead=0):  # (..., B, H, ...) -> (..., B*H, ...)
    a = np.asarray(a)
    shape = a.shape[:lead] + (a.shape[lead] * a.shape[lead + 1],) + a.shape[lead + 2 :]
    return torch.tensor(a.reshape(shape), dtype=dtype)

  order = _torch_order(cfg)
  by_torch = {v: k for k, v in names.items()}

  def td(tree, lead=0):
    return TensorDict({tn: flatten(tree[by_torch[tn]], lead) for tn in order})

  pos = int(state["pos"])
  cache_len = pos % cfg.chunk_size
  seq_index = pos - cache_len
  act = getattr(torch, cfg.dtype)
  cache = torch.tensor(np.asarray(state["pending"]["x"][:, :cache_len], np.float64), dtype=act)
  last_update = td(state["weights"])
  if cfg.momentum:
    momentum = td(state["momentum"], lead=1)
  else:
    momentum = TensorDict({})
  updates = last_update.apply(lambda t: t[:, None])
  return NeuralMemState(seq_index, td(state["grad_point"]), cache, (last_update, momentum), updates)


def _torch_order(cfg: MemoryConfig) -> list[str]:
  names = torch_fast_weight_names(cfg)
  return [names[n] for n in cfg.fast_weight_names()]
