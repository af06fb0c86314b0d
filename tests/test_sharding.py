"""Sharded training on 8 fake CPU devices (conftest.py): the mesh from config, the rules
table, state born sharded, and one train step on meshes (8,1,1), (2,2,2), (1,2,4)
equal to the same step on one device, for MAC, MAG, MAL and LMM.

The model is the tiny preset at 1 layer with 4 attention and 4 memory heads (so that
tensor=4 really splits heads), batch 8 (so that data·fsdp = 8 splits rows), T = 16.
Each variant compiles its step 4 times (1 device + 3 meshes), which is most of this
module's run time: the four compilations run ahead of time in a thread pool (XLA's
compiler releases the GIL, so they overlap with each other and with the next one's
tracing), then the jitted steps are called one after the other and hit those compiled
executables. States are placed on each mesh with device_put from the reference (the
jitted, born-sharded init is tested once, below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titans_jax import sharding
from titans_jax.config import TrainConfig
from titans_jax.memory import MemoryConfig
from titans_jax.models import TitansConfig
from titans_jax.models.config import MEMORY_VARIANTS
from titans_jax.training import sharded

from helpers import run_concurrently

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
TRAIN = TrainConfig(steps=10, batch_size=8, lr=1e-3, warmup_steps=0)


def _model(variant, depth=1):
  # A linear memory (depth 1) halves the compile time of each step against the 2-layer
  # MLP; every sharding code path is the same (W0's names are derived per leaf).
  memory = MemoryConfig.paper(32, heads=4, chunk_size=4, pre_norm=False, depth=depth)
  return TitansConfig.preset(
    "tiny",
    variant=variant,
    dim=32,
    num_layers=1,
    heads=4,
    ffn_hidden=64,
    window=8,
    segment_len=8,
    num_persistent=2,
    memory=memory,
  )


def _batch(B=8, T=16, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, size=(B, T + 1)).astype(np.int32)
  w = (rng.random((B, T)) > 0.2).astype(np.float32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": w}


def _mesh(shape, **kw):
  devices = jax.devices()[: int(np.prod(shape))]
  return sharding.make_mesh(sharding.MeshConfig(*shape, **kw), devices)


def test_mesh_from_config():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert sharding.resolve_shape(sharding.MeshConfig(1, -1, 4), 8) == (1, 2, 4)
  for bad, match in [
    (sharding.MeshConfig(-1, -1, 1), "at most one"),
    (sharding.MeshConfig(3, 1, 1), "needs 3 devices"),
    (sharding.MeshConfig(-1, 3, 1), "not a multiple of 3"),
    (sharding.MeshConfig(memory_heads="x"), "memory_heads"),
  ]:
    with pytest.raises(sharding.MeshError, match=match):
      sharding.resolve_shape(bad, 8)


def test_rules_drop_axes_that_do_not_divide():
  mesh = _mesh((1, 2, 4))
  to = lambda names, shape: sharding.logical_to_spec(names, shape, mesh)
  assert to(("batch", "length", "act_embed"), (8, 16, 32)) == P("fsdp")
  assert to(("embed", "heads", "kv"), (32, 4, 8)) == P("fsdp", "tensor")
  assert to(("embed", "heads", "kv"), (32, 2, 8)) == P("fsdp")  # 2 heads on tensor=4
  assert to(("vocab", "embed"), (256, 32)) == P("tensor", "fsdp")
  assert to(("layers", "mem_heads", None, None), (2, 4, 8, 8)) == P(None, "tensor")
  replicated = sharding.rules_for(sharding.MeshConfig(memory_heads="replicated"))
  assert sharding.logical_to_spec(("mem_heads", None), (4, 8), mesh, replicated) == P()
  with pytest.raises(KeyError, match="no sharding rule"):
    to(("nope",), (4,))


def test_every_parameter_has_logical_names():
  """Every parameter names at least one axis besides the stacked-layer axis (so none is
  replicated just because it was forgotten)."""
  from flax import nnx

  for variant in ("mac", "lmm"):
    su = sharded.setup(_model(variant, depth=2), TRAIN, _mesh((2, 2, 2)), donate=False)
    leaves = jax.tree_util.tree_flatten_with_path(
      nnx.get_partition_spec(su.abstract.params), is_leaf=lambda x: isinstance(x, P)
    )[0]
    assert len(leaves) > 20
    for path, spec in leaves:
      assert any(n not in (None, "layers") for n in spec), jax.tree_util.keystr(path)


def test_state_is_born_sharded():
  mesh = _mesh((2, 2, 2))
  su = sharded.setup(_model("mag", depth=2), TRAIN, mesh, donate=False)
  state = su.init()
  for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(su.shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  emb = state.params["embed"]["embedding"][...]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (128, 16)  # a quarter of 256×32 per device
  w0 = state.params["runs"][0]["memory"]["params"]["W0"]["w0"][...]
  assert w0.sharding.spec == P(None, "tensor")  # (layers, mem_heads, d, d)


def _compile_steps_concurrently(setups, batch):
  """`su.step.lower(...).compile()` of every setup, several at a time. Only compilation
  runs in the threads (each call's tracing holds the GIL, XLA's compile does not); the
  steps themselves run afterwards, one at a time, and reuse these executables."""
  run_concurrently(
    lambda su=su: su.step.lower(su.abstract, su.put_batch(batch)).compile() for su in setups
  )


@pytest.mark.slow
@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_one_step_equals_single_device(variant):
  model = _model(variant)
  batch = _batch()
  ref = sharded.setup(model, TRAIN, sharding.single_device_mesh(), donate=False)
  setups = {shape: sharded.setup(model, TRAIN, _mesh(shape), donate=False) for shape in MESHES}
  _compile_steps_concurrently([ref, *setups.values()], batch)
  state0 = ref.init()
  want_state, want = ref.step(state0, ref.put_batch(batch))
  want_params = jax.tree.map(np.asarray, want_state.params)
  moved = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), want_state.params, state0.params
  )
  assert max(jax.tree.leaves(moved)) > 1e-4  # the step really updates the parameters
  for shape, su in setups.items():
    state = jax.device_put(state0, su.shardings)
    new, got = su.step(state, su.put_batch(batch))
    for x, sh in zip(jax.tree.leaves(new), jax.tree.leaves(su.shardings)):
      assert x.sharding.is_equivalent_to(sh, x.ndim)  # the state stays where it was
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=0, atol=1e-5, err_msg=str(shape))
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5, err_msg=str(shape))
    for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(new.params)[0], jax.tree.leaves(want_params)
    ):
      np.testing.assert_allclose(
        np.asarray(a), b, rtol=0, atol=1e-5, err_msg=f"{shape} {jax.tree_util.keystr(path)}"
      )
