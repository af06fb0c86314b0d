"""Logical axis names -> mesh axes: the ONE rules table, and how it is applied.

Every parameter carries logical axis names (`nnx.Param(..., out_sharding=names)`, see
`titans_jax.layers.basic.param` and `titans_jax.memory.params.logical_axes`); the main
activations are constrained with `constrain(x, names)`. Both go through `RULES`.

Weight names: vocab, embed, mlp, heads, kv (attention head width), persist, norm,
layers (the stacked-layer axis), mem_heads (the memory's heads: W0 / fast weights /
momentum and every per-head projection), conv (depthwise-conv taps).
Activation names: batch, length, act_embed, act_heads, act_mlp, act_vocab.

Applying a rule to a concrete shape: a mesh axis that does not divide the dimension,
or is already used by an earlier dimension of the same array, is dropped for that
dimension (the array is replicated along it instead). So a 2-head model on a
tensor=4 mesh runs, with its heads replicated; the golden spec file records what
each parameter actually gets.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titans_jax.sharding.mesh import MeshConfig

AxisNames = Sequence[Optional[str]]

# Logical names of the main activations (batch B, length T, width D, heads H, head width K,
# vocabulary V), used with `constrain` by the model, its blocks and the memory.
ACT_BTD = ("batch", "length", "act_embed")
ACT_BTV = ("batch", "length", "act_vocab")
ACT_BTHK = ("batch", "length", "act_heads", None)

#: logical name -> mesh axes (a tuple: the dimension is split over their product).
RULES: Mapping[str, tuple[str, ...]] = {
  # activations
  "batch": ("data", "fsdp"),
  "length": (),
  "act_embed": (),
  "act_heads": ("tensor",),
  "act_mlp": ("tensor",),
  "act_vocab": ("tensor",),
  # weights
  "vocab": ("tensor",),
  "embed": ("fsdp",),
  "mlp": ("tensor",),
  "heads": ("tensor",),
  "kv": (),
  "persist": (),
  "norm": (),
  "layers": (),
  "mem_heads": ("tensor",),
  "conv": (),
}


def rules_for(mesh_cfg: MeshConfig) -> dict[str, tuple[str, ...]]:
  """`RULES` with the config's choices applied (mesh.memory_heads=replicated)."""
  rules = dict(RULES)
  if mesh_cfg.memory_heads == "replicated":
    rules["mem_heads"] = ()
  return rules


def logical_to_spec(
  names: AxisNames,
  shape: Sequence[int],
  mesh: jax.sharding.Mesh,
  rules: Mapping[str, tuple[str, ...]] = RULES,
) -> P:
  """The mesh PartitionSpec of an array of `shape` whose axes are called `names`.

  Raises:
    KeyError: a name has no rule (every logical name must be in the table).
  """
  if len(names) != len(shape):
    raise ValueError(f"{len(names)} axis names {tuple(names)} for shape {tuple(shape)}")
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule (titans_jax.sharding.RULES)")
    axes = []
    size = 1
    for ax in rules[name]:
      n = mesh.shape[ax]
      if ax in used or n == 1 or dim % (size * n):
        continue
      axes.append(ax)
      size *= n
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def replicated_dims(
  names: AxisNames,
  shape: Sequence[int],
  mesh: jax.sharding.Mesh,
  rules: Mapping[str, tuple[str, ...]] = RULES,
) -> list[tuple[str, int, str, int]]:
  """(logical name, dimension, mesh axis, axis size) for every rule axis that
  `logical_to_spec` drops because it does not divide the dimension: the array is
  replicated along that axis, so each of its devices holds / computes the whole
  dimension."""
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    if name is None or name not in rules:
      continue
    size = 1
    for ax in rules[name]:
      n = mesh.shape[ax]
      if ax in used or n == 1:
        continue
      if dim % (size * n):
        out.append((name, int(dim), ax, int(n)))
        continue
      used.add(ax)
      size *= n
  return out


def logical_shardings(
  logical_specs: Any,
  abstract: Any,
  mesh: jax.sharding.Mesh,
  rules: Mapping[str, tuple[str, ...]] = RULES,
) -> Any:
  """NamedShardings for a pytree, from a same-structure tree of logical PartitionSpecs
  (e.g. `nnx.get_partition_spec(state)`) and of arrays / ShapeDtypeStructs."""
  return jax.tree.map(
    lambda spec, x: NamedSharding(mesh, logical_to_spec(tuple(spec), x.shape, mesh, rules)),
    logical_specs,
    abstract,
    is_leaf=lambda x: isinstance(x, P),
  )


# ----------------------------------------------------------- activation constraints ---


@dataclasses.dataclass(frozen=True)
class _Context:
  mesh: jax.sharding.Mesh
  rules: Mapping[str, tuple[str, ...]]


_ACTIVE: contextvars.ContextVar[Optional[_Context]] = contextvars.ContextVar(
  "titans_sharding", default=None
)


@contextlib.contextmanager
def use_rules(mesh: Optional[jax.sharding.Mesh], rules: Mapping[str, tuple[str, ...]] = RULES):
  """Within this context (while tracing), `constrain` places activations on `mesh`.

  Outside any context `constrain` is the identity, so the model runs unchanged on one
  device, in tests and notebooks.
  """
  token = _ACTIVE.set(None if mesh is None else _Context(mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_mesh() -> Optional[jax.sharding.Mesh]:
  ctx = _ACTIVE.get()
  return None if ctx is None else ctx.mesh


def target_platform() -> str:
  """The platform being traced for: the active mesh's devices, else the default
  backend ("tpu" for a TPU topology's compile-only devices on a CPU host). Kernel
  choices follow it, not `jax.default_backend()`."""
  mesh = active_mesh()
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def active_rules() -> Mapping[str, tuple[str, ...]]:
  """The rules table of the enclosing `use_rules` (RULES outside any)."""
  ctx = _ACTIVE.get()
  return RULES if ctx is None else ctx.rules


def constrain(x: jax.Array, names: AxisNames) -> jax.Array:
  """`with_sharding_constraint(x, rules(names))` inside `use_rules`; identity outside."""
  ctx = _ACTIVE.get()
  if ctx is None or ctx.mesh.size == 1:
    return x
  spec = logical_to_spec(names, x.shape, ctx.mesh, ctx.rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))
