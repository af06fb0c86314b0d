"""Properties of the memory's fast path (docs/spec.md §1) that need no reference:

streaming == one call (any split, single tokens included), gradients vs finite
differences, causality, config / input validation, the nnx module, remat, and the
dtype of the carried state under bf16 activations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from titans_jax import NeuralMemory
from titans_jax.memory import MemoryConfig, apply, init, init_state
from titans_jax.runtime.steps import FAST_COMPILE

from helpers import F32, apply_jit, make_inputs, make_params, paper, tp


def assert_trees_close(got, want, tol, what):
  got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
  want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
  assert got_def == want_def, f"{what}: state structure differs"
  for (path, g), (_, w) in zip(got_leaves, want_leaves):
    assert g.shape == w.shape and g.dtype == w.dtype, (what, path)
    np.testing.assert_allclose(
      np.asarray(g, np.float64),
      np.asarray(w, np.float64),
      rtol=tol,
      atol=tol,
      err_msg=f"{what}: {jax.tree_util.keystr(path)}",
    )


# ------------------------------------------------------------ streaming == one call ---

T_STREAM = 11  # chunk 3: splits land on and off chunk boundaries
MAX_PIECE = 4  # bounded piece lengths keep the number of compiled shapes small
STREAM_MODES = {
  "commit_none": tp(chunk_size=3, commit_every=None),
  "commit_2chunks": tp(chunk_size=3, commit_every=6, momentum_order=2),
  "paper_conv": paper(chunk_size=3),  # commit_every = c, conv state carried
}


def pieces_from(lengths, total):
  """Cycle through `lengths` until `total` tokens are covered (last piece cut)."""
  out, i = [], 0
  while sum(out) < total:
    out.append(min(lengths[i % len(lengths)], total - sum(out)))
    i += 1
  return out


def run_streaming(mode, lengths):
  cfg = STREAM_MODES[mode]
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T_STREAM, seed=3)
    state0 = init_state(params, cfg, x.shape[0])
    y_full, s_full = apply_jit(params, x, cfg, state0)
    ys, s, start = [], state0, 0
    for n in pieces_from(lengths, T_STREAM):
      y, s = apply_jit(params, x[:, start : start + n], cfg, s)
      ys.append(y)
      start += n
    np.testing.assert_allclose(
      np.asarray(jnp.concatenate(ys, axis=1)),
      np.asarray(y_full),
      rtol=1e-10,
      atol=1e-10,
      err_msg=f"{mode} {lengths}: y",
    )
    assert_trees_close(s, s_full, 1e-10, f"{mode} {lengths}: final state")
    assert int(s["pos"]) == T_STREAM


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(STREAM_MODES))
@settings(
  max_examples=10,
  deadline=None,
  database=None,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lengths=st.lists(st.integers(1, MAX_PIECE), min_size=1, max_size=T_STREAM))
@example(lengths=[1])  # one token per call (decode)
@example(lengths=[MAX_PIECE])
@example(lengths=[3])  # chunk-aligned calls
@example(lengths=[2, 4, 1])
def test_streaming_equals_one_call(mode, lengths):
  run_streaming(mode, lengths)


# --------------------------------------------------------------------- causality ---


@pytest.mark.parametrize("mode", list(STREAM_MODES))
def test_causality(mode):
  """Changing x after position t leaves y at positions <= t unchanged."""
  cfg = STREAM_MODES[mode]
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T_STREAM, seed=3)
    state0 = init_state(params, cfg, x.shape[0])
    y, _ = apply_jit(params, x, cfg, state0)
    rng = np.random.default_rng(5)
    for t in (0, 2, 4, 5, 6, 9):  # chunk ends at 2, 5, 8; commit end at 5
      x2 = np.array(x)
      x2[:, t + 1 :] = rng.normal(size=x2[:, t + 1 :].shape)
      y2, _ = apply_jit(params, jnp.asarray(x2), cfg, state0)
      np.testing.assert_allclose(
        np.asarray(y2[:, : t + 1]),
        np.asarray(y[:, : t + 1]),
        rtol=0,
        atol=1e-12,
        err_msg=f"{mode}: leak into t<={t}",
      )
      assert np.abs(np.asarray(y2[:, t + 1 :]) - np.asarray(y[:, t + 1 :])).max() > 1e-6


# --------------------------------------------------- gradients vs finite differences ---

GRAD_MODES = {
  "commit_2chunks": tp(dim=4, heads=2, chunk_size=2, commit_every=4, expansion=2.0),
  "paper_conv": paper(dim=4, heads=2, chunk_size=2, expansion=2.0),
}
GRAD_T = 7


def _loss(params, x, r, cfg):
  y, state = apply(params, x, cfg)
  return jnp.sum(y * r) + 0.1 * jnp.sum(jnp.square(state["weights"]["w0"])), y


# One compiled function per config serves both the gradient and the finite differences.
value_and_grad_jit = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnames="cfg")
# The same at XLA optimisation level 0 (as apply_jit): quicker to compile, same maths.
value_and_grad_fast = jax.jit(
  jax.value_and_grad(_loss, has_aux=True),
  static_argnames="cfg",
  compiler_options=FAST_COMPILE,
)


def grad_inputs(cfg):
  params, x = make_inputs(cfg, GRAD_T, B=1, seed=11)
  r = jnp.asarray(np.random.default_rng(12).normal(size=(1, GRAD_T, cfg.dim)), jnp.float64)
  return params, x, r


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_grad_matches_finite_differences(mode):
  cfg = GRAD_MODES[mode]
  with jax.enable_x64(True):
    params, x, r = grad_inputs(cfg)
    _, grads = value_and_grad_jit(params, x, r, cfg)
    probes = [
      ("W0", "w0", (1, 1, 3)),
      ("W0", "w1", (0, 3, 1)),
      ("q_proj", None, (2, 1, 0)),
      ("k_proj", None, (1, 0, 1)),
      ("v_proj", None, (3, 1, 1)),
      ("decay", "b", (1,)),
      ("momentum", "w", (2, 0, 0)),
      ("lr", "b", (0,)),
    ]
    eps = 1e-6
    for top, sub, idx in probes:

      def perturbed(delta):
        p = jax.tree.map(np.array, params)
        leaf = p[top] if sub is None else p[top][sub]
        leaf[idx] += delta
        return value_and_grad_jit(jax.tree.map(jnp.asarray, p), x, r, cfg)[0][0]

      fd = (float(perturbed(eps)) - float(perturbed(-eps))) / (2 * eps)
      g = grads[top] if sub is None else grads[top][sub]
      g = float(g[idx])
      assert abs(g) > 1e-6, f"{mode} {top}.{sub}{idx}: gradient vanishes, probe useless"
      assert abs(g - fd) <= 1e-7 + 1e-6 * abs(fd), (mode, top, sub, idx, g, fd)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["auto", "primal"])
def test_remat_same_values_and_gradients(impl):
  cfg = GRAD_MODES["commit_2chunks"].replace(impl=impl, remat=False)
  cfg_r = cfg.replace(remat=True)
  with jax.enable_x64(True):
    params, x, r = grad_inputs(cfg)
    (v, y), g = value_and_grad_jit(params, x, r, cfg)
    (v_r, y_r), g_r = value_and_grad_jit(params, x, r, cfg_r)
    assert float(v_r) == pytest.approx(float(v), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(np.asarray(y_r), np.asarray(y), rtol=1e-12, atol=1e-12)
    assert_trees_close(g_r, g, 1e-12, "remat gradients")


@pytest.mark.slow
@pytest.mark.parametrize(
  "mode,impl,every,remat,T",
  [("paper_conv", "auto", 3, None, GRAD_T), ("commit_2chunks", "auto", 2, False, 11)],
)
def test_scan_remat_every_same_values_and_gradients(mode, impl, every, remat, T):
  """Two-level remat of the block scan changes no value and no gradient, with the
  per-block remat on or off inside the groups. Chunks of 2: 4 one-chunk blocks at
  T = 7, 3 two-chunk blocks at T = 11 — one group and a left-over block each."""
  from titans_jax.memory import core

  cfg = GRAD_MODES[mode].replace(impl=impl)
  cfg_r = cfg.replace(scan_remat_every=every, remat=remat)
  assert core.buffer_tokens(cfg, T, True) // (cfg.commit_chunks * cfg.chunk_size) == every + 1
  _assert_same_values_and_gradients(cfg, cfg_r, T, f"scan_remat_every={every}")


def _assert_same_values_and_gradients(cfg, cfg_r, T, what):
  """Value, output and gradients of the two configs equal at 1e-12 in float64."""
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T, B=1, seed=11)
    r = jnp.asarray(np.random.default_rng(12).normal(size=(1, T, cfg.dim)), jnp.float64)
    (v, y), g = value_and_grad_fast(params, x, r, cfg)
    (v_r, y_r), g_r = value_and_grad_fast(params, x, r, cfg_r)
    assert float(v_r) == pytest.approx(float(v), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(np.asarray(y_r), np.asarray(y), rtol=1e-12, atol=1e-12)
    assert_trees_close(g_r, g, 1e-12, f"{what} gradients")


@pytest.mark.parametrize(
  "mode,n,every,T",
  [("paper_conv", 2, 3, GRAD_T), ("commit_2chunks", 2, None, 11)],
)
def test_remat_blocks_same_values_and_gradients(mode, n, every, T):
  """Several blocks to a checkpoint changes no value and no gradient: a group of n and
  the blocks left over, inside the two-level remat's groups (4 one-chunk blocks at T = 7:
  a group of 3 = 2 + 1, and 1) and alone (3 two-chunk blocks at T = 11: 2, and 1)."""
  cfg = GRAD_MODES[mode].replace(remat=True, scan_remat_every=every)
  _assert_same_values_and_gradients(cfg, cfg.replace(remat_blocks=n), T, f"remat_blocks={n}")


def _saved_weight_carries(cfg, T: int = 32) -> list[tuple[int, jnp.dtype]]:
  """(blocks, dtype) of each stack of carried fast weights among the residuals of the
  call's vjp — traced, not run (T = 32: 16 one-chunk blocks at chunk 2)."""
  from titans_jax.memory import core

  params, x = make_inputs(cfg, T, B=1, seed=3)
  vjp = jax.eval_shape(lambda p: jax.vjp(lambda q: core.apply(q, x, cfg)[0].sum(), p)[1], params)
  w = params["W0"]["w0"].shape  # H×i×o; the scan stacks N×B×H×i×o
  stacked = [
    (a.shape[0], a.dtype) for a in jax.tree.leaves(vjp) if a.ndim == 5 and a.shape[2:] == w
  ]
  assert stacked, "no stacked carry among the residuals"
  return stacked


def test_remat_blocks_saves_one_carry_per_group():
  """What the option is for: the backward keeps the carried fast weights once per
  group of n blocks — counted on the residuals of the call's vjp."""
  cfg = GRAD_MODES["paper_conv"].replace(remat=True)
  blocks = lambda n: sum(count for count, _ in _saved_weight_carries(cfg.replace(remat_blocks=n)))
  assert blocks(1) == 16
  assert blocks(5) == 3 + 1  # three groups, and the block left over


@pytest.mark.parametrize(
  "mode,extra,dtype,lo,hi",
  [
    # float64 carries saved as float32: gradients off by float32 rounding, no more
    ("paper_conv", {}, "float32", 1e-12, 1e-5),
    ("paper_conv", {"remat_blocks": 2, "impl": "primal"}, "float32", 1e-12, 1e-5),
    ("commit_2chunks", {}, "float32", 1e-12, 1e-5),
    # as bfloat16: 8 mantissa bits
    ("paper_conv", {}, "bfloat16", 1e-5, 5e-2),
  ],
)
def test_saved_carry_dtype_exact_forward_rounded_backward(mode, extra, dtype, lo, hi):
  """`saved_carry_dtype` keeps the backward's per-block carries in a narrower dtype: the
  forward (value, output) is the exact one bit for bit; the gradients are those of the
  blocks recomputed from rounded carries — off from the exact ones (float64) by the
  rounding of that dtype, not more, and not by nothing (the option is in effect)."""
  cfg = GRAD_MODES[mode].replace(remat=True, **extra)
  with jax.enable_x64(True):
    params, x, r = grad_inputs(cfg)
    (v, y), g = value_and_grad_fast(params, x, r, cfg)
    (v_n, y_n), g_n = value_and_grad_fast(params, x, r, cfg.replace(saved_carry_dtype=dtype))
    assert float(v_n) == float(v)
    np.testing.assert_array_equal(np.asarray(y_n), np.asarray(y))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g))
    err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g)))
    assert lo * scale < err < hi * scale, (err, scale)


def test_saved_carry_dtype_is_the_dtype_of_the_saved_carries():
  """What the option is for, counted on the residuals of the call's vjp: the 16 stacked
  weight carries are kept in bfloat16, not in the inner float32."""
  cfg = paper(dim=4, heads=2, chunk_size=2, expansion=2.0, **F32).replace(remat=True)
  assert (16, jnp.float32) in _saved_weight_carries(cfg)
  narrow = _saved_weight_carries(cfg.replace(saved_carry_dtype="bfloat16"))
  assert (16, jnp.bfloat16) in narrow and (16, jnp.float32) not in narrow, narrow


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["dual", "primal"])
def test_tied_gradient_point_equals_carried(impl, monkeypatch):
  """With a commit after every chunk the block scan carries (W, S) and reads W̄ = W
  (core._carries_gradient_point). The (W, S, W̄) scan it replaces gives the same
  outputs, states and slow-parameter gradients on a stream split on and off chunk
  boundaries."""
  from titans_jax.memory import core

  cfg = paper(chunk_size=3).replace(impl=impl)
  assert not core._carries_gradient_point(cfg)
  splits = [(0, 4), (4, 5), (5, 9), (9, T_STREAM)]

  def run():
    # Fresh jit wrappers: the patched and unpatched runs must trace separately.
    stream = jax.jit(apply, static_argnames="cfg", compiler_options=FAST_COMPILE)
    with jax.enable_x64(True):
      params, x = make_inputs(cfg, T_STREAM, seed=5)
      r = jnp.asarray(np.random.default_rng(6).normal(size=(2, T_STREAM, cfg.dim)))
      state, ys = init_state(params, cfg, x.shape[0]), []
      for a, b in splits:
        y, state = stream(params, x[:, a:b], cfg, state)
        ys.append(y)
      grads = jax.jit(
        jax.grad(lambda p: jnp.sum(apply(p, x, cfg)[0] * r)), compiler_options=FAST_COMPILE
      )(params)
      return jnp.concatenate(ys, axis=1), state, grads

  y_tied, state_tied, g_tied = run()
  monkeypatch.setattr(core, "_carries_gradient_point", lambda cfg: True)
  y_carried, state_carried, g_carried = run()
  np.testing.assert_allclose(np.asarray(y_tied), np.asarray(y_carried), rtol=1e-12, atol=1e-12)
  assert_trees_close(state_tied, state_carried, 1e-12, "state")
  assert_trees_close(g_tied, g_carried, 1e-12, "gradients")


# ------------------------------------------------------------------ validation ---


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="not divisible by heads"):
    MemoryConfig(dim=10, heads=3)
  for c in (0, -2):
    with pytest.raises(ValueError, match="chunk_size"):
      MemoryConfig(dim=8, chunk_size=c)
  with pytest.raises(ValueError, match="not a multiple of chunk_size"):
    MemoryConfig(dim=8, chunk_size=4, commit_every=6)
  with pytest.raises(ValueError, match="commit_every"):
    MemoryConfig(dim=8, chunk_size=4, commit_every=0)
  with pytest.raises(ValueError, match="depth"):
    MemoryConfig(dim=8, depth=0)
  for m in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="max_surprise_norm"):
      MemoryConfig(dim=8, max_surprise_norm=m)
  with pytest.raises(ValueError, match="saved_carry_dtype='int8'"):
    MemoryConfig(dim=8, saved_carry_dtype="int8")
  with pytest.raises(ValueError, match="saved_carry_dtype needs .* remat=False"):
    MemoryConfig(dim=8, remat=False, saved_carry_dtype="bfloat16")
  with pytest.raises(ValueError, match="saved_carry_dtype: impl='pallas'"):
    MemoryConfig.paper(dim=8, chunk_size=4, impl="pallas", saved_carry_dtype="bfloat16")


def test_bad_inputs_raise():
  cfg = tp(**F32)
  params = make_params(cfg, 0)
  x = jnp.zeros((2, 5, cfg.dim), jnp.float32)
  with pytest.raises(ValueError, match="rank 3"):
    apply(params, x[0], cfg)
  with pytest.raises(ValueError, match="rank 3"):
    apply(params, x[..., None], cfg)
  with pytest.raises(ValueError, match="width"):
    apply(params, jnp.zeros((2, 5, cfg.dim + 1), jnp.float32), cfg)
  with pytest.raises(ValueError, match="batch size"):
    apply(params, x, cfg, init_state(params, cfg, 3))


# ------------------------------------------------------------- module and dtypes ---


@pytest.mark.slow
def test_nnx_module_matches_functional_apply():
  cfg = STREAM_MODES["commit_2chunks"]
  with jax.enable_x64(True):
    # An rbg key: same module, far fewer PRNG kernels to compile than threefry on CPU.
    mem = NeuralMemory(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    tree = mem.param_tree()
    want_structure = jax.tree.structure(jax.eval_shape(lambda: init(jax.random.key(0), cfg)))
    assert jax.tree.structure(tree) == want_structure
    _, x = make_inputs(cfg, T_STREAM, seed=3)
    state0 = mem.init_state(x.shape[0])
    assert_trees_close(state0, init_state(tree, cfg, x.shape[0]), 0, "module init_state")
    call = nnx.jit(lambda m, x, s: m(x, s))
    y_mod, s_mod = call(mem, x, state0)
    y_fn, s_fn = apply_jit(tree, x, cfg, state0)
    np.testing.assert_allclose(np.asarray(y_mod), np.asarray(y_fn), rtol=1e-12, atol=1e-12)
    assert_trees_close(s_mod, s_fn, 1e-12, "module state")


def test_bf16_activations_keep_fp32_inner_state():
  cfg = tp(dtype="bfloat16", param_dtype="float32", inner_dtype="float32")
  params = make_params(cfg, 0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, cfg.dim)), jnp.bfloat16)
  # Abstractly: dtypes of every carried leaf.
  y_abs, s_abs = jax.eval_shape(lambda p, x: apply(p, x, cfg), params, x)
  assert y_abs.dtype == jnp.bfloat16
  for part in ("weights", "grad_point", "momentum"):
    for name, leaf in s_abs[part].items():
      assert leaf.dtype == jnp.float32, (part, name, leaf.dtype)
  assert s_abs["pending"]["lr"].dtype == jnp.float32
  # Concretely: the run is finite and its carried state is fp32.
  y, s = apply_jit(params, x, cfg)
  assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y.astype(jnp.float32)).all())
  for part in ("weights", "grad_point", "momentum"):
    for name, leaf in s[part].items():
      assert leaf.dtype == jnp.float32, (part, name)
      assert bool(jnp.isfinite(leaf).all())
