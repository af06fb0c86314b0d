"""`titans_jax.memory.diagnostics` against the float64 reference, streamed, jitted and on
a mesh; the models' sown intermediates (`titans_jax.models.diagnostics`).

The reference (`reference_apply(..., record=...)`) records θ, the inner losses, α, η and
the norms of u, S and W in its own naive loops; every value must agree to 1e-10 in x64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from titans_jax import memory
from titans_jax.memory import inputs
from titans_jax.runtime import build
from titans_jax.runtime.steps import FAST_COMPILE

from helpers import apply_jit, make_inputs, paper, tp
from reference_memory import reference_apply

diagnostics_jit = jax.jit(memory.diagnostics, static_argnames="cfg", compiler_options=FAST_COMPILE)

# name -> (config, T); T is never a multiple of the chunk size (a pending last chunk).
CASES = {
  "paper": (paper(), 19),
  "commit_2chunks": (tp(commit_every=8), 19),
  "commit_none_knobs": (
    tp(
      commit_every=None,
      momentum_order=2,
      max_grad_norm=0.05,
      per_parameter_lr_modulation=True,
      max_mem_layer_modulation=3.0,
    ),
    19,
  ),
  "momentum_forget_off": (tp(momentum=False, forget=False, commit_every=4), 10),
}


def check_against_reference(d, params, x, cfg):
  rec = {}
  reference_apply(params, x, cfg, record=rec)
  G = x.shape[1] // cfg.chunk_size
  applied = np.asarray(d["chunk_applied"])
  assert applied[:G].all() and not applied[G:].any()
  np.testing.assert_array_equal(np.asarray(d["chunk_index"]), np.arange(len(applied)))
  expected = (
    set(rec)
    - ({"alpha"} if not cfg.forget else set())
    - ({"eta", "momentum_norm"} if not cfg.momentum else set())
  )
  assert expected <= set(d), sorted(expected - set(d))
  for name in expected:
    got = np.asarray(d[name], np.float64)
    if got.shape[1] != x.shape[1]:  # per chunk: the complete ones
      assert np.isnan(got[:, G:]).all(), name
      got = got[:, :G]
    np.testing.assert_allclose(got, rec[name], rtol=1e-10, atol=1e-10, err_msg=name)
  # Not vacuous: the memory learned within the call and the gates are not constant.
  assert np.ptp(rec["inner_loss"]) > 1e-3 and np.ptp(rec["surprise_norm"]) > 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_memory_diagnostics_match_reference_x64(name):
  cfg, T = CASES[name]
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T)
    check_against_reference(diagnostics_jit(params, x, cfg), params, x, cfg)


def test_memory_diagnostics_without_jit_x64():
  cfg, T = paper(chunk_size=2), 5
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T)
    eager = memory.diagnostics(params, x, cfg)
    jitted = diagnostics_jit(params, x, cfg)
    for name in jitted:
      np.testing.assert_allclose(
        np.asarray(eager[name]), np.asarray(jitted[name]), rtol=1e-12, atol=1e-12, err_msg=name
      )
    check_against_reference(eager, params, x, cfg)


def test_memory_diagnostics_continue_a_stream_x64():
  """A call continuing from apply's state (mid-chunk) reports what one whole call does."""
  cfg, T = tp(commit_every=8), 13
  split = 6  # chunk 4: this call completes chunks 1 and 2
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T)
    whole = diagnostics_jit(params, x, cfg)
    _, state = apply_jit(params, x[:, :split], cfg)
    second = diagnostics_jit(params, x[:, split:], cfg, state)
    for name in ("theta", "inner_loss", "grad_point_loss"):
      np.testing.assert_allclose(
        second[name], whole[name][:, split:], rtol=1e-12, atol=1e-12, err_msg=name
      )
    applied = np.asarray(second["chunk_applied"])
    np.testing.assert_array_equal(np.asarray(second["chunk_index"])[applied], [1, 2])
    for name in ("alpha", "eta", "surprise_norm", "momentum_norm", "weights_norm"):
      np.testing.assert_allclose(
        np.asarray(second[name])[:, applied],
        whole[name][:, 1:3],
        rtol=1e-12,
        atol=1e-12,
        err_msg=name,
      )


def test_memory_diagnostics_on_a_mesh():
  """Batch over 'data', heads over 'model' (8 fake CPU devices): the same numbers."""
  cfg, T = paper(dim=16, heads=4, dtype="float32", param_dtype="float32", inner_dtype="float32"), 12
  params, x = make_inputs(cfg, T)
  plain = diagnostics_jit(params, x, cfg)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
  params_sharded = jax.device_put(params, NamedSharding(mesh, P()))
  params_sharded["q_proj"] = jax.device_put(params["q_proj"], NamedSharding(mesh, P(None, "model")))
  sharded = diagnostics_jit(params_sharded, x_sharded, cfg)
  assert len(sharded["theta"].sharding.device_set) == 8
  for name in plain:
    np.testing.assert_allclose(
      np.asarray(sharded[name]), np.asarray(plain[name]), rtol=1e-5, atol=1e-6, err_msg=name
    )


def test_project_accepts_no_conv_state():
  """inputs.project(p, x, None, cfg) on a conv config: None is the zero context."""
  cfg = paper(dtype="float32", param_dtype="float32", inner_dtype="float32")
  params, x = make_inputs(cfg, 5)
  zeros = jnp.zeros((2, cfg.qkv_conv - 1, 3, cfg.heads, cfg.head_dim))
  with_none = inputs.project(params, x, None, cfg)
  with_zeros = inputs.project(params, x, zeros, cfg)
  for a, b in zip(jax.tree.leaves(with_none), jax.tree.leaves(with_zeros)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------- models ---


def small_config(variant):
  from titans_jax.models import TitansConfig

  # a linear memory (depth 1): the same plumbing, less to compile
  mcfg = memory.MemoryConfig.paper(32, heads=1, chunk_size=4, pre_norm=False, depth=1)
  return TitansConfig.preset(
    "tiny",
    variant=variant,
    vocab_size=32,
    dim=32,
    heads=2,
    ffn_hidden=32,
    num_persistent=2,
    window=8,
    segment_len=8,
    memory=mcfg,
  )


def random_model(cfg, seed=0):
  """A Titans model with random parameters drawn by NumPy (an eager `Titans(...)`
  compiles every initialiser, ~10 s on this CPU; the values do not matter here)."""
  from flax import nnx

  graphdef, state = nnx.split(build.abstract_model(cfg))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), state)
  return nnx.merge(graphdef, state)


def test_model_diagnostics_mag_layer0_by_hand():
  """Layer 0's sown statistics equal the same quantities computed from its pieces."""
  from flax import nnx

  from titans_jax.layers import attention
  from titans_jax.models import diagnostics

  model = random_model(small_config("mag"))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 11)), jnp.int32)
  layers = diagnostics(model, tokens)
  assert [(d["layer"], d["kind"]) for d in layers] == [(0, "mag"), (1, "mag")]

  graphdef, stacked = nnx.split(model.runs[0])
  block = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], stacked))  # layer 0

  @jax.jit
  def by_hand(tokens):
    h = block.mix_norm(model.embed(tokens))
    P = jnp.broadcast_to(block.persistent[...][None], (2,) + block.persistent.shape)
    xt = jnp.concatenate([P, h], axis=1)
    mcfg, mparams = model.cfg.memory_config, block.memory.param_tree()
    m = memory.apply(mparams, xt, mcfg)[0][:, 2:]
    g = jax.nn.sigmoid(block.gate_norm_m(m))
    d = memory.diagnostics(mparams, xt, mcfg)
    q, k, _ = block.attn.qkv(h)
    pk, _ = block._persistent_kv(2)
    rope = lambda t: block._rope(t, jnp.arange(t.shape[1]))
    probs = attention.window_attention_probs(rope(q), rope(k), block.cfg.window, pk)
    return {
      "gate_mean": g.mean((0, 2)),
      "gate_max": g.max((0, 2)),
      "gate_std": g.std((0, 2)),
      "memory_norm": jnp.linalg.norm(m, axis=-1).mean(0),
      "memory_loss": d["inner_loss"][:, 2:].mean((0, 2)),
      "memory_theta": d["theta"][:, 2:].mean((0, 2)),
      "attention_self": jnp.diagonal(probs[..., 2:], axis1=-2, axis2=-1).mean((0, 1)),
      "attention_persistent": probs[..., :2].sum(-1).mean((0, 1)),
    }

  for name, value in by_hand(tokens).items():
    np.testing.assert_allclose(
      np.asarray(layers[0][name]), np.asarray(value), rtol=1e-5, atol=1e-6, err_msg=name
    )
  assert layers[0]["attention_norm"].shape == (11,)
  assert not np.allclose(layers[0]["gate_mean"], layers[1]["gate_mean"])  # not one layer twice


def test_model_diagnostics_mac_retrieval_attention_by_hand():
  """MAC's segment attention statistics (weight on the retrieved tokens h, on the
  query's own h_j, on P) for layer 0's first segment, from the block's pieces: the
  retrieval with the memory's initial weights, then the dense softmax over [P ‖ h ‖ x]."""
  from flax import nnx

  from titans_jax.layers import attention
  from titans_jax.models import diagnostics

  model = random_model(small_config("mac"))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 11)), jnp.int32)
  layers = diagnostics(model, tokens)
  graphdef, stacked = nnx.split(model.runs[0])
  block = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], stacked))  # layer 0
  S = block.cfg.segment_len

  @jax.jit
  def by_hand(tokens):
    x = block.mix_norm(model.embed(tokens))[:, :S]
    mem0 = block.memory.init_state(2)
    hret, _ = block._retrieve(x, mem0["weights"], mem0["conv"])
    j = jnp.arange(S)
    q, k, _ = block.attn.qkv(x)
    q, k = block._rope(q, j + S), block._rope(k, j + S)
    hk, _ = block.attn.kv(hret)
    pk, _ = block._persistent_kv(2)
    mask = attention.segment_mask(S, S, 2, with_memory=True)
    p = attention.segment_attention_probs(q, [pk, block._rope(hk, j), k], mask)
    h = p[..., 2 : 2 + S]
    return {
      "attention_retrieval": h.sum(-1).mean((0, 1)),
      "attention_retrieval_self": jnp.diagonal(h, axis1=-2, axis2=-1).mean((0, 1)),
      "attention_persistent": p[..., :2].sum(-1).mean((0, 1)),
    }

  for name, value in by_hand(tokens).items():
    got = np.asarray(layers[0][name])
    assert got.shape == (11,), name
    np.testing.assert_allclose(got[:S], np.asarray(value), rtol=1e-5, atol=1e-6, err_msg=name)
  assert np.all(layers[0]["attention_retrieval"] + layers[0]["attention_persistent"] <= 1 + 1e-6)


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm", "swa"])
def test_model_normal_forward_unchanged(variant, monkeypatch):
  """Without a capture the statistics are never traced, and a captured call leaves the
  model's program exactly as it was (same lowered text, hence same op count). Lowered
  from an abstract model: nothing is compiled."""
  from flax import nnx

  from titans_jax.models.blocks import Block
  from titans_jax.models.diagnostics import _captured_jit

  model = build.abstract_model(small_config(variant))
  tokens = jax.ShapeDtypeStruct((1, 11), jnp.int32)

  def lowered_text(debug_info=False):
    graphdef, state = nnx.split(model)
    return (
      jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
      .lower(state, tokens)
      .as_text(debug_info=debug_info)
    )

  assert "memory_diagnostics" not in lowered_text(debug_info=True)
  before = lowered_text()
  captured = _captured_jit.lower(model, tokens).as_text(debug_info=True)
  assert ("memory_diagnostics" in captured) == (variant != "swa")
  assert lowered_text() == before  # the capture left nothing behind
  monkeypatch.setattr(Block, "_mixer_stats", lambda *a, **k: 1 / 0)
  assert lowered_text() == before  # never called without a capture


# ---------------------------------------------------------------- float64 ---


def test_float64_model_needs_x64():
  from flax import nnx

  from titans_jax.models import Titans

  cfg = small_config("mag").replace(
    dtype="float64", param_dtype="float64", memory=None, memory_heads=1
  )
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is on globally")
  with pytest.raises(ValueError, match="float64 needs 64-bit JAX.*jax_enable_x64"):
    Titans(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm", "swa"])
def test_float64_model_has_no_float32_anywhere(variant):
  """params, activations, attention scores, norms, RoPE, memory inner state: the whole
  lowered prefill (forward + decode cache) of a float64 model holds no f32 value."""
  from flax import nnx

  cfg = small_config(variant).replace(
    dtype="float64", param_dtype="float64", memory=None, memory_heads=1
  )
  with jax.enable_x64(True):
    assert cfg.memory_config.inner_dtype == "float64"
    model = build.abstract_model(cfg)
    graphdef, state = nnx.split(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype("float64")}
    tokens = jax.ShapeDtypeStruct((1, 11), jnp.int32)
    text = jax.jit(lambda s, t: nnx.merge(graphdef, s).prefill(t)).lower(state, tokens).as_text()
  assert "f64" in text and "f32" not in text


def test_float64_model_runs_and_matches_float32():
  """A float64 MAG model's logits equal the float32 model's (same parameters) to fp32
  rounding, and come out float64."""
  from flax import nnx

  cfg32 = small_config("mag").replace(memory=None, memory_heads=1, num_layers=1)
  cfg64 = cfg32.replace(dtype="float64", param_dtype="float64")
  model32 = random_model(cfg32)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (1, 9)), jnp.int32)
  logits32 = nnx.jit(lambda m, t: m(t))(model32, tokens)
  with jax.enable_x64(True):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: random_model(cfg64)))
    state64 = jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(model32))
    model64 = nnx.merge(graphdef, state64)
    logits64 = nnx.jit(lambda m, t: m(t))(model64, tokens)
    assert logits64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(logits64), np.asarray(logits32), rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(logits64) - np.asarray(logits32, np.float64)).max() > 0
