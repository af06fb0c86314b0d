"""The neural long-term memory as pure functions: `init_state`, `apply` and `retrieve`
(docs/spec.md §1) — the state, the block layout of a call and the scan over blocks. The
pieces it drives live by concern: `inputs` (checks, projections, chunk gates), `primal`
and `dual` (the two forms of a block step), `ops` (norms, soft clamp, recurrences).

How `apply` lays out a call (all shapes static, the stream position traced):
  * The call's tokens are written into a buffer aligned to *blocks* of `kb` chunks
    (kb divides the commit block), after the tokens of the current block that came in
    earlier calls: the chunks already applied to the fast weights are masked out, the
    pending (not yet complete) chunk's tokens come from the state. So any split of a
    stream into calls gives the same result as one call.
  * `lax.scan` over blocks carries (W, S, W̄) — or (W, S) alone when every chunk
    commits (`commit_every = chunk_size`), where W̄ = W at every block start and the
    state's `grad_point` is always its `weights`. Two forms of a block step, chosen by
    `MemoryConfig.impl` (docs/memory.md):
    primal (`primal.block_step`): one gradient per chunk at W̄ (`vmap` over chunks of
    `grad`), the soft clamp / lr modulation, momentum and forgetting with
    `jax.lax.associative_scan`, Newton–Schulz, then retrieval of the block's queries
    from the per-chunk weights (a block's worth of per-chunk weights materialised);
    dual (`dual.dual_block_step`, the default wherever it is exact): per-token gradient
    factors, the recurrences on coefficient vectors, retrieval as a masked
    attention-like matmul — no per-chunk weights.
  * Retrieval reads W_{r(t)}, r(t) = ⌊(t+1)/c⌋ − 1: queries are shifted one token to the
    right so that a group of c shifted queries shares one weight set.
  * Chunks that are incomplete (or were applied in an earlier call) enter the scans as
    the identity element (a=1, x=0), so they change nothing.

Axis legend: B batch, T tokens in this call, D model width, H heads, d head width,
L buffer tokens, G = L / c buffer chunks, N blocks, K chunks per block (kb), C chunk
size, O momentum orders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.dual import dual_block_step, use_dual
from titans_jax.memory.inputs import check_input, chunk_gates, project
from titans_jax.memory.kernel import chunk_scan, scan_chunks
from titans_jax.memory.networks import memory_forward
from titans_jax.memory.ops import rmsnorm
from titans_jax.memory.primal import block_step
from titans_jax.sharding.rules import target_platform

State = dict[str, Any]

AUTO_BLOCK_TOKENS = 64  # tokens per scan step when the gradient point never moves


# --------------------------------------------------------------------------- state ---


def init_state(params: dict, cfg: MemoryConfig, batch_size: int) -> State:
  """A fresh memory state: fast weights and gradient point at W_0, zero momentum,
  an empty pending chunk, position 0."""
  if not (isinstance(batch_size, int) and batch_size > 0):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  inner = jnp.dtype(cfg.inner_dtype)
  act = jnp.dtype(cfg.dtype)
  B, C, H, d = batch_size, cfg.chunk_size, cfg.heads, cfg.head_dim

  def per_batch(w):
    return jnp.broadcast_to(w.astype(inner)[None], (B,) + w.shape)

  weights = {n: per_batch(w) for n, w in params["W0"].items()}
  momentum = (
    {n: jnp.zeros((cfg.num_momentum_states,) + w.shape, inner) for n, w in weights.items()}
    if cfg.momentum
    else {}
  )
  state = {
    "weights": weights,
    "grad_point": dict(weights),
    "momentum": momentum,
    "pending": {
      "x": jnp.zeros((B, C, cfg.dim), act),
      "keys": jnp.zeros((B, C, H, d), act),
      "values": jnp.zeros((B, C, H, d), act),
      "lr": jnp.zeros((B, C, H), inner),
    },
    "conv": (jnp.zeros((B, cfg.qkv_conv - 1, 3, H, d), act) if cfg.qkv_conv > 1 else None),
    "pos": jnp.zeros((), jnp.int32),
  }
  return state


# ------------------------------------------------------------------- block layout ---


def _chunks_per_block(cfg: MemoryConfig, T: int) -> int:
  """Chunks processed together per scan step (static; never changes the result)."""
  C = cfg.chunk_size
  new_chunks = max(1, T // C)
  k = cfg.commit_chunks
  if k is None:
    kb = cfg.chunks_per_block or max(1, AUTO_BLOCK_TOKENS // C)
    return max(1, min(kb, -(-T // C)))
  # Blocks must not straddle a commit boundary: take the largest divisor of k that
  # the call can fill (decode steps use one chunk per block).
  return (
    max(div for div in range(1, k + 1) if k % div == 0 and div <= new_chunks)
    if new_chunks < k
    else k
  )


def buffer_tokens(cfg: MemoryConfig, T: int, fresh: bool) -> int:
  """Length L of the block-aligned buffer `apply` runs a T-token call over. A call that
  continues a stream starts anywhere inside its current block (a traced position), so
  its buffer leaves room for a block's worth of earlier tokens; a fresh one does not."""
  block_tokens = _chunks_per_block(cfg, T) * cfg.chunk_size
  num_blocks = -(-((0 if fresh else block_tokens - 1) + T) // block_tokens)
  return num_blocks * block_tokens


def _place(pending, new, pending_start, new_start, length):
  """Buffer of `length` tokens (axis 1) with the pending chunk at `pending_start`,
  then the new tokens written over it from `new_start`."""
  buf = jnp.zeros((new.shape[0], length) + new.shape[2:], new.dtype)
  buf = lax.dynamic_update_slice_in_dim(buf, pending.astype(new.dtype), pending_start, axis=1)
  return lax.dynamic_update_slice_in_dim(buf, new, new_start, axis=1)


# ---------------------------------------------------------------------- the scan ---


def _carries_gradient_point(cfg: MemoryConfig) -> bool:
  """Whether the block scan carries W̄ apart from W. Not when every chunk commits: a
  block is then one chunk (kb = 1), a block that completes its chunk commits, one that
  does not leaves W unchanged, so W̄ = W at every block start."""
  return cfg.commit_chunks != 1


def _tied_gradient_point(step):
  """A (W, S) scan step from a (W, S, W̄) one, for configs where W̄ = W at every block
  start (`_carries_gradient_point` is False)."""

  def tied(carry, block):
    weights, momentum = carry
    (weights, momentum, _), y = step((weights, momentum, weights), block)
    return (weights, momentum), y

  return tied


def _checkpoint_saving(step, saved_dtype: Optional[str]):
  """`jax.checkpoint(step)` for a scan step `(carry, blocks) -> (carry, y)`; with
  `saved_dtype`, the carry kept for the backward is stored in that dtype instead. The
  forward is unchanged (it runs on the full carry); the backward recomputes the step
  from the rounded carry, so its gradients are approximate (MemoryConfig.saved_carry_dtype)."""
  if saved_dtype is None:
    return jax.checkpoint(step)
  narrow = jnp.dtype(saved_dtype)

  @jax.custom_vjp
  def checkpointed(carry, blocks):
    return step(carry, blocks)

  def floating(x):
    return jnp.issubdtype(x.dtype, jnp.floating)

  def forward(carry, blocks):
    saved = jax.tree.map(lambda c: c.astype(narrow) if floating(c) else c, carry)
    return step(carry, blocks), (saved, blocks)

  def backward(residuals, cotangents):
    saved, blocks = residuals
    # a float carry's cotangent has the carry's own dtype
    carry = jax.tree.map(
      lambda s, ct: s.astype(ct.dtype) if floating(s) else s, saved, cotangents[0]
    )
    _, vjp = jax.vjp(step, carry, blocks)
    return vjp(cotangents)

  checkpointed.defvjp(forward, backward)
  return checkpointed


def _maybe_remat(step, remat: bool, saved_dtype: Optional[str] = None):
  return _checkpoint_saving(step, saved_dtype) if remat else step


def _unrolled(step, n: int):
  """n scan steps as one: the carry threads through n blocks (leading axis n of the
  blocks), their outputs stacked."""

  def steps(carry, blocks_n):
    ys = []
    for i in range(n):
      carry, y = step(carry, jax.tree.map(lambda b: b[i], blocks_n))
      ys.append(y)
    return carry, jnp.stack(ys)

  return steps


def _scan_in_groups(group_step, rest_scan, carry0, blocks, n: int):
  """`group_step` scanned over the N blocks (leading axis) in groups of n, each scan
  step given n blocks (leading axis n), then `rest_scan(carry, rest)` over the N mod n
  blocks left over; the outputs are back in block order (leading axis N)."""
  num_blocks = jax.tree.leaves(blocks)[0].shape[0]
  groups, rest = divmod(num_blocks, n)
  head = jax.tree.map(lambda b: b[: groups * n].reshape((groups, n) + b.shape[1:]), blocks)
  carry, y_head = lax.scan(group_step, carry0, head)
  y_head = y_head.reshape((groups * n,) + y_head.shape[2:])
  if not rest:
    return carry, y_head
  carry, y_tail = rest_scan(carry, jax.tree.map(lambda b: b[groups * n :], blocks))
  return carry, jnp.concatenate([y_head, y_tail], axis=0)


def _scan_remat_groups(
  step, carry0, blocks, remat: bool, per_checkpoint: int, saved_dtype: Optional[str] = None
):
  """`lax.scan(step, carry0, blocks)` where, with `remat`, each scan step runs
  `per_checkpoint` blocks under one checkpoint: the backward keeps the carry only at
  the start of each group and recomputes the group's blocks once — the recomputation
  of remat per block, with 1/per_checkpoint of the saved carries (each a weight-size
  write in the forward and a read in the backward). The N mod n blocks left over run
  one per checkpoint. Same values (`saved_dtype`: `_checkpoint_saving`)."""
  num_blocks = jax.tree.leaves(blocks)[0].shape[0]
  n = min(per_checkpoint, num_blocks) if remat else 1
  if n <= 1:
    return lax.scan(_maybe_remat(step, remat, saved_dtype), carry0, blocks)
  return _scan_in_groups(
    _checkpoint_saving(_unrolled(step, n), saved_dtype),
    lambda carry, rest: lax.scan(_checkpoint_saving(step, saved_dtype), carry, rest),
    carry0,
    blocks,
    n,
  )


SCAN_CARRY_NAME = "memory_scan_carry"  # the carries the two-level scan saves (a remat name)


def _scan_blocks(
  step,
  carry0,
  blocks,
  remat: bool,
  every: Optional[int],
  per_checkpoint: int = 1,
  saved_dtype: Optional[str] = None,
):
  """`lax.scan(step, carry0, blocks)` over the leading (block) axis, with the backward's
  memory chosen by `remat` (each step recomputed from its carry; `per_checkpoint`
  blocks to a checkpoint, `_scan_remat_groups`) and `every`.

  every = n: two-level rematerialisation. The blocks run in groups of n, each group a
  checkpointed inner scan, so the forward keeps one carry per group (named
  SCAN_CARRY_NAME, so that an enclosing remat policy can keep them) and the backward
  recomputes one group's n carries at a time: N/n + n saved carries instead of N. The
  N mod n blocks left over run in a plain scan after the groups. Same values.
  """
  num_blocks = jax.tree.leaves(blocks)[0].shape[0]

  def scan(carry, blocks):
    return _scan_remat_groups(step, carry, blocks, remat, per_checkpoint, saved_dtype)

  if every is None or every >= num_blocks or every == 1:
    return scan(carry0, blocks)

  def group(carry, group_blocks):
    carry = checkpoint_name(carry, SCAN_CARRY_NAME)
    return scan(carry, group_blocks)

  return _scan_in_groups(jax.checkpoint(group), scan, carry0, blocks, every)


def _kernel_scan(cfg: MemoryConfig, state: State, blocks, q_last_BHd, B: int, N: int, inner):
  """`kernel.chunk_scan` on the blocks of the exact mode (one chunk per block): the
  N×B×H×1×C×… block layout to the kernel's B×H×T×…, and y_buf B×H×(N·C)×d back, heads
  first as the kernel writes it (`_finish_output` reads either layout).

  The kernel reads each query with the weights before the chunk of the token after it
  (the queries are shifted one token right). One more chunk, an identity (valid = 0),
  carries the buffer's last query, so the kernel also reads it with the final weights:
  y_buf is the kernel's y from the second token on, with no concatenation after it.
  The identity chunks that fill the kernel's last segment are appended in the same
  copy (`kernel.scan_chunks`), so the kernel pads nothing."""
  C, H = cfg.chunk_size, cfg.heads
  shapes = [state["weights"][name].shape[2:] for name in cfg.fast_weight_names()]
  idle_chunks = scan_chunks(cfg, N + 1, cfg.head_dim, shapes) - N  # ≥ 1

  def tokens(t, first_of_idle_chunk=None):  # N×B×H×1×C×… -> B×H×((N+idle)·C)×…
    t = jnp.moveaxis(t[:, :, :, 0], 0, 2)
    t = t.reshape((B, H, N * C) + t.shape[4:])
    idle = jnp.zeros(t.shape[:2] + (idle_chunks * C,) + t.shape[3:], t.dtype)
    if first_of_idle_chunk is not None:
      idle = idle.at[:, :, 0].set(first_of_idle_chunk.astype(t.dtype))
    return jnp.concatenate([t, idle], axis=2)

  def per_chunk(t_NBH):  # N×B×H -> B×H×((N+idle)·C), the idle chunks' entries 0
    t = jnp.concatenate([t_NBH, jnp.zeros((idle_chunks,) + t_NBH.shape[1:], t_NBH.dtype)])
    return jnp.repeat(jnp.moveaxis(t, 0, 2), C, axis=2)

  ones = jnp.ones((B, H, (N + idle_chunks) * C), inner)  # α = 0 / η = 1 when off
  valid_NBH = jnp.broadcast_to(blocks["valid"][:, :1, None], (N, B, H))
  gates = jnp.stack(
    [
      tokens(blocks["lr"]).astype(inner),
      per_chunk(blocks["alpha"][:, :, :, 0].astype(inner)) if cfg.forget else 0.0 * ones,
      per_chunk(blocks["eta"][:, :, :, 0, 0].astype(inner)) if cfg.momentum else ones,
      per_chunk(valid_NBH.astype(inner)),
    ],
    axis=-1,
  )
  weights, momentum, y_BHTd = chunk_scan(
    cfg,
    state["weights"],
    state["momentum"],
    tokens(blocks["keys"]),  # in the activation dtype: the kernel widens them on chip
    tokens(blocks["values"]),
    tokens(blocks["queries"], first_of_idle_chunk=q_last_BHd),
    gates,
    platform=target_platform(),
  )
  return weights, momentum, y_BHTd[:, :, 1 : N * C + 1]


@jax.named_scope("memory")  # profiles group the layer's ops by these scopes (perf.profile)
def apply(
  params: dict,
  x: jax.Array,
  cfg: MemoryConfig,
  state: Optional[State] = None,
  *,
  constrain_fresh_state: Optional[Callable[[State], State]] = None,
):
  """Store x into the memory and retrieve from it (docs/spec.md §1). Pure; jit with cfg static.

  Args:
    params: slow parameters from `init`.
    x: B×T×D input, any T ≥ 1.
    cfg: the MemoryConfig the params were built with.
    state: from `init_state` or a previous call; None starts a fresh memory (and
      lets the call skip the room kept for earlier tokens of a continued stream).
      With `commit_every = chunk_size` its `grad_point` is not read: in that mode
      every state `init_state` and `apply` make has grad_point = weights.
    constrain_fresh_state: applied to the state built when `state` is None (the nnx
      module pins its sharding with it).

  Returns:
    (y, new_state): y is B×T×D in cfg.dtype; new_state continues the stream exactly.
  """
  check_input(x, cfg, state)
  B, T, _ = x.shape
  fresh = state is None  # the stream starts here: position 0 is known statically
  if fresh:
    state = init_state(params, cfg, B)
    if constrain_fresh_state is not None:
      state = constrain_fresh_state(state)
  act_dtype = jnp.dtype(cfg.dtype)
  inner = jnp.dtype(cfg.inner_dtype)
  x = x.astype(act_dtype)
  C, H, d = cfg.chunk_size, cfg.heads, cfg.head_dim

  xs, xr, q, k, v, lr, new_conv = project(params, x, state["conv"], cfg)

  # ---- buffer layout (see module docstring) ----
  kb = _chunks_per_block(cfg, T)
  block_tokens = kb * C
  L = buffer_tokens(cfg, T, fresh)
  num_blocks, G = L // block_tokens, L // C
  pos = state["pos"]
  chunk_index = pos // C  # absolute index of the chunk being filled
  pending_count = pos % C
  first_chunk = chunk_index % kb  # its index inside the current block
  pending_start = first_chunk * C
  new_start = pending_start + pending_count
  pend = state["pending"]
  xs_pending = (
    rmsnorm(pend["x"], params["store_norm"]["scale"].astype(act_dtype))
    if cfg.pre_norm
    else pend["x"]
  )

  x_buf = _place(pend["x"], x, pending_start, new_start, L)
  xs_buf = _place(xs_pending, xs, pending_start, new_start, L)
  k_buf = _place(pend["keys"], k, pending_start, new_start, L)
  v_buf = _place(pend["values"], v, pending_start, new_start, L)
  lr_buf = _place(pend["lr"], lr, pending_start, new_start, L)
  q_buf = lax.dynamic_update_slice_in_dim(jnp.zeros((B, L, H, d), q.dtype), q, new_start, axis=1)
  q_shift = jnp.concatenate([jnp.zeros_like(q_buf[:, :1]), q_buf[:, :-1]], axis=1)

  end = new_start + T
  g_idx = jnp.arange(G)
  valid_G = (g_idx >= first_chunk) & ((g_idx + 1) * C <= end)
  if cfg.commit_chunks is None:
    commit_N = jnp.zeros((num_blocks,), bool)
  else:
    blocks_per_commit = cfg.commit_chunks // kb
    abs_block = (chunk_index - first_chunk) // kb + jnp.arange(num_blocks)
    block_full = (jnp.arange(num_blocks) + 1) * block_tokens <= end
    commit_N = block_full & ((abs_block + 1) % blocks_per_commit == 0)

  gates = chunk_gates(params, xs_buf.reshape(B, G, C, cfg.dim), cfg)

  def tokens_to_blocks(t_BLHx):  # B×L×H×... -> N×B×H×K×C×...
    t = t_BLHx.reshape((B, num_blocks, kb, C) + t_BLHx.shape[2:])
    t = jnp.moveaxis(t, 4, 2)  # B×N×H×K×C×...
    return jnp.moveaxis(t, 1, 0)

  def chunks_to_blocks(g_BGH):  # B×G×H×... -> N×B×H×K×...
    t = g_BGH.reshape((B, num_blocks, kb) + g_BGH.shape[2:])
    t = jnp.moveaxis(t, 3, 2)
    return jnp.moveaxis(t, 1, 0)

  blocks = {
    "keys": tokens_to_blocks(k_buf),
    "values": tokens_to_blocks(v_buf),
    "lr": tokens_to_blocks(lr_buf),
    "queries": tokens_to_blocks(q_shift),
    "valid": valid_G.reshape(num_blocks, kb),
    "commit": commit_N,
  }
  for name in ("alpha", "eta", "combine", "lr_mod"):
    if name in gates:
      blocks[name] = chunks_to_blocks(gates[name])

  dual = use_dual(cfg)
  # saved_carry_dtype acts on the per-block checkpoints: it turns remat on
  remat = cfg.remat if cfg.remat is not None else (dual or cfg.saved_carry_dtype is not None)
  step = jax.named_scope("memory_block")(
    functools.partial(dual_block_step if dual else block_step, cfg)
  )
  if cfg.impl == "pallas":  # the exact mode's scan as one kernel (memory.kernel)
    weights, momentum, y_buf_BHLd = _kernel_scan(
      cfg, state, blocks, q_buf[:, -1], B, num_blocks, inner
    )
    grad_point = weights
  elif not _carries_gradient_point(cfg):
    # Commit after every chunk (the paper's exact mini-batch GD): a block is one
    # chunk and W̄ = W at every block start, so the scan carries W once — one
    # weight-size carry fewer to select, stack for the backward and differentiate.
    (weights, momentum), y_blocks = _scan_blocks(
      _tied_gradient_point(step),
      (state["weights"], state["momentum"]),
      blocks,
      remat,
      cfg.scan_remat_every,
      cfg.remat_blocks,
      cfg.saved_carry_dtype,
    )
    grad_point = weights
  else:
    carry0 = (state["weights"], state["momentum"], state["grad_point"])
    (weights, momentum, grad_point), y_blocks = _scan_blocks(
      step,
      carry0,
      blocks,
      remat,
      cfg.scan_remat_every,
      cfg.remat_blocks,
      cfg.saved_carry_dtype,
    )

  if cfg.impl == "pallas":  # heads first, as the kernel wrote it: no layout change of y
    y = lax.dynamic_slice_in_dim(y_buf_BHLd, new_start, T, axis=2)  # B×H×T×d
    y = _finish_output(params, y, xr, cfg, heads_first=True).astype(act_dtype)
  else:
    # N×B×H×K×C×d -> B×L×H×d (shifted by one token), then the last token with final W.
    last = jax.vmap(jax.vmap(functools.partial(memory_forward, cfg=cfg)))(
      weights, q_buf[:, -1].astype(inner)
    )
    y_shift = jnp.moveaxis(y_blocks, 0, 1).reshape(B, num_blocks, H, kb, C, d)
    y_shift = jnp.moveaxis(y_shift, 2, 4).reshape(B, L, H, d)
    y_buf = jnp.concatenate([y_shift[:, 1:], last[:, None]], axis=1)
    y = lax.dynamic_slice_in_dim(y_buf, new_start, T, axis=1)  # B×T×H×d
    y = _finish_output(params, y, xr, cfg).astype(act_dtype)

  # ---- next state ----
  new_pos = pos + T
  new_pending_count = new_pos % C
  chunk_start = end - new_pending_count
  slot_ok = jnp.arange(C) < new_pending_count

  def take_pending(buf):
    out = lax.dynamic_slice_in_dim(buf, chunk_start, C, axis=1)
    return jnp.where(slot_ok.reshape((1, C) + (1,) * (out.ndim - 2)), out, 0)

  new_state = {
    "weights": weights,
    "grad_point": grad_point,
    "momentum": momentum,
    "pending": {
      "x": take_pending(x_buf),
      "keys": take_pending(k_buf),
      "values": take_pending(v_buf),
      "lr": take_pending(lr_buf),
    },
    "conv": new_conv,
    "pos": new_pos.astype(jnp.int32),
  }
  return y, new_state


def _finish_output(params, y, xr_BTD, cfg: MemoryConfig, heads_first: bool = False):
  """Post-norm, per-head gate, head merge and output projection of y B×T×H×d (or
  B×H×T×d with `heads_first`: the same values, no transpose before the projection)."""
  inner = y.dtype
  bth = "bht" if heads_first else "bth"
  if cfg.post_rmsnorm:
    scale_Hd = params["post_norm"]["gamma"].astype(inner) + 1.0
    y = rmsnorm(y, scale_Hd[:, None] if heads_first else scale_Hd)
  if cfg.has_gate:
    gate = jax.nn.sigmoid(
      jnp.einsum(f"btD,Dh->{bth}", xr_BTD.astype(inner), params["gate"]["w"].astype(inner))
    )
    y = y * gate[..., None]
  if cfg.has_out_proj:
    return jnp.einsum(f"{bth}d,hdD->btD", y, params["out_proj"].astype(inner))
  y_BTHd = jnp.moveaxis(y, 1, 2) if heads_first else y
  return y_BTHd.reshape(y_BTHd.shape[:2] + (cfg.inner_width,))


@jax.named_scope("memory")
def retrieve(params: dict, x: jax.Array, cfg: MemoryConfig, weights: dict, conv=None):
  """Read-only retrieval y = M*_W(q(x)) with fixed fast weights (no store, no update).

  MAC's `h_i = M*_{i−1}(q(S_i))`. `weights` are per batch and head (B×H×..., e.g.
  `state["weights"]`); `conv` is the causal-conv context of this retrieval stream
  (B×(K−1)×3×H×d, None for zeros). Returns (y B×T×D in cfg.dtype, new conv context).
  """
  check_input(x, cfg, None)
  act_dtype = jnp.dtype(cfg.dtype)
  x = x.astype(act_dtype)
  if conv is None and cfg.qkv_conv > 1:
    conv = jnp.zeros((x.shape[0], cfg.qkv_conv - 1, 3, cfg.heads, cfg.head_dim), act_dtype)
  _, xr, q, _, _, _, new_conv = project(params, x, conv, cfg)
  inner = jnp.dtype(cfg.inner_dtype)
  fwd = functools.partial(memory_forward, cfg=cfg)
  y = jax.vmap(jax.vmap(fwd, in_axes=(0, 1), out_axes=1))(weights, q.astype(inner))
  return _finish_output(params, y, xr, cfg).astype(act_dtype), new_conv
