"""Greedy (or sampled) continuations of a prompt from a trained model."""
from __future__ import annotations

import numpy as np
from flax import nnx

from titans_jax.data import text


def prompt_tokens(prompt: str, byte_level: bool) -> np.ndarray:
  """Byte-level: the UTF-8 bytes; token data: whitespace-separated integer ids."""
  if byte_level:
    return text.encode(prompt)
  try:
    return np.asarray([int(t) for t in prompt.split()], np.int32)
  except ValueError:
    raise ValueError(f"eval.prompt={prompt!r}: for pre-tokenised data give token ids "
                     "separated by spaces") from None


def sample(graphdef, params, rest, prompt: str, *, max_new_tokens: int, byte_level: bool,
           temperature: float = 0.0, seed: int = 0) -> str:
  """The continuation of `prompt` (greedy at temperature 0) as text (or ids)."""
  from titans_jax.models import generate

  toks = prompt_tokens(prompt, byte_level)
  if toks.size == 0:
    raise ValueError("eval.prompt is empty")
  model = nnx.merge(graphdef, params, rest)
  out = np.asarray(generate(model, toks[None, :], max_new_tokens, temperature=temperature,
                            seed=seed))[0]
  new = out[toks.size:]
  return text.decode(new) if byte_level else " ".join(str(int(t)) for t in new)
