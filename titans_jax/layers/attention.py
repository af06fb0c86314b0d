"""Attention kernels: block-local sliding-window attention in O(T·W), segment and decode
attention, all over an optional prefix of persistent keys/values that every query sees.

Window semantics: query t sees keys t−W+1 … t (W keys, itself included) plus the N_p
persistent keys. Implementations (`impl`):
  * "xla": einsum + fp32 softmax; runs everywhere (the reference path).
  * "dot_product": jax.nn.dot_product_attention, letting JAX pick the kernel.
  * "cudnn": jax.nn.dot_product_attention(implementation="cudnn") (GPU, bf16/fp16).
  * "splash": TPU Pallas splash attention for the full-sequence paths (the sliding
    window over [P ‖ x], MAC's segments over [P ‖ h ‖ x]); one-token decode and
    non-TPU platforms use "xla" (with a one-line notice, once, where splash was asked
    for and cannot serve).
  * "auto": cudnn on GPU for half-precision inputs, splash on TPU, else xla.
The platform is that of the devices of the mesh being traced for (`use_rules`), not
`jax.default_backend()`: a CPU host compiling for a TPU topology gets splash. On a
mesh the kernel runs inside `jax.shard_map` over the batch axes and the heads (Mosaic
kernels cannot be partitioned automatically).
No path ever builds a T×T mask or score matrix: the sliding window is computed over
blocks of W queries, each attending to its own and the previous block of keys.

Axis legend: B batch (any leading axes), T tokens, N blocks of W queries, W window,
C keys per block (N_p + 2W), P persistent tokens, H heads, K head width, Q queries.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from titans_jax.layers.basic import Linear
from titans_jax.sharding import rules as rules_lib
from titans_jax.sharding.rules import target_platform

IMPLS = ("auto", "xla", "dot_product", "cudnn", "splash")

_log = logging.getLogger(__name__)
_NOTICED: set[str] = set()
# Tests: run the splash kernel in the Pallas interpreter on any platform.
_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("splash_interpret", default=False)


@contextlib.contextmanager
def splash_interpret():
  """Within this context (while tracing) "splash" runs the Pallas kernel in interpret
  mode on any platform, sharded exactly as on TPU (numerical tests on CPU)."""
  token = _INTERPRET.set(True)
  try:
    yield
  finally:
    _INTERPRET.reset(token)


def _notice_once(msg: str) -> None:
  if msg not in _NOTICED:
    _NOTICED.add(msg)
    _log.warning(msg)


def _resolve_impl(impl: str, dtype) -> str:
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
  if impl != "auto":
    return impl
  backend = target_platform()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if backend == "tpu":
    return "splash"
  return "xla"


def _xla_attention(q_BQHK, k_BCHK, v_BCHK, mask_BQC):
  scale = 1.0 / math.sqrt(q_BQHK.shape[-1])
  s_BHQC = (
    jnp.einsum(
      "BQHK,BCHK->BHQC",
      q_BQHK,
      k_BCHK,
      preferred_element_type=jnp.promote_types(q_BQHK.dtype, jnp.float32),
    )
    * scale
  )
  s_BHQC = jnp.where(mask_BQC[:, None], s_BHQC, jnp.finfo(s_BHQC.dtype).min)
  p_BHQC = jax.nn.softmax(s_BHQC, axis=-1)
  return jnp.einsum("BHQC,BCHK->BQHK", p_BHQC.astype(v_BCHK.dtype), v_BCHK)


def masked_attention(q_BQHK, k_BCHK, v_BCHK, mask_BQC, impl: str = "xla"):
  """softmax(q kᵀ/√K + mask) v for an explicit boolean mask (every row has a True).

  Leading axes of q/k/v (all but the last three) are batch axes; the mask's leading
  axes broadcast against them.
  """
  impl = _resolve_impl(impl, q_BQHK.dtype)
  lead = q_BQHK.shape[:-3]
  Q, C = q_BQHK.shape[-3], k_BCHK.shape[-3]
  mask = jnp.broadcast_to(mask_BQC, lead + (Q, C)).reshape((-1, Q, C))
  q = q_BQHK.reshape((-1,) + q_BQHK.shape[-3:])
  k = k_BCHK.reshape((-1,) + k_BCHK.shape[-3:])
  v = v_BCHK.reshape((-1,) + v_BCHK.shape[-3:])
  if impl in ("dot_product", "cudnn"):
    out = jax.nn.dot_product_attention(
      q, k, v, mask=mask[:, None], implementation=None if impl == "dot_product" else "cudnn"
    )
  else:  # "xla", and "splash" outside the sliding-window kernel
    out = _xla_attention(q, k, v, mask)
  return out.reshape(q_BQHK.shape)


def _with_persistent(k_BNCHK, pk_BPHK):
  """Prepend persistent keys to every block's keys."""
  if pk_BPHK is None:
    return k_BNCHK
  B, N = k_BNCHK.shape[:2]
  pk = jnp.broadcast_to(pk_BPHK[:, None], (B, N) + pk_BPHK.shape[1:]).astype(k_BNCHK.dtype)
  return jnp.concatenate([pk, k_BNCHK], axis=2)


def window_block_mask(num_blocks: int, window: int, num_persistent: int) -> jax.Array:
  """N×W×(P+2W) mask: persistent keys always, then the previous and current block of
  keys within the window (none before position 0)."""
  W = window
  i = jnp.arange(W)[:, None]
  j = jnp.arange(2 * W)[None, :]
  local = (j > i) & (j <= i + W)  # q − k ∈ [0, W)
  first = local & (j >= W)  # block 0: no previous block
  blocks = jnp.concatenate([first[None], jnp.broadcast_to(local, (num_blocks - 1, W, 2 * W))])
  if num_persistent:
    blocks = jnp.concatenate([jnp.ones((num_blocks, W, num_persistent), bool), blocks], axis=-1)
  return blocks


@jax.named_scope("attention")  # perf.profile groups ops by scope
def sliding_window_attention(
  q_BTHK,
  k_BTHK,
  v_BTHK,
  window: int,
  pk_BPHK: Optional[jax.Array] = None,
  pv_BPHK: Optional[jax.Array] = None,
  impl: str = "xla",
):
  """Causal sliding-window attention from position 0, O(T·W) time and memory.

  q/k/v already carry their positional encoding; persistent keys/values (if given)
  are visible to every query.
  """
  if window <= 0:
    raise ValueError(f"window must be > 0, got {window}")
  impl = _resolve_impl(impl, q_BTHK.dtype)
  if impl == "splash":
    out = _splash_window_attention(q_BTHK, k_BTHK, v_BTHK, window, pk_BPHK, pv_BPHK)
    if out is not None:
      return out
    impl = "xla"
  B, T, H, K = q_BTHK.shape
  W = window
  N = -(-T // W)
  pad = N * W - T

  def blocks(x):
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.reshape(B, N, W, H, K)

  q_BNWHK, k_BNWHK, v_BNWHK = blocks(q_BTHK), blocks(k_BTHK), blocks(v_BTHK)

  def two_blocks(x_BNWHK):
    prev = jnp.concatenate([jnp.zeros_like(x_BNWHK[:, :1]), x_BNWHK[:, :-1]], axis=1)
    return jnp.concatenate([prev, x_BNWHK], axis=2)

  k_BNCHK = _with_persistent(two_blocks(k_BNWHK), pk_BPHK)
  v_BNCHK = _with_persistent(two_blocks(v_BNWHK), pv_BPHK)
  P = 0 if pk_BPHK is None else pk_BPHK.shape[1]
  mask_NWC = window_block_mask(N, W, P)
  out_BNWHK = masked_attention(q_BNWHK, k_BNCHK, v_BNCHK, mask_NWC[None], impl)
  return out_BNWHK.reshape(B, N * W, H, K)[:, :T]


def window_attention_probs(q_BTHK, k_BTHK, window: int, pk_BPHK: Optional[jax.Array] = None):
  """The softmax weights of `sliding_window_attention` as a dense B×H×T×(P+T) array
  (persistent keys first, then positions 0..T−1): O(T²), for diagnostics only."""
  T, P = q_BTHK.shape[1], 0 if pk_BPHK is None else pk_BPHK.shape[1]
  lag_TT = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]
  mask_TC = jnp.concatenate([jnp.ones((T, P), bool), (lag_TT >= 0) & (lag_TT < window)], axis=-1)
  k_BCHK = k_BTHK if pk_BPHK is None else jnp.concatenate([pk_BPHK.astype(k_BTHK.dtype), k_BTHK], 1)
  f = jnp.promote_types(q_BTHK.dtype, jnp.float32)
  s_BHTC = jnp.einsum("BTHK,BCHK->BHTC", q_BTHK.astype(f), k_BCHK.astype(f))
  s_BHTC = jnp.where(mask_TC, s_BHTC / math.sqrt(q_BTHK.shape[-1]), jnp.finfo(f).min)
  return jax.nn.softmax(s_BHTC, axis=-1)


def segment_attention_probs(q_BQHK, keys, mask_QC):
  """The softmax weights of `segment_attention` as a dense B×H×Q×C array over the
  concatenated key groups (e.g. [P ‖ h ‖ x]): for diagnostics only."""
  f = jnp.promote_types(q_BQHK.dtype, jnp.float32)
  k_BCHK = jnp.concatenate([k.astype(f) for k in keys], axis=1)
  s_BHQC = jnp.einsum("BQHK,BCHK->BHQC", q_BQHK.astype(f), k_BCHK)
  s_BHQC = jnp.where(mask_QC, s_BHQC / math.sqrt(q_BQHK.shape[-1]), jnp.finfo(f).min)
  return jax.nn.softmax(s_BHQC, axis=-1)


def ring_slot_positions(pos: jax.Array, window: int) -> jax.Array:
  """Absolute position held by each slot of a W-slot ring buffer after writing `pos`
  at slot pos % W (negative: slot never written)."""
  s = jnp.arange(window)
  return pos - jnp.mod(pos - s, window)


@jax.named_scope("attention")
def decode_window_attention(
  q_B1HK, k_ring_BWHK, v_ring_BWHK, pos, window: int, pk_BPHK=None, pv_BPHK=None, impl: str = "xla"
):
  """One query at position `pos` against the ring buffer (already holding pos) and the
  persistent keys."""
  valid_W = ring_slot_positions(pos, window) >= 0
  k, v, mask = k_ring_BWHK, v_ring_BWHK, valid_W
  if pk_BPHK is not None:
    k = jnp.concatenate([pk_BPHK.astype(k.dtype), k], axis=1)
    v = jnp.concatenate([pv_BPHK.astype(v.dtype), v], axis=1)
    mask = jnp.concatenate([jnp.ones((pk_BPHK.shape[1],), bool), mask])
  return masked_attention(q_B1HK, k, v, mask[None, None, :], impl)


def segment_mask(
  num_queries: int, seg_len: int, num_persistent: int, with_memory: bool, query_offset=0
) -> jax.Array:
  """Q×(P + [S] + S) MAC mask over [P ‖ h ‖ x]: persistent always; h_j and x_j when
  j ≤ the query's slot in the segment (causal; h_j depends on x_≤j)."""
  i = jnp.arange(num_queries)[:, None] + query_offset
  j = jnp.arange(seg_len)[None, :]
  causal = j <= i
  parts = [jnp.ones((num_queries, num_persistent), bool)] if num_persistent else []
  parts += [causal, causal] if with_memory else [causal]
  return jnp.concatenate(parts, axis=-1)


@jax.named_scope("attention")
def segment_attention(
  q_BQHK, keys, values, mask_QC, impl: str = "xla", layout: Optional[tuple[int, int]] = None
):
  """Attention of a segment's queries over concatenated key groups ([P ‖ h ‖ x]).

  `layout` = (P, number of causal groups) says that `mask_QC` is `segment_mask` of a
  segment from its start (P persistent keys, then h and/or x of the queries' length):
  then "splash" can serve it; without it the mask is arbitrary and XLA computes it.
  """
  k = jnp.concatenate([k.astype(q_BQHK.dtype) for k in keys], axis=1)
  v = jnp.concatenate([v.astype(q_BQHK.dtype) for v in values], axis=1)
  impl = _resolve_impl(impl, q_BQHK.dtype)
  if impl == "splash" and layout is not None:
    P, groups = layout
    mask = _GroupedCausalMaskSpec(
      q_BQHK.shape[1], P, groups, q_BQHK.shape[1], window=q_BQHK.shape[1]
    )
    out = _splash(q_BQHK, k, v, mask)
    if out is not None:
      return out
  if impl == "splash":
    impl = "xla"
  return masked_attention(q_BQHK, k, v, mask_QC[None], impl)


# ------------------------------------------------------------------ TPU splash kernel ---

_SPLASH_DTYPES = (jnp.float32, jnp.bfloat16)
_BLOCK = 128  # splash's default q / kv block: sequences are padded to a multiple
#: (padded queries, padded keys) -> visible blocks of the mask last traced at that shape,
#: for cost models of compiled programs (XLA cannot see into the kernel; training.aot).
SPLASH_VISIBLE_BLOCKS: dict[tuple[int, int], int] = {}


def _splash_window_attention(
  q_BTHK, k_BTHK, v_BTHK, window, pk_BPHK, pv_BPHK, interpret: bool = False
):
  """Sliding-window splash attention over [P ‖ x]; None where the kernel cannot
  serve (the caller then uses XLA). `interpret=True`: the Pallas interpreter."""
  T = q_BTHK.shape[1]
  P = 0 if pk_BPHK is None else pk_BPHK.shape[1]
  if P:
    k_BTHK = jnp.concatenate([pk_BPHK.astype(k_BTHK.dtype), k_BTHK], axis=1)
    v_BTHK = jnp.concatenate([pv_BPHK.astype(v_BTHK.dtype), v_BTHK], axis=1)
  mask = _GroupedCausalMaskSpec(T, P, 1, T, window)
  if interpret:
    with splash_interpret():
      return _splash(q_BTHK, k_BTHK, v_BTHK, mask)
  return _splash(q_BTHK, k_BTHK, v_BTHK, mask)


class _GroupedCausalMaskSpec(tuple):
  """(Q, P, groups, G, window): keys [P persistent ‖ `groups` groups of G keys]; query
  i sees every persistent key and key j of each group when i − W < j ≤ i.

  SWA is one group of T keys with the window W; a MAC segment of L tokens is two
  groups (h, x) of L keys with no window (W = L). Hashable: splash caches the block
  structure per mask."""

  def __new__(cls, num_queries, num_persistent, groups, group_len, window):
    return super().__new__(cls, (num_queries, num_persistent, groups, group_len, window))

  def visible_blocks(self, Qp: int, Cp: int, block: int = _BLOCK) -> int:
    """(query block, key block) pairs of the padded Qp×Cp problem holding any
    visible pair: the blocks splash computes (it skips the others)."""
    Q, P, groups, G, W = self
    q0 = np.arange(Qp // block)[:, None] * block
    k0 = np.arange(Cp // block)[None, :] * block
    q1, k1 = q0 + block - 1, k0 + block - 1
    qmax = np.minimum(q1, Q - 1)
    vis = (k0 < P) | ((q1 >= Q) & (k0 == 0))
    for g in range(groups):
      s = P + g * G
      lo_key, hi_key = np.maximum(k0, s) - s, np.minimum(k1, s + G - 1) - s
      lo_vis, hi_vis = np.maximum(0, q0 - W + 1), np.minimum(qmax, G - 1)
      vis = vis | (
        (lo_key <= hi_key) & (q0 < Q) & (np.maximum(lo_key, lo_vis) <= np.minimum(hi_key, hi_vis))
      )
    return int(vis.sum())

  def splash_mask(self, sm, shape):
    Q, P, groups, G, W = self

    def mask_function(q_ids, kv_ids):
      vis = kv_ids < P
      for g in range(groups):
        j = kv_ids - (P + g * G)
        vis = vis | ((j >= 0) & (j < G) & (j <= q_ids) & (q_ids - j < W))
      # padded queries (dropped afterwards) see key 0, so no row is empty
      return vis | ((q_ids >= Q) & (kv_ids == 0))

    spec = tuple(self) + tuple(shape)

    class GroupedCausalMask(sm._ComputableMask):
      def __init__(self):
        super().__init__(shape=shape, mask_function=mask_function)

      def __eq__(self, other):
        return isinstance(other, GroupedCausalMask) and hash(self) == hash(other)

      def __hash__(self):
        return hash(("GroupedCausalMask",) + spec)

    return GroupedCausalMask()


def _splash(q_BQHK, k_BCHK, v_BCHK, mask_spec: _GroupedCausalMaskSpec):
  """softmax(q kᵀ/√K + mask) v by the splash kernel, sharded over the active mesh's
  batch axes and heads with `shard_map`; None (after a one-line notice, once) where
  the kernel cannot serve."""
  interpret = _INTERPRET.get()
  platform = target_platform()
  if platform != "tpu" and not interpret:
    _notice_once(f"attention: splash needs a TPU (tracing for {platform}); using XLA")
    return None
  if jnp.dtype(q_BQHK.dtype) not in _SPLASH_DTYPES:
    _notice_once(f"attention: splash takes float32/bfloat16, not {q_BQHK.dtype}; using XLA")
    return None
  try:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_mask as sm,
    )
  except ImportError:  # pragma: no cover - depends on the JAX build
    _notice_once("attention: this JAX has no Pallas splash attention; using XLA")
    return None
  Q, K = q_BQHK.shape[1], q_BQHK.shape[-1]
  C = k_BCHK.shape[1]
  Qp, Cp = -(-Q // _BLOCK) * _BLOCK, -(-C // _BLOCK) * _BLOCK
  scale = 1.0 / math.sqrt(K)
  SPLASH_VISIBLE_BLOCKS[(Qp, Cp)] = mask_spec.visible_blocks(Qp, Cp)

  def local(q, k, v):
    """One device's batch rows and heads (q: b×Q×h×K)."""
    h = q.shape[2]
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
    q, k, v = pad(q * jnp.asarray(scale, q.dtype), Qp), pad(k, Cp), pad(v, Cp)
    mask = sm.MultiHeadMask([mask_spec.splash_mask(sm, (Qp, Cp))] * h)
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    to_HTK = lambda x: jnp.swapaxes(x, 0, 1)
    out = jax.vmap(lambda q, k, v: kernel(to_HTK(q), to_HTK(k), to_HTK(v)))(q, k, v)
    return jnp.swapaxes(out, 1, 2)[:, :Q]

  mesh = rules_lib.active_mesh()
  try:
    if mesh is None or mesh.size == 1:
      return local(q_BQHK, k_BCHK, v_BCHK)
    # Mosaic kernels are not partitioned by XLA: run one per device on its rows and
    # heads (the same spec as the constrained activations; mesh axes that do not
    # divide B or H replicate the work).
    names = ("batch", None, "act_heads", None)
    rules = rules_lib.active_rules()
    spec = rules_lib.logical_to_spec(names, q_BQHK.shape, mesh, rules)
    kv_spec = rules_lib.logical_to_spec(names, k_BCHK.shape, mesh, rules)
    return jax.shard_map(
      local, mesh=mesh, in_specs=(spec, kv_spec, kv_spec), out_specs=spec, check_vma=False
    )(q_BQHK, k_BCHK, v_BCHK)
  except (NotImplementedError, ValueError) as e:  # a shape the kernel does not take
    _notice_once(
      f"attention: splash cannot serve q{tuple(q_BQHK.shape)} "
      f"k{tuple(k_BCHK.shape)} ({type(e).__name__}: {str(e)[:120]}); using XLA"
    )
    return None


# -------------------------------------------------------------------- projections ---


class AttentionProjections(nnx.Module):
  """q/k/v projections D → H×K and the output projection H×K → D."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    shape, names = (dim, heads, head_dim), ("embed", "heads", "kv")
    self.wq = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
    self.wk = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
    self.wv = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
    self.wo = Linear(
      (heads, head_dim, dim), ("heads", "kv", "embed"), "BTHK,HKD->BTD", heads * head_dim, **kw
    )

  def qkv(self, x_BTD):
    return self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)

  def kv(self, x_BTD):
    return self.wk(x_BTD), self.wv(x_BTD)

  def out(self, y_BTHK):
    return self.wo(y_BTHK)
