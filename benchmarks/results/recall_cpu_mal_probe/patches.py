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


PATCHES = {f.__name__: f for f in (mal_no_attn_p, mal_no_mem_p, mal_no_p, mal_residual)}


def apply(name):
  Block._mal = PATCHES[name]
