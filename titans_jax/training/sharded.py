"""The train state and steps laid out on a device mesh.

`setup(model_cfg, train_cfg, mesh, rules)` returns, for one mesh, everything the loop
needs, built once and cached:

* the abstract train state with its `NamedSharding`s (from the logical axis names on
  every parameter through the rules table; the optimizer's moments inherit the names
  of their parameters, the step counter and scalars are replicated);
* `init()`: `jax.jit(init, out_shardings=...)`, so parameters and optimizer state are
  born sharded — no host ever holds the whole state;
* `step(state, batch)`: `jax.jit` with in/out shardings, the state donated, traced
  inside `use_rules(mesh, rules)` so the activation constraints apply;
* `put_batch(numpy batch)`: the process-local rows -> one global batch-sharded array
  (`jax.make_array_from_process_local_data`; with one process a `device_put`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titans_jax import sharding
from titans_jax.runtime import build
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps as ts
from titans_jax.sharding.rules import replicated_dims


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedSetup:
  mesh: jax.sharding.Mesh
  rules: Mapping[str, tuple[str, ...]]
  graphdef: Any
  abstract: Any  # TrainState of ShapeDtypeStruct (with .sharding)
  shardings: Any  # TrainState of NamedSharding
  init: Callable[[], Any]
  step: Any  # jitted (state, batch) -> (state, metrics)
  eval_step: Any  # jitted (params, rest, batch) -> sums
  replicated_state: tuple[str, ...] = ()  # see `state_replication`

  @property
  def param_shardings(self):
    return self.shardings.params

  def batch_sharding(self, shape) -> NamedSharding:
    """Rows over the batch axes (data, fsdp) where they divide, the rest replicated."""
    names = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(self.mesh, sharding.logical_to_spec(names, shape, self.mesh, self.rules))

  def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """A train batch's shapes, dtypes and shardings, for compiling ahead of time."""
    shape = (batch_size, seq_len)
    return {
      k: jax.ShapeDtypeStruct(shape, dt, sharding=self.batch_sharding(shape))
      for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32))
    }

  def replication_notice(self, batch_shape) -> Optional[str]:
    """One line naming every dimension (batch rows, heads, ...) replicated because it
    does not divide its mesh axis, with what that costs; None when there is none."""
    notes = list(self.replicated_state)
    for _, dim, ax, n in replicated_dims(
      ("batch",) + (None,) * (len(batch_shape) - 1), batch_shape, self.mesh, self.rules
    ):
      notes.append(
        f"train.batch_size={dim} does not divide mesh {ax}={n}: the batch is "
        f"replicated along {ax}, so each of those {n} devices computes the same "
        f"rows ({n}x the compute per row)"
      )
    return ("mesh: " + "; ".join(notes)) if notes else None

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Process-local numpy rows -> global arrays sharded over the batch axes.

    Process p holds rows [p·b, (p+1)·b) of the global batch (b = local rows); the
    mesh's devices are ordered by process, so its rows land on its own devices.
    """

    def put(x):
      x = np.asarray(x)
      global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      sh = self.batch_sharding(global_shape)
      if jax.process_count() == 1:
        return jax.device_put(x, sh)
      return jax.make_array_from_process_local_data(sh, x, global_shape)

    return {k: put(v) for k, v in batch.items()}


def state_shardings(
  abstract_state: Any,
  mesh: jax.sharding.Mesh,
  rules: Mapping[str, tuple[str, ...]] = sharding.RULES,
) -> Any:
  """NamedShardings of a (abstract) TrainState from its parameters' logical names."""
  return sharding.logical_shardings(
    nnx.get_partition_spec(abstract_state), abstract_state, mesh, rules
  )


def state_replication(
  logical_specs: Any, abstract: Any, mesh: jax.sharding.Mesh, rules: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
  """A note per (logical dimension, mesh axis) that does not divide, e.g. 2 heads on
  tensor=4, with the train-state bytes it leaves replicated instead of split."""
  cost: dict[tuple, int] = {}

  def visit(spec, x):
    for key in replicated_dims(tuple(spec), x.shape, mesh, rules):
      cost[key] = cost.get(key, 0) + int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize

  jax.tree.map(visit, logical_specs, abstract, is_leaf=lambda x: isinstance(x, P))
  return tuple(
    f"{name}={dim} does not divide mesh {ax}={n}: {b / 2**20:.2f} MiB of train state "
    f"is replicated along {ax} instead of split (+{b * (n - 1) / n / 2**20:.2f} MiB "
    f"per device, and its compute is repeated on each of the {n} devices)"
    for (name, dim, ax, n), b in sorted(cost.items())
  )


def with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


@functools.lru_cache(maxsize=16)
def setup(
  model_cfg,
  train_cfg,
  mesh: jax.sharding.Mesh,
  rules_items: tuple = tuple(sorted(sharding.RULES.items())),
  donate: bool = True,
) -> ShardedSetup:
  """The train state / steps of (model, train config) on `mesh` (cached; see module doc).

  `rules_items` is the rules table as sorted (name, axes) items (hashable).
  """
  rules = dict(rules_items)
  tx, make_state = build.state_factory(model_cfg, train_cfg)
  schedule = opt_lib.lr_schedule(train_cfg)
  graphdef = build.graphdef(model_cfg, train_cfg.seed)
  abstract = jax.eval_shape(make_state)
  shardings = state_shardings(abstract, mesh, rules)
  replicated_notes = state_replication(nnx.get_partition_spec(abstract), abstract, mesh, rules)
  opts = ts.compiler_options()
  init = jax.jit(make_state, out_shardings=shardings, compiler_options=opts)

  replicated = NamedSharding(mesh, P())
  step_fn = functools.partial(
    ts.train_step,
    graphdef=graphdef,
    tx=tx,
    schedule=schedule,
    accum_steps=train_cfg.grad_accum_steps,
  )

  def traced_step(state, batch):
    with sharding.use_rules(mesh, rules):
      return step_fn(state, batch)

  # The batch's in_sharding is left to the argument (put_batch places it), so eval and
  # train batches of any size reuse the same functions.
  step = jax.jit(
    traced_step,
    in_shardings=(shardings, None),
    out_shardings=(shardings, replicated),
    donate_argnums=(0,) if donate else (),
    compiler_options=opts,
  )

  def traced_eval(params, rest, batch):
    with sharding.use_rules(mesh, rules):
      return ts._forward_sums(graphdef, params, rest, batch)

  eval_step = jax.jit(
    traced_eval,
    in_shardings=(shardings.params, shardings.rest, None),
    out_shardings=replicated,
    compiler_options=opts,
  )
  return ShardedSetup(
    mesh,
    rules,
    graphdef,
    with_shardings(abstract, shardings),
    shardings,
    init,
    step,
    eval_step,
    replicated_notes,
  )


def setup_for(cfg, mesh: jax.sharding.Mesh | None = None, donate: bool = True) -> ShardedSetup:
  """`setup` for an experiment Config on `mesh` (default: the config's mesh, all devices)."""
  mesh = sharding.make_mesh(cfg.mesh) if mesh is None else mesh
  rules = sharding.rules_for(cfg.mesh)
  return setup(cfg.model, cfg.train, mesh, tuple(sorted(rules.items())), donate)
