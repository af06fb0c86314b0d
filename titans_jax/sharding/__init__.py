"""Device meshes, the logical-axis rules table, and multi-process start-up.

See docs/sharding.md.
"""

from titans_jax.sharding.mesh import (
  AXES,
  MeshConfig,
  MeshError,
  make_mesh,
  resolve_shape,
  single_device_mesh,
)
from titans_jax.sharding.rules import (
  RULES,
  active_mesh,
  constrain,
  logical_shardings,
  logical_to_spec,
  rules_for,
  use_rules,
)

__all__ = [
  "AXES",
  "MeshConfig",
  "MeshError",
  "RULES",
  "active_mesh",
  "constrain",
  "logical_shardings",
  "logical_to_spec",
  "make_mesh",
  "resolve_shape",
  "rules_for",
  "single_device_mesh",
  "use_rules",
]
