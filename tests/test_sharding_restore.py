"""A checkpoint written on one mesh restores onto another (orbax reshards on restore):
saved on 8 devices as (8,1,1) — pure data parallel — and as (1,8,1) — fully sharded
over fsdp —, restored on 2 devices as (2,1,1) and as (1,1,2) (tensor parallel), with
equal parameters and optimizer state, each leaf placed as the target mesh says."""

import pathlib

import jax
import numpy as np
import pytest

from titans_jax import config as config_lib
from titans_jax import sharding
from titans_jax.runtime import checkpointing
from titans_jax.training import sharded

pytestmark = pytest.mark.slow  # end-to-end / multi-device: excluded from `-m "not slow"`

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cfg():
  return config_lib.apply_overrides(
    config_lib.load_config(ROOT / "configs" / "tiny.py"),
    ["model.memory_heads=2", "model.num_layers=1"],
  )


def _mesh(shape):
  return sharding.make_mesh(sharding.MeshConfig(*shape), jax.devices()[: int(np.prod(shape))])


@pytest.mark.parametrize("saved_on", [(8, 1, 1), (1, 8, 1)])
def test_restore_on_another_mesh(tmp_path, saved_on):
  cfg = _cfg()
  src = sharded.setup_for(cfg, _mesh(saved_on), donate=False)
  state = src.init()
  want = jax.tree.map(np.asarray, state)
  ck = checkpointing.Checkpointer(tmp_path, async_save=False)
  ck.save(1, state, None, cfg)
  ck.close()
  for target in [(2, 1, 1), (1, 1, 2)]:
    dst = sharded.setup_for(cfg, _mesh(target), donate=False)
    ck = checkpointing.Checkpointer(tmp_path, create=False, async_save=False)
    got = ck.restore(1, dst.abstract)
    ck.close()
    for x, sh in zip(jax.tree.leaves(got), jax.tree.leaves(dst.shardings)):
      assert x.sharding.is_equivalent_to(sh, x.ndim), (target, x.sharding, sh)
      assert len(x.sharding.device_set) == int(np.prod(target))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), b)
  # the tensor-parallel target really splits the memory heads
  w0 = dst.shardings.params["runs"][0]["memory"]["params"]["W0"]["w0"]
  assert "tensor" in jax.tree.leaves(w0)[0].spec
