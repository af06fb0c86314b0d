"""Golden PartitionSpecs: every parameter path of configs/tiny.py's model (2 memory heads)
on a (2, 2, 2) mesh, diffed against tests/golden/partition_specs_tiny_2x2x2.json.

Update procedure (when a change to the rules table, a parameter's logical names or the
model's parameters is intended):

    UPDATE_GOLDEN=1 python -m pytest tests/test_sharding_golden.py
    git diff tests/golden/          # review: every changed line is a layout change

The failure message lists added, removed and changed paths. No parameter is allocated
(the specs come from the abstract state).
"""

import json
import os
import pathlib

import jax

from titans_jax import config as config_lib
from titans_jax import sharding
from titans_jax.training import sharded

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "partition_specs_tiny_2x2x2.json"


def _specs() -> dict[str, list]:
  # tiny with 2 memory heads, so that the memory's head axis meets the tensor axis
  cfg = config_lib.apply_overrides(
    config_lib.load_config(ROOT / "configs" / "tiny.py"), ["model.memory_heads=2"]
  )
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  su = sharded.setup_for(cfg, mesh, donate=False)
  out = {}
  for path, s in jax.tree_util.tree_flatten_with_path(su.shardings.params)[0]:
    key = jax.tree_util.keystr(path, simple=True, separator="/")
    out[key] = [list(a) if isinstance(a, tuple) else a for a in s.spec]
  return out


def test_partition_specs_match_golden():
  got = _specs()
  if os.environ.get("UPDATE_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(got.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one path per line
  want = json.loads(GOLDEN.read_text())
  added = sorted(set(got) - set(want))
  removed = sorted(set(want) - set(got))
  changed = [
    f"{k}: golden {want[k]} -> now {got[k]}"
    for k in sorted(set(got) & set(want))
    if got[k] != want[k]
  ]
  assert not (added or removed or changed), (
    "parameter shardings differ from "
    + str(GOLDEN.relative_to(ROOT))
    + "\n"
    + "".join(f"  added   {k}: {got[k]}\n" for k in added)
    + "".join(f"  removed {k}\n" for k in removed)
    + "".join(f"  changed {c}\n" for c in changed)
    + "If intended: UPDATE_GOLDEN=1 python -m pytest tests/test_sharding_golden.py, "
    "then review git diff tests/golden/"
  )
