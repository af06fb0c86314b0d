"""The dual form of one commit-block step (docs/memory.md): no per-chunk weights.

Same inputs and outputs as `primal.block_step` (the primal form), same maths; the soft
clamp and the momentum / forgetting recurrences are `ops`'s, shared by both forms.

Every layer of the memory MLP is linear in its weight given its input, so the gradient
of chunk c for layer l at the gradient point W̄ is a sum of outer products

    G_c^l = Σ_{i∈c} z_i^l ⊗ δ_i^l          z: layer input (N×d_in), δ: ∂ℓ/∂(layer output)

(θ_i is inside δ_i). Soft clamp and lr modulation scale G_c^l by a per-chunk,
per-tensor scalar s_c^l, and momentum / forgetting are linear recurrences with scalar
per-chunk coefficients, so every weight set of the block is a linear combination of the
basis  [W_start, S_start^0 … S_start^{O−1}, G_0 … G_{K−1}]  (P = 1 + O + K entries).
The coefficients are found by running the *same* recurrences (`ops.momentum_recurrence`,
`ops.forgetting_recurrence`) on coefficient vectors instead of tensors (B×H×K×P instead
of B×H×K×d_in×d_out).

Retrieval of a query q in chunk group j at layer l then needs no per-chunk weights:

    z_q W_j^l = R_j0 · z_q W_start^l + Σ_o R_j,1+o · z_q S^{l,o}
                + Σ_i R_j,1+O+c(i) · (−s_c(i)^l) · (z_q · z_i^l) δ_i^l

— an attention-like N×N masked matmul over the block's N = K·C tokens. Only the
block-end weights and momenta are formed explicitly (one weighted sum of outer products).

Axis legend: B batch, H heads, K chunks per block, C chunk size, N = K·C tokens,
d head width, i/o a layer's input/output width, O momentum orders, P = 1 + O + K
coefficient basis, R rows (block-end W and S).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.networks import activation_fn, layernorm_noaffine
from titans_jax.memory.ops import (
  clip_scale,
  forgetting_recurrence,
  momentum_recurrence,
  softclamp_scale,
)


def supports_dual(cfg: MemoryConfig) -> bool:
  """Whether the dual form can express this config (Newton–Schulz is not linear)."""
  return not cfg.spectral_norm_surprises


def use_dual(cfg: MemoryConfig) -> bool:
  """The path `apply` takes: "auto" picks the dual form wherever it is exact."""
  if cfg.impl == "primal":
    return False
  return supports_dual(cfg)


def _factors(cfg: MemoryConfig, wbar, keys_BHNd, values_BHNd, lr_BHN, K: int, queries_BHNd=None):
  """Per-token layer inputs z^l and output errors δ^l of the block's loss at W̄, the
  per-chunk gradient of γ (B×H×K×d) when the memory has the residual norm, and — given
  `queries_BHNd` — the MLP's output for the queries at W̄ (before the residual norm).

  The queries ride along the keys' forward (tokens concatenated: one matmul per layer
  instead of two, and in the backward one weight-size gradient instead of two summed);
  they do not enter the loss, so z and δ are the keys' alone."""
  act = activation_fn(cfg.activation)
  B, H, N, d = keys_BHNd.shape
  C = N // K
  x = keys_BHNd if queries_BHNd is None else jnp.concatenate([keys_BHNd, queries_BHNd], axis=2)
  eps = [jnp.zeros((B, H, N, wbar[f"w{l}"].shape[-1]), keys_BHNd.dtype) for l in range(cfg.depth)]
  gamma_K = jnp.broadcast_to(wbar["gamma"][:, :, None], (B, H, K, d)) if cfg.residual_norm else None

  def loss(eps, gamma_K):
    h, zs = x, []
    for l in range(cfg.depth):
      z = h if l == 0 else act(h)
      zs.append(z[:, :, :N])
      h = jnp.einsum("bhni,bhio->bhno", z, wbar[f"w{l}"])
      h = h + (
        eps[l] if queries_BHNd is None else jnp.pad(eps[l], ((0, 0), (0, 0), (0, N), (0, 0)))
      )
    h, h_queries = h[:, :, :N], h[:, :, N:]
    if cfg.residual_norm:
      gam = jnp.repeat(gamma_K, C, axis=2) + 1.0
      h = layernorm_noaffine(h) * gam + keys_BHNd
    per_token = jnp.square(h - values_BHNd).mean(-1)
    return jnp.sum(per_token * lr_BHN), (zs, h_queries)

  _, vjp, (zs, h_queries) = jax.vjp(loss, eps, gamma_K, has_aux=True)
  deltas, g_gamma = vjp(jnp.ones((), keys_BHNd.dtype))
  return zs, deltas, g_gamma, (h_queries if queries_BHNd is not None else None)


def _grad_sq_norms(cfg: MemoryConfig, zs, deltas, g_gamma, K: int):
  """‖G_c‖² per chunk and tensor (B×H×K) from Gram matrices: Σ_{i,i'} (z·z')(δ·δ')."""
  out = {}
  for l in range(cfg.depth):
    z, dl = zs[l], deltas[l]
    B, H, N = z.shape[:3]
    C = N // K
    zr = z.reshape(B, H, K, C, z.shape[-1])
    dr = dl.reshape(B, H, K, C, dl.shape[-1])
    gz = jnp.einsum("bhkci,bhkei->bhkce", zr, zr)
    gd = jnp.einsum("bhkco,bhkeo->bhkce", dr, dr)
    out[f"w{l}"] = jnp.maximum((gz * gd).sum((-1, -2)), 0.0)
  if cfg.residual_norm:
    out["gamma"] = jnp.square(g_gamma).sum(-1)
  return out


def _coefficients(cfg: MemoryConfig, block):
  """Coefficient rows over the basis [W_start, S^0…S^{O−1}, u_0…u_{K−1}] (u_c: the
  unit surprise of chunk c): the weights each retrieval group reads (B×H×K×P), and the
  block-end weights and momenta (B×H×R×P, R = 1 + O). The primal form's recurrences
  (`ops.momentum_recurrence`, `ops.forgetting_recurrence`), run on unit vectors."""
  B, H, K = block["lr"].shape[:3]
  O = cfg.num_momentum_states
  P = 1 + O + K
  dtype = block["lr"].dtype

  def unit(p):
    return jnp.broadcast_to(jax.nn.one_hot(p, P, dtype=dtype)[None, None], (B, H, P))

  surprise = jnp.broadcast_to(
    jnp.concatenate([jnp.zeros((K, 1 + O), dtype), jnp.eye(K, dtype=dtype)], axis=1)[None, None],
    (B, H, K, P),
  )
  update, ends = momentum_recurrence(cfg, block, surprise, [unit(1 + o) for o in range(O)])
  w_seq = forgetting_recurrence(cfg, block, update, unit(0))
  lagged = jnp.concatenate([unit(0)[:, :, None], w_seq[:, :, :-1]], axis=2)
  end_rows = jnp.stack([w_seq[:, :, -1]] + ends, axis=2)  # B×H×R×P
  return lagged, end_rows


def _surprise_coefficients(rows, scale_BHK, O: int):
  """Rows over the basis [W_start, S_start^o…, G_0…G_{K−1}] (B×H×R×P) -> the coefficient
  of each chunk's raw gradient G_c (B×H×R×K): its basis coefficient times −s_c."""
  return rows[..., 1 + O :] * (-scale_BHK)[:, :, None, :]


def _end_gradients(cfg, zs, deltas, g_gamma, end_rows, scale, K):
  """The gradient part of each block-end row: Σ_c coef_rc · (−s_c) · G_c per fast
  weight, as R tensors of weight size (one weighted sum of outer products; no per-chunk
  tensor of weight size)."""
  O = cfg.num_momentum_states
  R = end_rows.shape[2]
  out = {}
  for n in cfg.fast_weight_names():
    coef = _surprise_coefficients(end_rows, scale[n], O)  # B×H×R×K
    if n == "gamma":
      grads = jnp.einsum("bhrk,bhkd->bhrd", coef, g_gamma)
      out[n] = tuple(grads[:, :, r] for r in range(R))
      continue
    l = int(n[1:])
    zt = jnp.swapaxes(zs[l], -1, -2)
    if K == 1:  # the one chunk gradient, then R scaled copies
      g = jnp.einsum("bhin,bhno->bhio", zt, deltas[l])
      out[n] = tuple(coef[:, :, r, 0][:, :, None, None] * g for r in range(R))
      continue
    C = zs[l].shape[2] // K
    coef_tok = jnp.repeat(coef, C, axis=3)  # B×H×R×N
    # One plain matmul zᵀ·[δ·c_0 | δ·c_1 | …] for all rows.
    scaled = jnp.concatenate(
      [deltas[l] * coef_tok[:, :, r, :, None] for r in range(R)], axis=-1
    )  # B×H×N×(R·o)
    grads = jnp.einsum("bhin,bhno->bhio", zt, scaled)
    o = deltas[l].shape[-1]
    out[n] = tuple(grads[..., r * o : (r + 1) * o] for r in range(R))
  return out


def token_terms(cfg: MemoryConfig, grad_point, block):
  """What a block needs besides the carried (W, S), all of token or chunk size: the
  per-token factors at W̄, the per-chunk gradient scales and the coefficient rows.
  (Computing these for all blocks at once, outside the scan, when W̄ never moves was
  measured slower on CPU: 2026-11-30, docs/memory.md §5.)"""
  inner = jnp.dtype(cfg.inner_dtype)
  B, H, K, C, d = block["keys"].shape
  N = K * C

  def tokens(t):
    return t.astype(inner).reshape((B, H, N) + t.shape[4:])

  keys, values, q = tokens(block["keys"]), tokens(block["values"]), tokens(block["queries"])
  lr = tokens(block["lr"])

  # Exact mode (a commit every chunk): a block is one chunk and W̄ = W at its start
  # (core._carries_gradient_point), so its retrieval is the MLP at W̄ — run with the keys.
  fused = cfg.commit_chunks == 1 and K == 1
  zs, deltas, g_gamma, h_queries = _factors(
    cfg, grad_point, keys, values, lr, K, queries_BHNd=q if fused else None
  )

  # Per-chunk, per-tensor scale of the raw gradient (surprise = −scale · G).
  names = cfg.fast_weight_names()
  scale = {n: jnp.ones((B, H, K), inner) for n in names}
  need_norms = cfg.max_grad_norm is not None or cfg.max_surprise_norm is not None
  sq_norms = _grad_sq_norms(cfg, zs, deltas, g_gamma, K) if need_norms else {}
  if cfg.max_grad_norm is not None:
    for n, sq in sq_norms.items():
      scale[n] = softclamp_scale(sq, cfg.max_grad_norm)
  if cfg.per_parameter_lr_modulation:
    for i, n in enumerate(names):
      scale[n] = scale[n] * block["lr_mod"][..., i]
  if cfg.max_surprise_norm is not None:  # ‖u‖² = scale² · ‖G‖²
    for n, sq in sq_norms.items():
      scale[n] = scale[n] * clip_scale(jnp.square(scale[n]) * sq, cfg.max_surprise_norm)

  lagged, end_rows = _coefficients(cfg, block)
  return {
    "q": q,
    "h_queries": h_queries,  # the MLP at W̄ for the queries (exact mode), or None
    "zs": zs,
    "deltas": deltas,
    "g_gamma": g_gamma,
    "scale": scale,
    "lagged": lagged,
    "end_rows": end_rows,
  }


def retrieve_block(cfg: MemoryConfig, weights, momentum, terms):
  """The block's retrieval from its start weights (B×H×K×C×d): masked N×N attention
  over the block's factors for the in-block updates. No per-chunk tensor of weight size."""
  act = activation_fn(cfg.activation)
  q, zs, deltas, g_gamma = terms["q"], terms["zs"], terms["deltas"], terms["g_gamma"]
  lagged, scale = terms["lagged"], terms["scale"]
  B, H, N, d = q.shape
  K = lagged.shape[2]
  C = N // K
  O = cfg.num_momentum_states
  start_tok = jnp.repeat(lagged[..., : 1 + O], C, axis=2)  # B×H×N×(1+O)

  def grad_coef(n):  # coefficient of G_c for each group: B×H×K×K
    return _surprise_coefficients(lagged, scale[n], O)

  def start_list(n):  # [W_start, S_start^0, …], each B×H×...
    return [weights[n]] + [momentum[n][o] for o in range(O)]

  # Exact mode: the MLP at W̄ = W_start ran with the keys (token_terms); no layer here.
  fused = terms["h_queries"] is not None
  h = terms["h_queries"] if fused else q
  for l in () if fused else range(cfg.depth):
    n = f"w{l}"
    z = h if l == 0 else act(h)
    if K == 1:  # one group: it reads W_start exactly (lagged row 0 is e_0)
      h = jnp.einsum("bhni,bhio->bhno", z, weights[n])
      continue
    out = sum(
      start_tok[..., s : s + 1] * jnp.einsum("bhni,bhio->bhno", z, w)
      for s, w in enumerate(start_list(n))
    )
    coef_tok = jnp.repeat(jnp.repeat(grad_coef(n), C, axis=2), C, axis=3)  # B×H×N×N
    scores = jnp.einsum("bhni,bhmi->bhnm", z, zs[l]) * coef_tok
    h = out + jnp.einsum("bhnm,bhmo->bhno", scores, deltas[l])
  if cfg.residual_norm and K == 1:
    h = layernorm_noaffine(h) * (weights["gamma"][:, :, None] + 1.0) + q
  elif cfg.residual_norm:
    gam = jnp.einsum("bhkc,bhcd->bhkd", grad_coef("gamma"), g_gamma) + sum(
      lagged[..., s : s + 1] * w[:, :, None] for s, w in enumerate(start_list("gamma"))
    )
    h = layernorm_noaffine(h) * (jnp.repeat(gam, C, axis=2) + 1.0) + q
  return h.reshape(B, H, K, C, d)


def advance(cfg: MemoryConfig, weights, momentum, end_rows, end_grads):
  """Block-end (W, S) from block-start (W, S): per row r, Σ_s end_rows[r, s] · start_s
  plus the gradient part. Elementwise over weight-size tensors."""
  O = cfg.num_momentum_states
  R = end_rows.shape[2]
  new_weights, new_momentum = {}, {}
  for n in cfg.fast_weight_names():
    starts = [weights[n]] + [momentum[n][o] for o in range(O)]
    expand = (slice(None), slice(None)) + (None,) * (starts[0].ndim - 2)
    rows = [
      end_grads[n][r] + sum(end_rows[:, :, r, s][expand] * w for s, w in enumerate(starts))
      for r in range(R)
    ]
    new_weights[n] = rows[0]
    if O:
      new_momentum[n] = jnp.stack(rows[1:])
  return new_weights, new_momentum


def dual_block_step(cfg: MemoryConfig, carry, block):
  """One block of K chunks in the dual form (module docstring), for a scan that carries
  (W, S, W̄)."""
  weights, momentum, grad_point = carry
  terms = token_terms(cfg, grad_point, block)
  y_BHKCd = retrieve_block(cfg, weights, momentum, terms)
  K = terms["lagged"].shape[2]
  end_grads = _end_gradients(
    cfg, terms["zs"], terms["deltas"], terms["g_gamma"], terms["end_rows"], terms["scale"], K
  )
  new_weights, new_momentum = advance(cfg, weights, momentum, terms["end_rows"], end_grads)
  commit = block["commit"]
  new_grad_point = {n: jnp.where(commit, new_weights[n], grad_point[n]) for n in grad_point}
  return (new_weights, new_momentum, new_grad_point), y_BHKCd
