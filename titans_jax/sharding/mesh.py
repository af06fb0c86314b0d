"""The device mesh of a run, built from config: axes (data, fsdp, tensor).

    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))   # 8 devices -> (2, 2, 2)

* `data`   — pure data parallelism: the batch is split, parameters are replicated.
* `fsdp`   — the batch is split *and* parameters / optimizer state are sharded along
             their `embed` axis (ZeRO-3 style; gathered per use by XLA).
* `tensor` — attention / memory heads, the SwiGLU hidden width and the vocabulary
             are split (Megatron style); the batch is not.

One axis size may be -1: it takes the devices the others leave. Axis types are
`jax.sharding.AxisType.Auto`, passed on purpose (`jax.make_mesh` defaults to Explicit):
the model states where tensors live (parameter shardings, `with_sharding_constraint`
on the main activations) and XLA's GSPMD propagation does the rest. Explicit
("sharding in types") would need an `out_sharding` on every ambiguous op inside the
memory's vmap / scan / grad; see docs/sharding.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Optional

import jax
import numpy as np

AXES = ("data", "fsdp", "tensor")
MEMORY_HEAD_PLACEMENTS = ("tensor", "replicated")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape and the sharding choices that are not per-parameter.

  Attributes:
    data: size of the pure data-parallel axis; -1 = the devices the others leave.
    fsdp: size of the FSDP axis (batch split, parameters sharded); may be -1.
    tensor: size of the tensor-parallel axis (heads / hidden split); may be -1.
      The product of the three must equal the number of devices (all processes).
    memory_heads: "tensor" shards the memory's per-head fast weights, momentum and
      per-head projections over the tensor axis; "replicated" keeps them whole on
      every device (docs/sharding.md records which is faster where).
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  memory_heads: str = "tensor"

  @property
  def sizes(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


class MeshError(ValueError):
  """The mesh config does not fit the devices."""


def resolve_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """The concrete (data, fsdp, tensor) sizes for `num_devices` devices."""
  sizes = list(cfg.sizes)
  if cfg.memory_heads not in MEMORY_HEAD_PLACEMENTS:
    raise MeshError(f"mesh.memory_heads={cfg.memory_heads!r}: expected tensor or replicated")
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise MeshError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise MeshError(
        f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices are not a multiple of {known}"
      )
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(
      f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, there are {num_devices}"
    )
  return tuple(sizes)


def make_mesh(
  cfg: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None
) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

  With the default devices, `jax.make_mesh` orders them so that the inner axes
  (tensor, then fsdp) stay within a host / fast interconnect.
  """
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if devices is None:
    try:
      shape = resolve_shape(cfg, jax.device_count())
    except MeshError as e:
      hint = (
        " (a CPU dry run can simulate N devices with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        if jax.default_backend() == "cpu"
        else ""
      )
      raise MeshError(f"{e}{hint}") from None
    return jax.make_mesh(shape, AXES, axis_types=auto)
  devices = list(devices)
  shape = resolve_shape(cfg, len(devices))
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def single_device_mesh(device: Optional[jax.Device] = None) -> jax.sharding.Mesh:
  """A (1, 1, 1) mesh on one device: the unsharded reference layout."""
  return make_mesh(MeshConfig(1, 1, 1), [device or jax.devices()[0]])
