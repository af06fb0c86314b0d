"""Held-out loss, perplexity and bits per byte (or per token) over batches, with an eval
step from `runtime.steps.make_eval_step` (or the sharded one): used by both the training
loop's periodic eval and `evaluation.run`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from titans_jax.runtime.metrics import LN2


def evaluate_batches(
  eval_step: Callable,
  params,
  rest,
  batches: Sequence[dict[str, np.ndarray]],
  *,
  byte_level: bool,
  put: Optional[Callable] = None,
) -> dict[str, float]:
  """Token-weighted mean loss over `batches` with `eval_step` from `make_eval_step`.

  `put` turns a (process-local) numpy batch into the step's input arrays (default:
  `jnp.asarray`; the trainer passes its mesh's `put_batch`).

  Returns:
    {"loss": nats per target, "perplexity", "bits_per_byte" or "bits_per_token",
     "accuracy": next-token top-1, "tokens": targets scored}
  """
  if not batches:
    raise ValueError("no held-out batches to evaluate")
  tot_ce = tot_w = tot_ok = 0.0
  put = put or (lambda b: jax.tree.map(jnp.asarray, b))
  sums = [eval_step(params, rest, put(b)) for b in batches]
  for s_ce, s_w, s_ok in jax.device_get(sums):
    tot_ce += float(s_ce)
    tot_w += float(s_w)
    tot_ok += float(s_ok)
  loss = tot_ce / max(tot_w, 1.0)
  key = "bits_per_byte" if byte_level else "bits_per_token"
  return {
    "loss": loss,
    "perplexity": math.exp(min(loss, 700.0)),
    key: loss / LN2,
    "accuracy": tot_ok / max(tot_w, 1.0),
    "tokens": tot_w,
  }


def format_metrics(m: dict[str, float]) -> str:
  bits = (
    ("bits/byte", m["bits_per_byte"])
    if "bits_per_byte" in m
    else ("bits/tok", m.get("bits_per_token", float("nan")))
  )
  return (
    f"loss {m['loss']:.4f} | {bits[0]} {bits[1]:.3f} | ppl {m['perplexity']:.2f} | "
    f"acc {m['accuracy']:.3f} | {int(m['tokens'])} tokens"
  )
