"""MAL blocks with the persistent tokens taken out of one path (probe.py's "patch")."""

import jax.numpy as jnp

from titans_jax.models.blocks import Block


def mal_no_attn_p(self, h, want_cache):
  """The memory still reads [P ‖ h]; the attention sees no persistent keys."""
  P = self._persistent_tokens(h.shape[0])
  m, _ = self.memory(jnp.concatenate([P, h], axis=1))
  y, cache = self._window_attention(m[:, self._num_p :], None, None, want_cache)
  return self.attn.out(y), cache


def mal_no_mem_p(self, h, want_cache):
  """The memory reads h alone; the attention's persistent keys are kv(P), as in MAG."""
  m, _ = self.memory(h)
  pk, pv = self._persistent_kv(h.shape[0])
  y, cache = self._window_attention(m, pk, pv, want_cache)
  return self.attn.out(y), cache


def mal_no_p(self, h, want_cache):
  """Neither path sees P (the parameter still exists: the initialisation is unchanged)."""
  m, _ = self.memory(h)
  y, cache = self._window_attention(m, None, None, want_cache)
  return self.attn.out(y), cache


def mal_residual(self, h, want_cache):
  """MAL as a stacked memory layer: the memory's output also reaches the residual stream
  directly (o = out(SWA(m)) + m), not only through the attention's weight on its own
  position."""
  P = self._persistent_tokens(h.shape[0])
  m, _ = self.memory(jnp.concatenate([P, h], axis=1))
  pk, pv = self.attn.kv(m[:, : self._num_p])
  y, cache = self._window_attention(m[:, self._num_p :], pk, pv, want_cache)
  return self.attn.out(y) + m[:, self._num_p :], cache


def _mac_segment_variant(self, carry, x_BLD, pk, pv, write_input, retrieval_residual):
  from titans_jax.layers import attention as attn_lib

  S, L = self.cfg.segment_len, x_BLD.shape[1]
  j = jnp.arange(L)
  q, k, v = self.attn.qkv(x_BLD)
  q, k = self._rope(q, j + S), self._rope(k, j + S)
  mem, rconv = carry
  hret, rconv = self._retrieve(x_BLD, mem["weights"], rconv)
  hk, hv = self.attn.kv(hret)
  hk = self._rope(hk, j)
  keys, values = [pk, hk, k], [pv, hv, v]
  mask = attn_lib.segment_mask(L, L, self._num_p, True)
  y = attn_lib.segment_attention(q, keys, values, mask, impl=self.cfg.attn_impl)
  y_D = self._merge(y)
  m, mem = self.memory(x_BLD if write_input else y_D, mem)
  o = self.attn.out(self._split(self._gate(y_D, m)))
  if retrieval_residual:
    o = o + hret.astype(o.dtype)
  return (mem, rconv), o, {"k": k, "v": v}, {}


def mac_write_input(self, carry, x_BLD, pk, pv, with_memory):
  """MAC whose memory stores the segment's input x (as MAG's, and titans-pytorch's MAC)
  instead of the attention's output y: it is written with k(x), v(x) and read with q(x),
  one representation. The output is still y ⊗ σ(M(x)) after the segment's update."""
  assert with_memory
  return _mac_segment_variant(self, carry, x_BLD, pk, pv, True, False)


def mac_retrieval_residual(self, carry, x_BLD, pk, pv, with_memory):
  """The paper's MAC (memory written with y) whose retrieval h = M*(q(x)) also joins
  the residual stream (o = W_o·(y ⊗ σ(M(y))) + h), as MAL's memory output does."""
  assert with_memory
  return _mac_segment_variant(self, carry, x_BLD, pk, pv, False, True)


def mac_input_and_residual(self, carry, x_BLD, pk, pv, with_memory):
  """Both: the memory stores x, and its retrieval h joins the residual stream."""
  assert with_memory
  return _mac_segment_variant(self, carry, x_BLD, pk, pv, True, True)


PATCHES = {
  f.__name__: f
  for f in (
    mal_no_attn_p,
    mal_no_mem_p,
    mal_no_p,
    mal_residual,
    mac_write_input,
    mac_retrieval_residual,
    mac_input_and_residual,
  )
}


def apply(name):
  setattr(Block, "_mac_segment" if name.startswith("mac_") else "_mal", PATCHES[name])
