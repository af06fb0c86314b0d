"""One builder: the model, its train state, its train / eval steps, from the configs.

Every entry point builds through here — `train()` (via `training.sharded`), `evaluate()`,
the benchmarks (`benchmarks/timing.py`) and the tests — so the graph definition, the optimizer,
the step and the compiler options they compile with are the same everywhere.

  abstract_model(model_cfg, seed)      the model as ShapeDtypeStructs (no allocation)
  build_model(model_cfg, seed)         the model, initialised by one jitted program
  state_factory(model_cfg, train_cfg)  (tx, fn() -> fresh TrainState) to jit or eval_shape
  abstract_train_state(cfg)            (graphdef, abstract TrainState)
  build_steps(model_cfg, train_cfg)    Steps: graphdef, tx, schedule, train / eval steps
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from titans_jax.models import Titans
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps


def new_model(model_cfg, seed: int = 0) -> Callable[[], nnx.Module]:
  """A thunk building `Titans(model_cfg)` from `seed` (for nnx.eval_shape / jax.jit)."""
  return lambda: Titans(model_cfg, rngs=nnx.Rngs(seed))


def abstract_model(model_cfg, seed: int = 0) -> nnx.Module:
  """The model with ShapeDtypeStructs for arrays: shapes, dtypes, sharding names."""
  return nnx.eval_shape(new_model(model_cfg, seed))


def graphdef(model_cfg, seed: int = 0):
  """The static graph definition of the model (the `graphdef` every step merges)."""
  return nnx.graphdef(abstract_model(model_cfg, seed))


def build_model(model_cfg, seed: int) -> nnx.Module:
  """The Titans model of `model_cfg` with parameters drawn from `seed`.

  Initialisation runs as one jitted program (not op by op): much faster on CPU. This
  builds an unsharded model (notebooks, eval); training builds its state born sharded
  through `titans_jax.training.sharded.setup`.
  """
  gdef, init = _model_init(model_cfg, seed)
  return nnx.merge(gdef, init())


@functools.lru_cache(maxsize=8)
def _model_init(model_cfg, seed: int):
  """(graphdef, jitted init) per (model config, seed), so a resumed run reuses them."""
  make = new_model(model_cfg, seed)
  return graphdef(model_cfg, seed), jax.jit(
    lambda: nnx.state(make()), compiler_options=steps.compiler_options()
  )


def state_factory(model_cfg, train_cfg) -> tuple[optax.GradientTransformation, Callable]:
  """(optimizer, thunk -> fresh TrainState) of (model, train config); the thunk is what
  `jax.eval_shape` (abstract state) and `jax.jit(out_shardings=...)` (sharded init) take."""
  tx = opt_lib.make_optimizer(train_cfg)
  make = new_model(model_cfg, train_cfg.seed)
  return tx, lambda: steps.create_train_state(make(), tx)[1]


def abstract_train_state(cfg):
  """(graphdef, abstract TrainState) of an experiment Config, without allocating
  parameters (shape check / AOT / checkpoint restore)."""
  _, make_state = state_factory(cfg.model, cfg.train)
  return graphdef(cfg.model, cfg.train.seed), jax.eval_shape(make_state)


@dataclasses.dataclass(frozen=True, eq=False)
class Steps:
  """The jitted steps of one (model, train config), unsharded (one device)."""

  graphdef: Any
  tx: optax.GradientTransformation
  schedule: Callable
  train_step: Any  # jitted (state, batch) -> (state, metrics)
  eval_step: Any  # jitted (params, rest, batch) -> (Σ w·CE, Σ w, Σ w·correct)


def build_steps(model_cfg, train_cfg, *, donate: bool = True) -> Steps:
  """Graph definition, optimizer, schedule and jitted train / eval steps (cached jits)."""
  gdef = graphdef(model_cfg, train_cfg.seed)
  tx = opt_lib.make_optimizer(train_cfg)
  schedule = opt_lib.lr_schedule(train_cfg)
  return Steps(
    gdef,
    tx,
    schedule,
    steps.make_train_step(gdef, tx, schedule, train_cfg.grad_accum_steps, donate),
    steps.make_eval_step(gdef),
  )
