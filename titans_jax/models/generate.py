"""Stateful generation: a jit-compiled prefill that returns the cache, a jit-compiled
one-token decode step, and sampling (greedy, temperature, top-k, top-p).

Axis legend: B batch, T prompt tokens, N new tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from titans_jax.models.model import Titans


@nnx.jit
def prefill(model: Titans, tokens_BT: jax.Array):
  """(logits B×T×V, cache) for a prompt starting at position 0."""
  return model.prefill(tokens_BT)


@nnx.jit
def decode_step(model: Titans, token_B: jax.Array, cache: dict[str, Any]):
  """(logits B×V, cache) for one more token."""
  return model.decode_step(token_B, cache)


def sample_logits(key, logits_BV, temperature: float, top_k: Optional[int], top_p: Optional[float]):
  """One token per row: argmax if temperature == 0, else a temperature / top-k /
  top-p (nucleus) filtered categorical sample."""
  logits = logits_BV.astype(jnp.float32)
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  neg = jnp.finfo(jnp.float32).min
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p is not None:
    sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always the top token)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_prompt(prompt_BT, vocab_size: int) -> jax.Array:
  """The prompt as int32 after checking its shape, dtype and id range (an id outside
  [0, vocab) would index past the embedding table and decode garbage; a float would be
  truncated)."""
  dtype = jnp.result_type(prompt_BT) if hasattr(prompt_BT, "dtype") else np.asarray(prompt_BT).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"prompt ids must be integers, got dtype {dtype}")
  shape = np.shape(prompt_BT)
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"prompt must be B×T with B, T ≥ 1, got shape {tuple(shape)}")
  lo, hi = int(jnp.min(prompt_BT)), int(jnp.max(prompt_BT))
  if lo < 0 or hi >= vocab_size:
    raise ValueError(f"prompt ids span [{lo}, {hi}], outside [0, vocab_size={vocab_size})")
  return jnp.asarray(prompt_BT, jnp.int32)


def generate(
  model: Titans,
  prompt_BT: jax.Array,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: Optional[int] = None,
  top_p: Optional[float] = None,
  seed: int = 0,
) -> jax.Array:
  """Continue `prompt_BT` by `max_new_tokens` tokens; returns B×(T + N) tokens.

  temperature 0 is greedy decoding. The prompt is prefilled once; each new token costs
  one jit-compiled decode step (O(W + S) attention and one memory step per layer).
  """
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and not (0 < top_k <= model.cfg.vocab_size):
    raise ValueError(f"top_k must be in [1, vocab_size], got {top_k}")
  if top_p is not None and not (0.0 < top_p <= 1.0):
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  prompt_BT = _check_prompt(prompt_BT, model.cfg.vocab_size)
  if max_new_tokens == 0:
    return prompt_BT
  logits_BTV, cache = prefill(model, prompt_BT)
  key = jax.random.key(seed)
  key, sub = jax.random.split(key)
  token = sample_logits(sub, logits_BTV[:, -1], temperature, top_k, top_p)
  out = [token]
  for _ in range(max_new_tokens - 1):
    logits_BV, cache = decode_step(model, token, cache)
    key, sub = jax.random.split(key)
    token = sample_logits(sub, logits_BV, temperature, top_k, top_p)
    out.append(token)
  return jnp.concatenate([prompt_BT, jnp.stack(out, axis=1)], axis=1)
