"""TitansConfig: presets (parameter counts, abstract builds), dtype policy, bad configs,
sharding metadata, remat equivalence and shapes under chex variants."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from titans_jax.memory import MemoryConfig
from titans_jax.models import Titans, TitansConfig, param_count_formula
from titans_jax.models.config import VARIANTS

SCALES = {"170m": 170e6, "340m": 340e6, "400m": 400e6, "760m": 760e6}


def abstract_model(cfg):
  return nnx.eval_shape(lambda: Titans(cfg, rngs=nnx.Rngs(0)))


def count_params(model) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", list(SCALES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_presets_match_their_names(name, variant):
  cfg = TitansConfig.preset(name, variant=variant)
  model = abstract_model(cfg)  # no allocation
  n = count_params(model)
  assert abs(n - SCALES[name]) <= 0.10 * SCALES[name], (name, variant, n)
  assert n == param_count_formula(cfg)
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_preset_and_dtype_policy(variant):
  cfg = TitansConfig.preset("tiny", variant=variant, dtype="bfloat16")
  model = abstract_model(cfg)
  assert count_params(model) == param_count_formula(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(
    lambda s, t: nnx.merge(graphdef, s)(t), state, jax.ShapeDtypeStruct((2, 40), jnp.int32)
  )
  assert out.shape == (2, 40, cfg.vocab_size) and out.dtype == jnp.bfloat16


def test_every_layer_stack_is_one_scanned_block_per_run():
  cfg = TitansConfig.preset("340m", variant="mag")
  assert cfg.layer_runs() == (("mag", 24),)
  model = abstract_model(cfg)
  assert len(model.runs) == 1
  assert model.runs[0].attn.wq.kernel.shape[0] == 24  # stacked over layers
  partial = cfg.replace(memory_layers=(0, 1, 5))
  assert partial.layer_runs() == (("mag", 2), ("swa", 3), ("mag", 1), ("swa", 18))
  assert TitansConfig.preset("tiny", variant="mac", memory_layers=(1,)).layer_runs() == (
    ("seg", 1),
    ("mac", 1),
  )


def test_params_carry_logical_axis_names():
  model = abstract_model(TitansConfig.preset("tiny", variant="mag"))
  names = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names[".".join(map(str, path))] = var.get_metadata().get("out_sharding")
  assert names["embed.embedding"] == ("vocab", "embed")
  assert names["head.kernel"] == ("embed", "vocab")
  assert names["runs.0.attn.wq.kernel"] == ("layers", "embed", "heads", "kv")
  assert names["runs.0.ffn.up.kernel"] == ("layers", "embed", "mlp")
  assert names["runs.0.persistent"] == ("layers", "persist", "embed")


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(window=0), "window"),
    (dict(window=-3), "window"),
    (dict(variant="mac", segment_len=10, memory_chunk=4), "segment_len=10 is not a multiple"),
    (dict(variant="mamba"), "unknown variant 'mamba'"),
    (dict(dim=60, heads=8), "not divisible by heads"),
    (dict(num_persistent=-1), "num_persistent"),
    (dict(variant="lmm", memory_layers=(0,)), "memory_layers"),
    (dict(variant="mag", memory_layers=(5,)), "memory_layers"),
    (dict(remat="sometimes"), "remat"),
    (dict(dtype="int8"), "dtype"),
    (dict(attn_impl="flash9"), "attn_impl"),
    (dict(variant="mag", memory=MemoryConfig.paper(32)), "memory.dim=32"),
  ],
)
def test_bad_configs_raise_naming_the_problem(overrides, match):
  with pytest.raises(ValueError, match=match):
    TitansConfig.preset("tiny", **overrides)


def test_unknown_preset_raises():
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    TitansConfig.preset("huge")


_REMAT_REFERENCE = {}


def _remat_grads(variant, remat):
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
  # MAG at one layer: the memory's scan under the policy, at half the compile time.
  layers = {"num_layers": 1} if variant == "mag" else {}
  cfg = TitansConfig.preset("tiny", variant=variant, window=4, remat=remat, **layers)
  model = Titans(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens).astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss))(params)


# "dots_no_batch" is the presets' default ("dots" also saves the memory scan's matmuls).
@pytest.mark.parametrize(
  "variant,policy",
  [
    ("swa", "full"),
    ("swa", "dots"),
    pytest.param("mag", "dots", marks=pytest.mark.slow),
    pytest.param("mac", "dots_no_batch", marks=pytest.mark.slow),  # segments kept by name
  ],
)
def test_remat_policies_give_the_same_gradients(variant, policy):
  if variant not in _REMAT_REFERENCE:
    _REMAT_REFERENCE[variant] = _remat_grads(variant, "none")
  chex.assert_trees_all_close(
    _remat_grads(variant, policy), _REMAT_REFERENCE[variant], atol=1e-6, rtol=1e-6
  )


def test_mac_segment_remat_gives_the_same_loss_and_gradients():
  # 14 tokens in segments of 4: three scanned segments and a partial one after them
  tokens = jax.random.randint(jax.random.key(1), (2, 14), 0, 256)

  def loss_and_grads(segment_remat):
    cfg = TitansConfig.preset(
      "tiny",
      variant="mac",
      num_layers=1,
      window=4,
      segment_len=4,
      mac_segment_remat=segment_remat,
    )
    graphdef, params = nnx.split(Titans(cfg, rngs=nnx.Rngs(0)))
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens).astype(jnp.float32) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (l_on, g_on), (l_off, g_off) = loss_and_grads(True), loss_and_grads(False)
  np.testing.assert_allclose(l_on, l_off, rtol=1e-6)
  chex.assert_trees_all_close(g_on, g_off, atol=1e-6, rtol=1e-6)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_on))


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_scan_layers_changes_how_layers_run_not_their_weights(variant):
  # layer 1 without memory: the scanned build has three runs of one kind each side
  cfg = TitansConfig.preset(
    "tiny", variant=variant, num_layers=4, window=4, segment_len=4, memory_layers=(0, 2, 3)
  )
  tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, 256)
  scanned = Titans(cfg, rngs=nnx.Rngs(3))
  unrolled = Titans(cfg.replace(scan_layers=False), rngs=nnx.Rngs(3))
  assert len(scanned.runs) == 3 and len(unrolled.runs) == 4
  # the unrolled layers are the scanned stacks' slices, in order
  per_layer = lambda m: [
    jax.tree.map(lambda a, i=i: a[i], nnx.state(run, nnx.Param))
    for run in m.runs
    for i in range(jax.tree.leaves(nnx.state(run, nnx.Param))[0].shape[0])
  ]
  for a, b in zip(per_layer(scanned), per_layer(unrolled), strict=True):
    chex.assert_trees_all_equal(a, b)
  np.testing.assert_array_equal(scanned(tokens), unrolled(tokens))


class ModelShapesTest(chex.TestCase):
  """Shapes, dtypes and finiteness of the forward, jitted and eager (1-layer tiny)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("swa", "mac")
  def test_forward_shapes(self, variant):
    cfg = TitansConfig.preset("tiny", variant=variant, num_layers=1, window=4, segment_len=4)
    graphdef, params = nnx.split(Titans(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.arange(18, dtype=jnp.int32).reshape(2, 9)
    out = self.variant(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)
    chex.assert_shape(out, (2, 9, cfg.vocab_size))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
