"""What the memory does, token by token and chunk by chunk: `diagnostics(params, x, cfg)`.

A separate function from `apply`, so the normal path compiles exactly as before. It runs
the same stream as `apply` one chunk per `lax.scan` step, with the core's own pieces
(`inputs.project` for q/k/v/θ, `inputs.chunk_gates` for α/η, `primal.block_step` for the
update), and records at each step what `apply` never materialises:

per token t of this call (B×T×H):
  theta            θ_t = max_lr·σ(w_θ·x_t + b_θ)
  inner_loss       the inner loss ℓ_t(W) = mean_d (M_W(k_t) − v_t)² (the config's loss
                   convention: `networks.chunk_loss` of the token alone with θ = 1) at
                   the fast weights *before* the update of the token's chunk, W_{j−1}
                   — what the memory predicted for this value before storing it
  grad_point_loss  the same loss at the gradient point W̄ the chunk's gradient is taken
                   at (equal to inner_loss when every chunk commits, the paper's mode)
per chunk g (B×G×H; G = chunks the call's buffer covers, see `chunk_index`):
  alpha            forgetting gate α_j                      (cfg.forget)
  eta              momentum gate η_j, B×G×H×O               (cfg.momentum)
  surprise_norm    ‖u_j‖, u_j = −∇_W Σ_t θ_t ℓ_t(W̄) after the soft clamp and lr
                   modulation (the tensor momentum receives), over all fast-weight tensors
  momentum_norm    ‖S_j‖ after the chunk, over all tensors and momentum orders (cfg.momentum)
  weights_norm     ‖W_j‖ after the chunk, over all fast-weight tensors
  chunk_index      G: the stream's index of each chunk (the first is pos // chunk_size)
  chunk_applied    G: whether the chunk completed in this call (its update happened);
                   per-chunk values of the other chunks are NaN

Works from a fresh memory (`state=None`) or continues a stream from any state `apply`
returned; pure and jit-able with `cfg` static. The update it runs is `apply`'s primal
block step, one chunk per step, so it is slower than `apply`: a tool for looking, not
for training.

Axis legend: B batch, T tokens of this call, H heads, d head width, L buffer tokens,
G buffer chunks, C chunk size, O momentum orders.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from titans_jax.memory import core
from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.inputs import check_input, chunk_gates, project
from titans_jax.memory.networks import chunk_loss
from titans_jax.memory.ops import clip_surprise_norm, rmsnorm, softclamp_grad_norm
from titans_jax.memory.primal import block_step


def _token_losses(weights, keys_BHCd, values_BHCd, cfg: MemoryConfig):
  """ℓ_t(W) per token (B×H×C): chunk_loss of each token alone with θ = 1."""
  one = jnp.ones((1,), keys_BHCd.dtype)

  def per_token(w, k_d, v_d):
    return chunk_loss(w, k_d[None], v_d[None], one, cfg)

  per_head = jax.vmap(per_token, in_axes=(None, 0, 0))  # over C
  return jax.vmap(jax.vmap(per_head))(weights, keys_BHCd, values_BHCd)


def _surprise(grad_point, keys_BHCd, values_BHCd, lr_BHC, lr_mod_BHP, cfg: MemoryConfig):
  """u = −(chunk gradient at W̄ after the soft clamp, lr modulation and clip), per tensor."""
  loss_grad = jax.grad(functools.partial(chunk_loss, cfg=cfg))
  grads = jax.vmap(jax.vmap(loss_grad))(grad_point, keys_BHCd, values_BHCd, lr_BHC)
  out = {}
  for i, name in enumerate(cfg.fast_weight_names()):
    g = grads[name][:, :, None]  # B×H×1×param: softclamp's layout
    if cfg.max_grad_norm is not None:
      g = softclamp_grad_norm(g, cfg.max_grad_norm)
    if cfg.per_parameter_lr_modulation:
      mod = lr_mod_BHP[..., i]
      g = g * mod.reshape(mod.shape + (1,) * (g.ndim - 2))
    if cfg.max_surprise_norm is not None:
      g = clip_surprise_norm(g, cfg.max_surprise_norm)
    out[name] = -g[:, :, 0]
  return out


def _norm(tree, lead: int):
  """sqrt of the sum of squares of every leaf over all axes after the first `lead`."""
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    total = total + jnp.square(leaf).sum(tuple(range(lead, leaf.ndim)))
  return jnp.sqrt(total)


@jax.named_scope("memory_diagnostics")
def diagnostics(
  params: dict, x: jax.Array, cfg: MemoryConfig, state: core.State | None = None
) -> dict[str, jax.Array]:
  """Per-token θ and inner losses, per-chunk α, η, ‖u‖, ‖S‖, ‖W‖ (module docstring).

  Same arguments as `apply`; returns a dict of arrays (keys as documented above; the
  gate and momentum entries only where the config has them). The state after the call
  is `apply(params, x, cfg, state)[1]`.
  """
  check_input(x, cfg, state)
  B, T, _ = x.shape
  fresh = state is None
  if fresh:
    state = core.init_state(params, cfg, B)
  act_dtype, inner = jnp.dtype(cfg.dtype), jnp.dtype(cfg.inner_dtype)
  x = x.astype(act_dtype)
  C, H = cfg.chunk_size, cfg.heads

  xs, _, _, k, v, lr, _ = project(params, x, state["conv"], cfg)

  # Buffer: the pending chunk's tokens (from earlier calls) at 0, this call's from
  # `start`, so buffer chunk g is the stream's chunk pos // C + g.
  pos = state["pos"]
  start = pos % C
  L = -(-((0 if fresh else C - 1) + T) // C) * C
  G = L // C
  pend = state["pending"]
  xs_pending = (
    rmsnorm(pend["x"], params["store_norm"]["scale"].astype(act_dtype))
    if cfg.pre_norm
    else pend["x"]
  )
  xs_buf = core._place(xs_pending, xs, 0, start, L)
  k_buf = core._place(pend["keys"], k, 0, start, L)
  v_buf = core._place(pend["values"], v, 0, start, L)
  lr_buf = core._place(pend["lr"], lr, 0, start, L)
  gates = chunk_gates(params, xs_buf.reshape(B, G, C, cfg.dim), cfg)

  g_idx = jnp.arange(G)
  applied_G = (g_idx + 1) * C <= start + T
  chunk_index = pos // C + g_idx
  if cfg.commit_chunks is None:
    commit_G = jnp.zeros((G,), bool)
  else:
    commit_G = applied_G & ((chunk_index + 1) % cfg.commit_chunks == 0)

  def per_chunk(t_BLHx):  # B×L×H×... -> G×B×H×C×...
    t = t_BLHx.reshape((B, G, C) + t_BLHx.shape[2:])
    return jnp.moveaxis(jnp.moveaxis(t, 3, 2), 1, 0)

  chunks = {
    "keys": per_chunk(k_buf).astype(inner),
    "values": per_chunk(v_buf).astype(inner),
    "lr": per_chunk(lr_buf),
    "valid": applied_G[:, None],
    "commit": commit_G,
  }
  for name in ("alpha", "eta", "combine", "lr_mod"):
    if name in gates:
      chunks[name] = jnp.moveaxis(gates[name], 1, 0)[:, :, :, None]  # G×B×H×1×...

  def step(carry, chunk):
    weights, momentum, grad_point = carry
    keys, values = chunk["keys"], chunk["values"]
    lr_mod = chunk["lr_mod"][:, :, 0] if "lr_mod" in chunk else None
    out = {
      "inner_loss": _token_losses(weights, keys, values, cfg),
      "grad_point_loss": _token_losses(grad_point, keys, values, cfg),
      "surprise_norm": _norm(_surprise(grad_point, keys, values, chunk["lr"], lr_mod, cfg), 2),
    }
    block = dict(
      chunk,
      keys=keys[:, :, None],
      values=values[:, :, None],
      lr=chunk["lr"][:, :, None],
      queries=jnp.zeros_like(keys[:, :, None]),
    )
    carry, _ = block_step(cfg, carry, block)
    weights, momentum, _ = carry
    out["weights_norm"] = _norm(weights, 2)
    if cfg.momentum:
      momentum_BH = jax.tree.map(lambda s: jnp.moveaxis(s, 0, 2), momentum)  # B×H×O×…
      out["momentum_norm"] = _norm(momentum_BH, 2)
    return carry, out

  carry0 = (state["weights"], state["momentum"], state["grad_point"])
  _, per_G = lax.scan(step, carry0, chunks)

  def tokens(t_GBHC):  # G×B×H×C -> B×T×H (this call's tokens)
    t = jnp.moveaxis(jnp.moveaxis(t_GBHC, 0, 1), 3, 2).reshape(B, L, H)
    return lax.dynamic_slice_in_dim(t, start, T, axis=1)

  def chunk_values(t_BG):  # NaN where the chunk was not applied
    mask = applied_G.reshape((1, G) + (1,) * (t_BG.ndim - 2))
    return jnp.where(mask, t_BG, jnp.nan)

  result = {
    "theta": lr,
    "inner_loss": tokens(per_G["inner_loss"]),
    "grad_point_loss": tokens(per_G["grad_point_loss"]),
    "chunk_index": chunk_index,
    "chunk_applied": applied_G,
  }
  for name in ("surprise_norm", "weights_norm", "momentum_norm"):
    if name in per_G:
      result[name] = chunk_values(jnp.moveaxis(per_G[name], 0, 1))
  if "alpha" in gates:
    result["alpha"] = chunk_values(gates["alpha"])
  if "eta" in gates:
    result["eta"] = chunk_values(gates["eta"])
  return result
