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


PATCHES = {f.__name__: f for f in (mal_no_attn_p, mal_no_mem_p, mal_no_p)}


def apply(name):
  Block._mal = PATCHES[name]
