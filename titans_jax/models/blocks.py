"""One pre-norm residual block per layer, its sequence mixer chosen by `kind`:

  x ← x + Mixer(RMSNorm(x));   x ← x + SwiGLU(RMSNorm(x))

Mixers (docs/spec.md §2; h = the normed block input, P = the layer's persistent tokens):
  swa — sliding-window attention over [P ‖ h] (P unrotated, always visible).
  mag — y = SWA([P ‖ h]), m = M([P ‖ h]) (the memory also reads P first);
        o = RMSNorm(y) ⊙ σ(RMSNorm(m)), then the output projection.
  mal — y = M([P ‖ h]); o = SWA(y) with y's P-part as the persistent keys, plus y
        itself when cfg.mal_residual (the memory then reaches the residual stream
        directly, not only through the attention).
  lmm — the memory alone: o = M(h).
  mac — segments S_i of length S: h_i = M*_{i−1}(q(S_i)) (retrieval from the weights at
        the segment's start, no update); y_i = Attn([P ‖ h_i ‖ S_i]) with causal masking
        inside the segment (query j sees h_≤j and S_≤j: h_j depends on x_≤j); the memory
        is updated with y_i and read back causally (m = M(y_i), each token reading the
        weights after the last chunk it completes); o_i = RMSNorm(y_i) ⊙ σ(RMSNorm(m)),
        plus h_i itself after the output projection when cfg.mac_retrieval_residual.
  seg — MAC's attention over [P ‖ S_i] for layers without a memory.

Every mixer has a full-sequence form (`forward`, from position 0, optionally returning
the decode cache) and a one-token form (`decode`) that continues from that cache.
RoPE: absolute positions for swa/mag/mal; inside a MAC segment h_j sits at position j
and x_j at S + j (attention never crosses a segment, so only these offsets matter).

Intermediates: under `nnx.capture(model, nnx.Intermediate)` each block sows per-position
statistics of its mixer (`_mixer_stats`: gate σ mean/std/min/max for MAG/MAC, the norms
of the memory and attention outputs, the memory's inner loss and θ before its update).
Without a capture they are not computed at all (`capturing`), so the normal program is
unchanged. Blocks run under lax.scan: the model collects a scanned block's sown values
as scan outputs (`Titans._scan_run`), MAC's segment scan does the same here.

Axis legend: B batch, T tokens, D model width, H heads, K head width, P persistent
tokens, W window (ring-buffer slots), S segment length, N segments.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from titans_jax import memory as memory_lib
from titans_jax.layers import attention as attn_lib
from titans_jax.layers.attention import AttentionProjections
from titans_jax.layers.basic import RMSNorm, param
from titans_jax.layers.ffn import SwiGLU
from titans_jax.layers.rope import apply_rope
from titans_jax.memory.module import NeuralMemory
from titans_jax.models.config import TitansConfig
from titans_jax.sharding import constrain
from titans_jax.sharding.rules import ACT_BTD, ACT_BTHK

Cache = dict[str, Any]
KINDS = ("swa", "mag", "mal", "lmm", "mac", "seg")
MAC_SEGMENT_SAVED_NAME = "mac_segment_saved"  # each segment's carry and output (a remat name)


def _named_segment_step(step):
  """MAC's rematerialised segment step with its carry in and its output named, so that
  the layer's remat policy can keep them (one memory state and one B×S×D output a
  segment) and the layer's rerun in the backward need not run the segment scan."""

  def named(carry, x_BSD):
    carry, (o, stats) = step(checkpoint_name(carry, MAC_SEGMENT_SAVED_NAME), x_BSD)
    return carry, (checkpoint_name(o, MAC_SEGMENT_SAVED_NAME), stats)

  return named


def capturing(module: nnx.Module) -> bool:
  """Whether `nnx.capture(..., nnx.Intermediate)` is recording this module's sows.

  (nnx.capture marks every module it records with `__captures__`, the attribute
  `Module.sow` itself checks; outside a capture sow would store into the module.)"""
  return any(isinstance(v, nnx.Intermediate) for v in getattr(module, "__captures__", ()))


class Block(nnx.Module):
  def __init__(self, cfg: TitansConfig, kind: str, *, rngs: nnx.Rngs):
    if kind not in KINDS:
      raise ValueError(f"unknown block kind {kind!r}; expected one of {KINDS}")
    self.cfg, self.kind = cfg, kind
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    D = cfg.dim
    self.mix_norm = RMSNorm(D, param_dtype=pdt, eps=cfg.norm_eps)
    self.ffn_norm = RMSNorm(D, param_dtype=pdt, eps=cfg.norm_eps)
    self.ffn = SwiGLU(D, cfg.hidden, dtype=dt, param_dtype=pdt, rngs=rngs)
    if kind != "lmm":
      self.attn = AttentionProjections(
        D, cfg.heads, cfg.head_dim, dtype=dt, param_dtype=pdt, rngs=rngs
      )
      if cfg.num_persistent:
        self.persistent = param(
          jax.random.normal(rngs.params(), (cfg.num_persistent, D), jnp.float32).astype(pdt),
          ("persist", "embed"),
        )
    if kind in ("mag", "mal", "lmm", "mac"):
      self.memory = NeuralMemory(cfg.memory_config, rngs=rngs)
    if kind in ("mag", "mac"):
      self.gate_norm_y = RMSNorm(D, param_dtype=pdt, eps=cfg.norm_eps)
      self.gate_norm_m = RMSNorm(D, param_dtype=pdt, eps=cfg.norm_eps)

  # ------------------------------------------------------------------ helpers ---
  @property
  def _num_p(self) -> int:
    return self.cfg.num_persistent if self.kind != "lmm" else 0

  def _persistent_tokens(self, batch: int) -> Optional[jax.Array]:
    if not self._num_p:
      return None
    p = self.persistent[...].astype(jnp.dtype(self.cfg.dtype))
    return jnp.broadcast_to(p[None], (batch,) + p.shape)

  def _persistent_kv(self, batch: int):
    """Keys/values of the persistent tokens (no RoPE): B×P×H×K each, or Nones."""
    if not self._num_p:
      return None, None
    pk, pv = self.attn.kv(self.persistent[...][None])
    shape = (batch,) + pk.shape[1:]
    return jnp.broadcast_to(pk, shape), jnp.broadcast_to(pv, shape)

  def _gate(self, y_BTD, m_BTD):
    """The MAG / MAC gate: RMSNorm(y) ⊙ σ(RMSNorm(m))."""
    f = jnp.promote_types(y_BTD.dtype, jnp.float32)
    g = jax.nn.sigmoid(self.gate_norm_m(m_BTD).astype(f))
    return (self.gate_norm_y(y_BTD).astype(f) * g).astype(y_BTD.dtype)

  def _mixer_stats(self, y_BTD=None, m_BTD=None, mem_in=None, mem_state=None, skip=0):
    """Per-position (T) statistics of one mixer call, averaged over the batch:
    attention_norm ‖y_t‖, memory_norm ‖m_t‖, for MAG/MAC the gate σ(RMSNorm(m))
    mean/std/min/max over features, and from `memory.diagnostics` on the memory's
    input `mem_in` (the first `skip` positions are persistent tokens, dropped)
    memory_loss ℓ_t at the weights before the token's chunk is applied and
    memory_theta θ_t (both averaged over heads)."""
    f = jnp.promote_types(jnp.dtype(self.cfg.dtype), jnp.float32)
    stats = {}

    def norm(t_BTD):
      return jnp.sqrt(jnp.square(t_BTD.astype(f)).sum(-1)).mean(0)

    if y_BTD is not None:
      stats["attention_norm"] = norm(y_BTD)
    if m_BTD is not None:
      stats["memory_norm"] = norm(m_BTD)
      if self.kind in ("mag", "mac"):
        g = jax.nn.sigmoid(self.gate_norm_m(m_BTD).astype(f))
        stats.update(
          gate_mean=g.mean((0, 2)),
          gate_std=g.std((0, 2)),
          gate_min=g.min((0, 2)),
          gate_max=g.max((0, 2)),
        )
    if mem_in is not None:
      d = memory_lib.diagnostics(
        self.memory.param_tree(), mem_in, self.cfg.memory_config, mem_state
      )
      stats["memory_loss"] = d["inner_loss"][:, skip:].mean((0, 2)).astype(f)
      stats["memory_theta"] = d["theta"][:, skip:].mean((0, 2)).astype(f)
    return stats

  def _attention_stats(self, q_BTHK, k_BTHK, pk_BPHK):
    """Where the window attention looks, per query position (T), averaged over batch
    and heads: attention_self, the weight on the query's own position (MAL reads its
    memory's retrieval there), and attention_persistent, the total on the persistent
    tokens."""
    p_BHTC = attn_lib.window_attention_probs(q_BTHK, k_BTHK, self.cfg.window, pk_BPHK)
    P = p_BHTC.shape[-1] - p_BHTC.shape[-2]
    own = jnp.diagonal(p_BHTC[..., P:], axis1=-2, axis2=-1)  # B×H×T
    return {
      "attention_self": own.mean((0, 1)),
      "attention_persistent": p_BHTC[..., :P].sum(-1).mean((0, 1)),
    }

  def _retrieval_stats(self, q_BLHK, keys, mask_QC, L: int):
    """Where MAC's segment attention looks, per query slot (L), averaged over batch and
    heads: attention_retrieval, the total weight on the retrieved tokens h_≤j;
    attention_retrieval_self, on h_j (the retrieval with the query's own token — where
    a key's stored value comes back); attention_persistent, on the persistent tokens."""
    p_BHQC = attn_lib.segment_attention_probs(q_BLHK, keys, mask_QC)
    P = self._num_p
    h_BHQL = p_BHQC[..., P : P + L]
    return {
      "attention_retrieval": h_BHQL.sum(-1).mean((0, 1)),
      "attention_retrieval_self": jnp.diagonal(h_BHQL, axis1=-2, axis2=-1).mean((0, 1)),
      "attention_persistent": p_BHQC[..., :P].sum(-1).mean((0, 1)),
    }

  def _sow_stats(self, stats: dict):
    for name, value in stats.items():
      self.sow(nnx.Intermediate, name, value)

  def _merge(self, y_BTHK):
    return y_BTHK.reshape(y_BTHK.shape[:2] + (-1,))

  def _split(self, y_BTD):
    return y_BTD.reshape(y_BTD.shape[:2] + (self.cfg.heads, self.cfg.head_dim))

  def _rope(self, x_BTHK, positions_T):
    return apply_rope(x_BTHK, positions_T, self.cfg.rope_base)

  # ------------------------------------------------------------ full sequence ---
  def __call__(self, x_BTD: jax.Array, want_cache: bool = False):
    h = self.mix_norm(x_BTD)
    mix, cache = getattr(self, f"_{self.kind}")(h, want_cache)
    x_BTD = x_BTD + constrain(mix, ACT_BTD).astype(x_BTD.dtype)
    x_BTD = x_BTD + self.ffn(self.ffn_norm(x_BTD)).astype(x_BTD.dtype)
    return x_BTD, cache

  def _window_attention(self, src_BTD, pk, pv, want_cache):
    """RoPE'd SWA of src over itself (+ persistent keys); returns B×T×H×K and the
    ring-buffer cache."""
    T = src_BTD.shape[1]
    positions = jnp.arange(T)
    q, k, v = (constrain(t, ACT_BTHK) for t in self.attn.qkv(src_BTD))
    q, k = self._rope(q, positions), self._rope(k, positions)
    y = attn_lib.sliding_window_attention(q, k, v, self.cfg.window, pk, pv, impl=self.cfg.attn_impl)
    if capturing(self):
      self._sow_stats(self._attention_stats(q, k, pk))
    cache = None
    if want_cache:
      W = self.cfg.window
      slot_pos = attn_lib.ring_slot_positions(jnp.asarray(T - 1), W)
      valid = (slot_pos >= 0)[None, :, None, None]
      idx = jnp.clip(slot_pos, 0, T - 1)
      cache = {"k": jnp.where(valid, k[:, idx], 0), "v": jnp.where(valid, v[:, idx], 0)}
      if pk is not None:
        cache.update(pk=pk, pv=pv)
    return y, cache

  def _swa(self, h, want_cache):
    pk, pv = self._persistent_kv(h.shape[0])
    y, cache = self._window_attention(h, pk, pv, want_cache)
    if capturing(self):
      self._sow_stats(self._mixer_stats(self._merge(y)))
    return self.attn.out(y), cache

  def _mag(self, h, want_cache):
    B = h.shape[0]
    pk, pv = self._persistent_kv(B)
    y, cache = self._window_attention(h, pk, pv, want_cache)
    P = self._persistent_tokens(B)
    xt = h if P is None else jnp.concatenate([P, h], axis=1)
    m, mem = self.memory(xt)
    m = m[:, self._num_p :]
    if capturing(self):
      self._sow_stats(self._mixer_stats(self._merge(y), m, xt, skip=self._num_p))
    o = self._gate(self._merge(y), m)
    if want_cache:
      cache["mem"] = mem
    return self.attn.out(self._split(o)), cache

  def _mal(self, h, want_cache):
    B = h.shape[0]
    P = self._persistent_tokens(B)
    xt = h if P is None else jnp.concatenate([P, h], axis=1)
    m, mem = self.memory(xt)
    pk = pv = None
    if P is not None:
      pk, pv = self.attn.kv(m[:, : self._num_p])
    y, cache = self._window_attention(m[:, self._num_p :], pk, pv, want_cache)
    if capturing(self):
      self._sow_stats(self._mixer_stats(self._merge(y), m[:, self._num_p :], xt, skip=self._num_p))
    if want_cache:
      cache["mem"] = mem
    return self._mal_out(y, m[:, self._num_p :]), cache

  def _mal_out(self, y_BTHK, m_BTD):
    o = self.attn.out(y_BTHK)
    return o + m_BTD.astype(o.dtype) if self.cfg.mal_residual else o

  def _lmm(self, h, want_cache):
    m, mem = self.memory(h)
    if capturing(self):
      self._sow_stats(self._mixer_stats(None, m, h))
    return m, ({"mem": mem} if want_cache else None)

  # MAC ---------------------------------------------------------------------------
  def _retrieve(self, x_BTD, weights, conv):
    """h = M*(q(x)) with fixed fast weights (no update); `conv` is the causal-conv
    context of the retrieval stream. Returns (h_BTD, new_conv)."""
    mcfg = self.cfg.memory_config
    y, new_conv = memory_lib.retrieve(self.memory.param_tree(), x_BTD, mcfg, weights, conv)
    return constrain(y.astype(x_BTD.dtype), ACT_BTD), new_conv

  def _mac_segment(self, carry, x_BLD, pk, pv, with_memory: bool):
    """One (possibly partial, length L ≤ S) segment from its start.

    carry: (memory state, retrieval conv context) or None for 'seg' blocks.
    Returns (new carry, mixer output B×L×D, the segment's keys/values for a cache,
    the segment's `_mixer_stats` when capturing, else {}).
    """
    S, L = self.cfg.segment_len, x_BLD.shape[1]
    j = jnp.arange(L)
    q, k, v = self.attn.qkv(x_BLD)
    q, k = self._rope(q, j + S), self._rope(k, j + S)
    keys, values, kv = [k], [v], {"k": k, "v": v}
    if with_memory:
      mem, rconv = carry
      hret, rconv = self._retrieve(x_BLD, mem["weights"], rconv)
      hk, hv = self.attn.kv(hret)
      hk = self._rope(hk, j)
      keys, values = [hk] + keys, [hv] + values
      kv.update(hk=hk, hv=hv)
    if pk is not None:
      keys, values = [pk] + keys, [pv] + values
    mask = attn_lib.segment_mask(L, L, self._num_p, with_memory)
    y = attn_lib.segment_attention(
      q, keys, values, mask, impl=self.cfg.attn_impl, layout=(self._num_p, 2 if with_memory else 1)
    )
    if not with_memory:
      stats = self._mixer_stats(self._merge(y)) if capturing(self) else {}
      return carry, self.attn.out(y), kv, stats
    y_D = constrain(self._merge(y), ACT_BTD)
    stats_state = mem
    m, mem = self.memory(y_D, mem)
    stats = {}
    if capturing(self):
      stats = self._mixer_stats(y_D, m, y_D, stats_state)
      stats.update(self._retrieval_stats(q, keys, mask, L))
    o = constrain(self._gate(y_D, m), ACT_BTD)
    return (mem, rconv), self._mac_out(o, hret), kv, stats

  def _mac_out(self, o_BLD, hret_BLD):
    out = self.attn.out(self._split(o_BLD))
    return out + hret_BLD.astype(out.dtype) if self.cfg.mac_retrieval_residual else out

  def _mac_forward(self, h, want_cache, with_memory):
    B, T, D = h.shape
    S = self.cfg.segment_len
    pk, pv = self._persistent_kv(B)
    carry = None
    if with_memory:
      mem0 = self.memory.init_state(B)
      carry = (mem0, mem0["conv"])
    n, r = divmod(T, S)
    outs, stats = [], []
    if n:

      def step(c, x_BSD):
        # sown values cannot leave a scan body: the segments' stats are outputs
        c, o, _, st = self._mac_segment(c, x_BSD, pk, pv, with_memory)
        return c, (o, st)

      xs = jnp.moveaxis(h[:, : n * S].reshape(B, n, S, D), 1, 0)
      if self.cfg.mac_segment_remat:
        # keep only the carry per segment: the memory's per-chunk weights of every
        # segment cost more to stack and reload than to recompute
        step = _named_segment_step(jax.checkpoint(step, prevent_cse=False))
      carry, (o_NBSD, st_NS) = lax.scan(step, carry, xs)
      outs.append(jnp.moveaxis(o_NBSD, 0, 1).reshape(B, n * S, D))
      stats.append({k: v.reshape(n * S) for k, v in st_NS.items()})
    seg_start = carry
    kv = None
    if r:
      carry, o, kv, st = self._mac_segment(carry, h[:, n * S :], pk, pv, with_memory)
      outs.append(o)
      stats.append(st)
    out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    if capturing(self):
      self._sow_stats({k: jnp.concatenate([st[k] for st in stats]) for k in stats[0]})
    if not want_cache:
      return out, None
    H, K = self.cfg.heads, self.cfg.head_dim
    names = ("k", "v", "hk", "hv") if with_memory else ("k", "v")
    buf = {nm: jnp.zeros((B, S, H, K), out.dtype) for nm in names}
    if kv is not None:
      buf = {
        nm: lax.dynamic_update_slice_in_dim(buf[nm], kv[nm].astype(out.dtype), 0, 1) for nm in names
      }
    cache = dict(buf)
    if pk is not None:
      cache.update(pk=pk, pv=pv)
    if with_memory:
      cache.update(mem=carry[0], rconv=carry[1], seg_weights=seg_start[0]["weights"])
    return out, cache

  def _mac(self, h, want_cache):
    return self._mac_forward(h, want_cache, with_memory=True)

  def _seg(self, h, want_cache):
    return self._mac_forward(h, want_cache, with_memory=False)

  # ---------------------------------------------------------------- one token ---
  def decode(self, x_B1D: jax.Array, cache: Cache, pos: jax.Array):
    """Advance by one token at absolute position `pos` (a traced int32 scalar)."""
    h = self.mix_norm(x_B1D)
    mix, cache = getattr(self, f"_decode_{self.kind}")(h, cache, pos)
    x_B1D = x_B1D + mix.astype(x_B1D.dtype)
    x_B1D = x_B1D + self.ffn(self.ffn_norm(x_B1D)).astype(x_B1D.dtype)
    return x_B1D, cache

  def _decode_window(self, src_B1D, cache, pos):
    W = self.cfg.window
    q, k, v = self.attn.qkv(src_B1D)
    p = pos[None]
    q, k = self._rope(q, p), self._rope(k, p)
    slot = jnp.mod(pos, W)
    kr = lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), slot, 1)
    vr = lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), slot, 1)
    y = attn_lib.decode_window_attention(
      q, kr, vr, pos, W, cache.get("pk"), cache.get("pv"), impl=self.cfg.attn_impl
    )
    return y, {**cache, "k": kr, "v": vr}

  def _decode_swa(self, h, cache, pos):
    y, cache = self._decode_window(h, cache, pos)
    return self.attn.out(y), cache

  def _decode_mag(self, h, cache, pos):
    y, cache = self._decode_window(h, cache, pos)
    m, mem = self.memory(h, cache["mem"])
    o = self._gate(self._merge(y), m)
    return self.attn.out(self._split(o)), {**cache, "mem": mem}

  def _decode_mal(self, h, cache, pos):
    m, mem = self.memory(h, cache["mem"])
    y, cache = self._decode_window(m, cache, pos)
    return self._mal_out(y, m), {**cache, "mem": mem}

  def _decode_lmm(self, h, cache, pos):
    m, mem = self.memory(h, cache["mem"])
    return m, {"mem": mem}

  def _decode_segment(self, h, cache, pos, with_memory):
    S = self.cfg.segment_len
    j = jnp.mod(pos, S)
    q, k, v = self.attn.qkv(h)
    q, k = self._rope(q, (j + S)[None]), self._rope(k, (j + S)[None])
    new = {"k": k, "v": v}
    if with_memory:
      hret, rconv = self._retrieve(h, cache["seg_weights"], cache["rconv"])
      hk, hv = self.attn.kv(hret)
      new.update(hk=self._rope(hk, j[None]), hv=hv)
    cache = dict(cache)
    for nm, val in new.items():
      cache[nm] = lax.dynamic_update_slice_in_dim(cache[nm], val.astype(cache[nm].dtype), j, 1)
    keys = ([cache["hk"]] if with_memory else []) + [cache["k"]]
    values = ([cache["hv"]] if with_memory else []) + [cache["v"]]
    if "pk" in cache:
      keys, values = [cache["pk"]] + keys, [cache["pv"]] + values
    mask = attn_lib.segment_mask(1, S, self._num_p, with_memory, query_offset=j)
    y = attn_lib.segment_attention(q, keys, values, mask, impl=self.cfg.attn_impl)
    if not with_memory:
      return self.attn.out(y), cache
    y_D = self._merge(y)
    m, mem = self.memory(y_D, cache["mem"])
    out = self._mac_out(self._gate(y_D, m), hret)
    seg_done = j == S - 1
    # The next segment retrieves from the weights this one ends with.
    seg_weights = jax.tree.map(
      lambda new_, old: jnp.where(seg_done, new_, old), mem["weights"], cache["seg_weights"]
    )
    cache.update(mem=mem, rconv=rconv, seg_weights=seg_weights)
    return out, cache

  def _decode_mac(self, h, cache, pos):
    return self._decode_segment(h, cache, pos, with_memory=True)

  def _decode_seg(self, h, cache, pos):
    return self._decode_segment(h, cache, pos, with_memory=False)
