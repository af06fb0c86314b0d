"""Attention kernels: block-local sliding-window attention in O(T·W), segment and decode
attention, all over an optional prefix of persistent keys/values that every query sees.

Window semantics: query t sees keys t−W+1 … t (W keys, itself included) plus the N_p
persistent keys. Implementations (`impl`):
  * "xla": einsum + fp32 softmax; runs everywhere (the reference path).
  * "dot_product": jax.nn.dot_product_attention, letting JAX pick the kernel.
  * "cudnn": jax.nn.dot_product_attention(implementation="cudnn") (GPU, bf16/fp16).
  * "splash": TPU Pallas splash attention (sliding window only); elsewhere it falls
    back to "xla".
  * "auto": cudnn on GPU for half-precision inputs, splash on TPU, else xla.
No path ever builds a T×T mask or score matrix: the sliding window is computed over
blocks of W queries, each attending to its own and the previous block of keys.

Axis legend: B batch (any leading axes), T tokens, N blocks of W queries, W window,
C keys per block (N_p + 2W), P persistent tokens, H heads, K head width, Q queries.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from titans_jax.layers.basic import Linear

IMPLS = ("auto", "xla", "dot_product", "cudnn", "splash")


def _resolve_impl(impl: str, dtype) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if backend == "tpu":
        return "splash"
    return "xla"


def _xla_attention(q_BQHK, k_BCHK, v_BCHK, mask_BQC):
    scale = 1.0 / math.sqrt(q_BQHK.shape[-1])
    s_BHQC = jnp.einsum("BQHK,BCHK->BHQC", q_BQHK, k_BCHK,
                        preferred_element_type=jnp.promote_types(q_BQHK.dtype, jnp.float32)) * scale
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
            q, k, v, mask=mask[:, None], implementation=None if impl == "dot_product" else "cudnn")
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
    local = (j > i) & (j <= i + W)                                # q − k ∈ [0, W)
    first = local & (j >= W)                                      # block 0: no previous block
    blocks = jnp.concatenate([first[None], jnp.broadcast_to(local, (num_blocks - 1, W, 2 * W))])
    if num_persistent:
        blocks = jnp.concatenate(
            [jnp.ones((num_blocks, W, num_persistent), bool), blocks], axis=-1)
    return blocks


@jax.named_scope("attention")   # perf.profile groups ops by scope
def sliding_window_attention(q_BTHK, k_BTHK, v_BTHK, window: int,
                             pk_BPHK: Optional[jax.Array] = None,
                             pv_BPHK: Optional[jax.Array] = None,
                             impl: str = "xla"):
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


def ring_slot_positions(pos: jax.Array, window: int) -> jax.Array:
    """Absolute position held by each slot of a W-slot ring buffer after writing `pos`
    at slot pos % W (negative: slot never written)."""
    s = jnp.arange(window)
    return pos - jnp.mod(pos - s, window)


@jax.named_scope("attention")
def decode_window_attention(q_B1HK, k_ring_BWHK, v_ring_BWHK, pos, window: int,
                            pk_BPHK=None, pv_BPHK=None, impl: str = "xla"):
    """One query at position `pos` against the ring buffer (already holding pos) and the
    persistent keys."""
    valid_W = ring_slot_positions(pos, window) >= 0
    k, v, mask = k_ring_BWHK, v_ring_BWHK, valid_W
    if pk_BPHK is not None:
        k = jnp.concatenate([pk_BPHK.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([pv_BPHK.astype(v.dtype), v], axis=1)
        mask = jnp.concatenate([jnp.ones((pk_BPHK.shape[1],), bool), mask])
    return masked_attention(q_B1HK, k, v, mask[None, None, :], impl)


def segment_mask(num_queries: int, seg_len: int, num_persistent: int, with_memory: bool,
                 query_offset=0) -> jax.Array:
    """Q×(P + [S] + S) MAC mask over [P ‖ h ‖ x]: persistent always; h_j and x_j when
    j ≤ the query's slot in the segment (causal; h_j depends on x_≤j)."""
    i = jnp.arange(num_queries)[:, None] + query_offset
    j = jnp.arange(seg_len)[None, :]
    causal = j <= i
    parts = [jnp.ones((num_queries, num_persistent), bool)] if num_persistent else []
    parts += [causal, causal] if with_memory else [causal]
    return jnp.concatenate(parts, axis=-1)


@jax.named_scope("attention")
def segment_attention(q_BQHK, keys, values, mask_QC, impl: str = "xla"):
    """Attention of a segment's queries over concatenated key groups ([P ‖ h ‖ x])."""
    k = jnp.concatenate([k.astype(q_BQHK.dtype) for k in keys], axis=1)
    v = jnp.concatenate([v.astype(q_BQHK.dtype) for v in values], axis=1)
    return masked_attention(q_BQHK, k, v, mask_QC[None], impl)


# ------------------------------------------------------------------ TPU splash kernel ---

def _splash_window_attention(q_BTHK, k_BTHK, v_BTHK, window, pk_BPHK, pv_BPHK,
                             interpret: bool = False):
    """Splash attention (Pallas, TPU) over [P ‖ x] with a persistent-or-local mask.

    Returns None where the kernel is unavailable (no TPU, or no Pallas TPU ops in this
    JAX build), so that the caller falls back to XLA. `interpret=True` runs the kernel
    in the Pallas interpreter on any backend (tests).
    """
    if jax.default_backend() != "tpu" and not interpret:
        return None
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import (
            splash_attention_kernel as sk, splash_attention_mask as sm)
    except ImportError:  # pragma: no cover - depends on the JAX build
        return None
    B, T, H, K = q_BTHK.shape
    P = 0 if pk_BPHK is None else pk_BPHK.shape[1]
    # Pad queries and keys to the kernel's 128-token blocks; the mask hides padded keys
    # from real queries (they lie after every real query), padded queries are dropped.
    Tq = -(-T // 128) * 128
    kv_len = -(-(Tq + P) // 128) * 128
    if P:
        k_BTHK = jnp.concatenate([jnp.broadcast_to(pk_BPHK, (B, P, H, K)).astype(k_BTHK.dtype),
                                  k_BTHK], axis=1)
        v_BTHK = jnp.concatenate([jnp.broadcast_to(pv_BPHK, (B, P, H, K)).astype(v_BTHK.dtype),
                                  v_BTHK], axis=1)
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
    q_BTHK, k_BTHK, v_BTHK = pad(q_BTHK, Tq), pad(k_BTHK, kv_len), pad(v_BTHK, kv_len)
    mask = sm.MultiHeadMask([_persistent_local_mask(sm, (Tq, kv_len), window, P)] * H)
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = 1.0 / math.sqrt(K)
    to_HTK = lambda x: jnp.swapaxes(x, 0, 1)
    out = jax.vmap(lambda q, k, v: kernel(to_HTK(q) * scale, to_HTK(k), to_HTK(v)))(
        q_BTHK, k_BTHK, v_BTHK)
    return jnp.swapaxes(out, 1, 2)[:, :T]


def _persistent_local_mask(sm, shape, window: int, num_persistent: int):
    """A lazy splash mask over keys [P ‖ x]: persistent keys always, x within the causal
    window. (Splash needs masks to be hashable to cache their block structure.)"""

    class PersistentLocalMask(sm._ComputableMask):
        def __init__(self):
            def mask_function(q_ids, kv_ids):
                kx = kv_ids - num_persistent
                return (kv_ids < num_persistent) | ((kx <= q_ids) & (q_ids - kx < window))
            super().__init__(shape=shape, mask_function=mask_function)

        def __eq__(self, other):
            return isinstance(other, PersistentLocalMask) and hash(self) == hash(other)

        def __hash__(self):
            return hash(("PersistentLocalMask", self.shape, window, num_persistent))

    return PersistentLocalMask()


# -------------------------------------------------------------------- projections ---

class AttentionProjections(nnx.Module):
    """q/k/v projections D → H×K and the output projection H×K → D."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        shape, names = (dim, heads, head_dim), ("embed", "heads", "kv")
        self.wq = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
        self.wk = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
        self.wv = Linear(shape, names, "BTD,DHK->BTHK", dim, **kw)
        self.wo = Linear((heads, head_dim, dim), ("heads", "kv", "embed"), "BTHK,HKD->BTD",
                         heads * head_dim, **kw)

    def qkv(self, x_BTD):
        return self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)

    def kv(self, x_BTD):
        return self.wk(x_BTD), self.wv(x_BTD)

    def out(self, y_BTHK):
        return self.wo(y_BTHK)
