"""Greedy (or sampled) continuations of a prompt from a trained model."""

from __future__ import annotations

import numpy as np
from flax import nnx

from titans_jax.data import text
from titans_jax.models import generate


def prompt_tokens(prompt: str, byte_level: bool, tokenizer=None) -> np.ndarray:
  """Byte-level: the UTF-8 bytes; with a tokenizer: its ids; else whitespace-separated
  integer ids."""
  if tokenizer is not None and not byte_level:
    return np.asarray(tokenizer.encode(prompt), np.int32)
  if byte_level:
    return text.encode(prompt)
  try:
    return np.asarray([int(t) for t in prompt.split()], np.int32)
  except ValueError:
    raise ValueError(
      f"eval.prompt={prompt!r}: for pre-tokenised data give token ids separated by spaces"
    ) from None


def sample(
  graphdef,
  params,
  rest,
  prompt: str,
  *,
  max_new_tokens: int,
  byte_level: bool,
  temperature: float = 0.0,
  seed: int = 0,
  tokenizer=None,
) -> str:
  """The continuation of `prompt` (greedy at temperature 0) as text (token models: text
  through `tokenizer` when given, else ids)."""
  toks = prompt_tokens(prompt, byte_level, tokenizer)
  if toks.size == 0:
    raise ValueError("eval.prompt is empty")
  model = nnx.merge(graphdef, params, rest)
  out = np.asarray(
    generate(model, toks[None, :], max_new_tokens, temperature=temperature, seed=seed)
  )[0]
  new = out[toks.size :]
  if byte_level:
    return text.decode(new)
  if tokenizer is not None:
    return tokenizer.decode(new)
  return " ".join(str(int(t)) for t in new)
