"""Train state, loss, the jitted train / eval steps and the XLA options they compile with.

Below both `training` and `evaluation` (see docs/architecture.md): the one place that
says how a step is jitted (`compiler_options`, `FAST_COMPILE`) and how big its compiled
program is (`compiled_memory`).

The NNX model is split once into a static `graphdef`, its trainable `nnx.Param` state and
any other state (`rest`); the train state is a plain pytree of arrays, so it jits,
donates, shards and checkpoints like any pytree. Steps rebuild the module with
`nnx.merge` inside the traced function.

Axis legend: B batch, A gradient-accumulation micro-batches, T sequence, V vocabulary.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


def _global_norm(tree) -> jax.Array:
  return optax.tree.norm(tree) if hasattr(optax, "tree") else optax.global_norm(tree)


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs from the model side (data state lives in grain)."""

  step: jax.Array
  params: Any  # nnx.State of nnx.Param
  rest: Any  # nnx.State of the model's other variables (may be empty)
  opt_state: Any


def split_model(model: nnx.Module):
  """(graphdef, params, rest) of an NNX module."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params, rest


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """(graphdef, TrainState) for a freshly built model."""
  graphdef, params, rest = split_model(model)
  state = TrainState(
    step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params)
  )
  return graphdef, state


def weighted_xent(
  logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(Σ w·CE, Σ w, Σ w·[argmax = target]) in float32."""
  logits = logits_BxTxV.astype(jnp.float32)
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits, targets_BxT)
  w = weights_BxT.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets_BxT).astype(jnp.float32)
  return jnp.sum(ce_BxT * w), jnp.sum(w), jnp.sum(correct * w)


def _forward_sums(graphdef, params, rest, batch):
  model = nnx.merge(graphdef, params, rest)
  logits_BxTxV = model(batch["inputs"])
  return weighted_xent(logits_BxTxV, batch["targets"], batch["weights"])


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  graphdef,
  tx: optax.GradientTransformation,
  schedule: Callable,
  accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update over `batch` (B rows, split into `accum_steps` micro-batches).

  The loss is the weighted mean cross-entropy over the whole batch, exactly, whatever
  `accum_steps` is: micro-batch gradients of Σ w·CE are summed and divided by Σ w once.

  NaN/Inf guard: when the loss, the gradient norm or the update is not finite, params
  and optimizer state are returned unchanged and `metrics["finite"]` is 0; the loop then
  stops without checkpointing.
  """

  def sums(params, micro):
    s_ce, s_w, s_ok = _forward_sums(graphdef, params, state.rest, micro)
    return s_ce, (s_w, s_ok)

  grad_fn = jax.value_and_grad(sums, has_aux=True)
  if accum_steps == 1:
    (s_ce, (s_w, s_ok)), grads = grad_fn(state.params, batch)
  else:
    micro_AxBxT = jax.tree.map(
      lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch
    )

    def body(carry, micro):
      (s_ce, (s_w, s_ok)), g = grad_fn(state.params, micro)
      acc_g, acc_ce, acc_w, acc_ok = carry
      return (jax.tree.map(jnp.add, acc_g, g), acc_ce + s_ce, acc_w + s_w, acc_ok + s_ok), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (
      zeros,
      jnp.zeros((), jnp.float32),
      jnp.zeros((), jnp.float32),
      jnp.zeros((), jnp.float32),
    )
    (grads, s_ce, s_w, s_ok), _ = jax.lax.scan(body, init, micro_AxBxT)

  denom = jnp.maximum(s_w, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  loss = s_ce / denom
  grad_norm = _global_norm(grads)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  # The update itself is checked too: a finite gradient times an overflowing learning
  # rate must not reach the parameters (or a checkpoint).
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(_global_norm(updates))
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(new_params, state.params),
    opt_state=keep(new_opt_state, state.opt_state),
  )
  metrics = {
    "loss": loss,
    "grad_norm": grad_norm,
    "lr": schedule(state.step),
    "accuracy": s_ok / denom,
    "targets": s_w,
    "finite": finite.astype(jnp.int32),
  }
  return new_state, metrics


# XLA options for a fast compile on CPU: backend optimisation level 0 (LLVM without its
# optimisations). They never change what is computed, only how fast: measured on the
# 2-core development CPU (2026-12-03), the tiny MAG train step compiles in 6.4 s instead
# of 11.0 s but runs in 157 ms instead of 59 ms, and at 170M width the memory's
# elementwise work (not the matmuls, which are library calls) runs ~2.5× slower. So
# training and benchmarks compile with XLA's defaults, and the test suite — many small
# compiles, few steps each — opts in with FAST_COMPILE_ENV (tests/conftest.py).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
FAST_COMPILE_ENV = "TITANS_JAX_FAST_COMPILE"  # "1": every step compiles with FAST_COMPILE on CPU


def compiler_options() -> dict | None:
  """The options every step of this project compiles with: XLA's defaults, or
  FAST_COMPILE on CPU when the environment sets TITANS_JAX_FAST_COMPILE=1 (tests)."""
  if jax.default_backend() == "cpu" and os.environ.get(FAST_COMPILE_ENV) == "1":
    return dict(FAST_COMPILE)
  return None


def compiled_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis of a compiled program, in bytes per device, plus its peak.

  `compiled_peak_bytes` = arguments + outputs not aliased to (donated) arguments +
  temporaries: what is live at the peak. Empty where the backend reports nothing.
  """
  try:
    mem = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    mem = None
  out: dict[str, int] = {}
  if mem is None:
    return out
  for k in (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
  ):
    if hasattr(mem, k):
      out[k] = int(getattr(mem, k))
  if "temp_size_in_bytes" in out:
    out["compiled_peak_bytes"] = (
      out.get("argument_size_in_bytes", 0)
      + out.get("output_size_in_bytes", 0)
      - out.get("alias_size_in_bytes", 0)
      + out["temp_size_in_bytes"]
    )
  return out


@functools.lru_cache(maxsize=16)
def make_train_step(graphdef, tx, schedule, accum_steps: int = 1, donate: bool = True):
  """The jitted `train_step(state, batch) -> (state, metrics)`; the state is donated.

  Cached on its arguments, so repeated `train()` calls in one process (a resumed run in a
  notebook, the tests) reuse one compilation.
  """
  fn = functools.partial(
    train_step, graphdef=graphdef, tx=tx, schedule=schedule, accum_steps=accum_steps
  )
  return jax.jit(fn, donate_argnums=(0,) if donate else (), compiler_options=compiler_options())


@functools.lru_cache(maxsize=16)
def make_eval_step(graphdef):
  """Jitted `eval_step(params, rest, batch) -> (Σ w·CE, Σ w, Σ w·correct)`."""
  return jax.jit(functools.partial(_forward_sums, graphdef), compiler_options=compiler_options())
