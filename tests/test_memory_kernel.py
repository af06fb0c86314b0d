"""The Pallas scan kernel (`impl="pallas"`, titans_jax/memory/kernel.py) in the Pallas
interpreter: equal to the independent float64 reference (values and final state), its
gradients equal to the XLA path's (the primal form) — including the second-order terms
through the inner gradient and segments that recompute their carries — streams split
across calls, padding of the last segment, sharded under shard_map on 4 fake CPU devices,
and the configs it refuses. (TPU compilation of the kernel: tests/test_tpu.py.)
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titans_jax import sharding
from titans_jax.memory import MemoryConfig, apply, init_state
from titans_jax.memory import kernel as K

from helpers import F32, apply_jit, compare, make_inputs, make_params, paper


@pytest.fixture(autouse=True)
def _quiet_interpreter_notice(caplog):
  caplog.set_level(logging.ERROR, logger=K.__name__)


CASES = {
  # the paper preset: depth-2 GELU MLP, momentum and forgetting; segments of 2 chunks
  # (every 2nd carry saved, the other recomputed), 19 tokens (a pending chunk at the end)
  "paper_every2": (paper(scan_remat_every=2), 19),
  # one carry saved per chunk; strong forgetting
  "paper_every1": (paper(init_decay_bias=0.0, scan_remat_every=1), 17),
  # scan_remat_every=None: the kernel picks its segments (here one of all 5 chunks)
  "paper_auto_segments": (paper(), 17),
  # 4 chunks + the idle one in segments of 3: the last is padded with identity chunks
  "paper_every3_padded": (paper(scan_remat_every=3), 16),
  "no_momentum_depth3_silu": (paper(momentum=False, depth=3, activation="silu"), 19),
  "no_forget_depth1": (paper(forget=False, depth=1, scan_remat_every=2), 16),
  # no gate, no output projection, no post-norm: y's heads merged by a reshape
  "plain_output": (paper(gate=False, out_proj=False, post_rmsnorm=False, scan_remat_every=2), 19),
  # the surprise clip, at a bound some chunks exceed (tests/test_memory_reference.py)
  "paper_surprise_clip": (paper(max_surprise_norm=0.03, scan_remat_every=2), 19),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference_x64(name):
  cfg, T = CASES[name]
  with jax.enable_x64(True):
    compare(cfg.replace(impl="pallas"), T, rtol=1e-10, atol=1e-10)


def test_kernel_matches_reference_fp32():
  cfg = paper(dim=16, scan_remat_every=2, **F32).replace(impl="pallas")
  compare(cfg, 19, rtol=1e-5, atol=1e-5)


def _loss(params, x, r, cfg, state=None):
  y, state = apply(params, x, cfg, state)
  extra = sum(jnp.sum(jnp.sin(w)) for w in state["weights"].values())
  extra += sum(jnp.sum(jnp.cos(s)) for s in state["momentum"].values())
  return jnp.sum(y * r) + 0.1 * extra


_value_and_grad = jax.jit(jax.value_and_grad(_loss), static_argnames="cfg")


def _assert_trees_close(a, b, tol):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path)
    )


@pytest.mark.parametrize(
  "name", ["paper_every2", "paper_every3_padded", "no_momentum_depth3_silu", "paper_surprise_clip"]
)
def test_kernel_gradients_equal_the_xla_path_x64(name):
  """d(loss)/d(slow parameters, x) through the kernel's backward (the vjp of one chunk's
  step, second order through the inner gradient) equals XLA's autodiff of the primal
  form; the loss reads y and the final W and S."""
  cfg, T = CASES[name]
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T, seed=4)
    r = jnp.asarray(np.random.default_rng(9).normal(size=x.shape), jnp.float64)
    v_k, g_k = _value_and_grad(params, x, r, cfg.replace(impl="pallas"))
    v_x, g_x = _value_and_grad(params, x, r, cfg.replace(impl="primal"))
    assert float(v_k) == pytest.approx(float(v_x), rel=1e-10, abs=1e-10)
    _assert_trees_close(g_k, g_x, 1e-9)
    # the gradient is not trivially zero anywhere it matters
    assert float(jnp.abs(g_k["W0"]["w0"]).max()) > 1e-6


def test_kernel_continues_a_stream_like_one_call_x64():
  """A stream split 7 + 1 + 11 tokens (a decode-like step in between) through the kernel
  equals one call of the XLA path, outputs and state."""
  cfg = paper(scan_remat_every=2)
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, 19, seed=3)
    y_ref, s_ref = apply_jit(params, x, cfg)
    kcfg, state, ys = cfg.replace(impl="pallas"), None, []
    for a, b in ((0, 7), (7, 8), (8, 19)):
      y, state = apply_jit(params, x[:, a:b], kcfg, state)
      ys.append(y)
    np.testing.assert_allclose(
      np.asarray(jnp.concatenate(ys, axis=1)), np.asarray(y_ref), rtol=1e-10, atol=1e-10
    )
    _assert_trees_close(state["weights"], s_ref["weights"], 1e-10)
    _assert_trees_close(state["momentum"], s_ref["momentum"], 1e-10)


def _equations(jaxpr):
  """Every equation of a jaxpr, those of nested jaxprs (pjit, custom_vjp, scan) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def _pallas_operand_dtypes(jaxpr) -> list:
  """Operand dtypes of every pallas_call in a jaxpr, nested jaxprs included."""
  eqns = [e for e in _equations(jaxpr) if e.primitive.name == "pallas_call"]
  return [x.aval.dtype for eqn in eqns for x in eqn.invars]


def test_kernel_reads_bfloat16_tokens_and_returns_what_casting_first_gave():
  """bfloat16 k, v, q go into the kernel as they are (half the HBM reads of float32
  copies) and are widened on chip: y, the final state and the cotangents of k, v, q and
  the gates are bit for bit those of widening them before the call (what `core` did)."""
  cfg = paper(dim=16, chunk_size=16, scan_remat_every=2, **F32)
  B, T, H, d = 1, 48, cfg.heads, cfg.head_dim
  state = init_state(make_params(cfg, 3), cfg, B)
  rng = np.random.default_rng(6)
  k, v, q = (jnp.asarray(rng.normal(size=(B, H, T, d)), jnp.bfloat16) for _ in range(3))
  gate_cols = [rng.uniform(0.0, 0.5, (B, H, T))] + [
    np.repeat(rng.uniform(lo, hi, (B, H, T // 16)), 16, axis=2) for lo, hi in ((0, 0.1), (0.5, 1))
  ]
  gates = jnp.asarray(np.stack(gate_cols + [np.ones((B, H, T))], axis=-1), jnp.float32)

  def scan(widen_first):
    def f(ws, ss, k, v, q, g):
      if widen_first:
        k, v, q = (t.astype(jnp.float32) for t in (k, v, q))
      return K.chunk_scan(cfg, ws, ss, k, v, q, g, platform="cpu", interpret=True)

    args = (state["weights"], state["momentum"], k, v, q, gates)
    out, vjp = jax.vjp(f, *args)
    cot = jax.tree.map(lambda t: jnp.asarray(rng.normal(size=t.shape), t.dtype), out)
    return out, vjp(cot), _pallas_operand_dtypes(jax.make_jaxpr(f)(*args).jaxpr)

  rng_state = rng.bit_generator.state
  out_n, cot_n, dtypes_n = scan(widen_first=False)
  rng.bit_generator.state = rng_state  # the same output cotangents for both
  out_w, cot_w, dtypes_w = scan(widen_first=True)
  assert jnp.bfloat16 in dtypes_n and jnp.bfloat16 not in dtypes_w
  for a, b in zip(jax.tree.leaves((out_n, cot_n)), jax.tree.leaves((out_w, cot_w))):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert cot_n[2].dtype == jnp.bfloat16 and float(jnp.abs(cot_n[2]).max()) > 0


def test_kernel_under_shard_map_equals_xla_on_a_cpu_mesh():
  """On a data×tensor mesh of 4 CPU devices the kernel runs under shard_map (one
  instance per device's batch rows and heads); values and gradients equal XLA's."""
  cfg = paper(dim=16, heads=2, scan_remat_every=2, **F32)
  params, x = make_inputs(cfg, 19, B=4, seed=5)
  r = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 1, 2), jax.devices("cpu")[:4])

  def run(c):
    def loss(params, x):
      with sharding.use_rules(mesh):
        return _loss(params, x, r, c)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  v_k, g_k = run(cfg.replace(impl="pallas"))
  v_x, g_x = run(cfg)
  assert float(v_k) == pytest.approx(float(v_x), rel=1e-5, abs=1e-5)
  _assert_trees_close(g_k, g_x, 1e-4)


def test_kernel_counts_its_flops_from_the_traced_step():
  """The registered FLOPs (cost models of compiled programs, training.aot) are the
  dot_general FLOPs of the chunk step: for a depth-2 memory d→h→d and C tokens, the
  forward kernel's step is 2 forwards (retrieval, loss) + the weight gradients and the
  hidden error: 2·C·(dh + hd)·2 + 2·C·(hd + dh) + 2·C·dh."""
  cfg = paper(dim=8, heads=1, **F32)
  d, h, C = cfg.head_dim, cfg.hidden_dim, cfg.chunk_size
  fwd, bwd = K._chunk_flops(cfg, [(d, h), (h, d), (d, h), (h, d)], 2, C, d, jnp.float32)
  assert fwd == 2 * C * (2 * d * h) * 2 + 2 * C * (2 * d * h) + 2 * C * d * h
  assert bwd > 2 * fwd  # recompute + the vjp (which runs the step's forward again)


def test_segments_are_as_long_as_vmem_allows_and_split_evenly():
  """scan_remat_every=None: the longest segment up to AUTO_SEGMENT_CHUNKS whose backward
  fits AUTO_SEGMENT_VMEM (170m's 64×256 memory: 32; a 128×512 one: fewer); a cap keeps
  its number of segments but spreads the chunks evenly over them (least padding)."""
  small = [(64, 256), (256, 64)] * 2
  big = [(128, 512), (512, 128)] * 2
  cfg = MemoryConfig.paper(64, chunk_size=16, impl="pallas")
  assert K.segment_chunks(cfg, 1024, 64, small) == K.AUTO_SEGMENT_CHUNKS
  n_big = K.segment_chunks(cfg, 1024, 128, big)
  assert 1 < n_big < K.AUTO_SEGMENT_CHUNKS
  assert K.vmem_bytes(n_big, 16, 128, big, backward=True) <= K.AUTO_SEGMENT_VMEM
  assert K.vmem_bytes(n_big + 1, 16, 128, big, backward=True) > K.AUTO_SEGMENT_VMEM
  # 4K tokens + 16 persistent + the idle chunk = 258 chunks: 9 segments of 29, not of 32
  # (3 padding chunks instead of 30); a cap of 8 keeps 8 (33 segments, 6 padding)
  assert K.segment_chunks(cfg, 258, 64, small) == 29
  assert K.segment_chunks(cfg.replace(scan_remat_every=8), 258, 64, small) == 8
  assert K.segment_chunks(cfg.replace(scan_remat_every=8), 5, 64, small) == 5


def test_unsupported_configs_are_one_line_errors():
  base = dict(dim=8, heads=2, chunk_size=4, impl="pallas")
  for kw, field in (
    (dict(commit_every=8), "commit_every"),
    (dict(max_grad_norm=1.0), "max_grad_norm"),
    (dict(momentum_order=2), "momentum_order"),
    (dict(residual_norm=True), "residual_norm"),
    (dict(per_parameter_lr_modulation=True), "per_parameter_lr_modulation"),
  ):
    with pytest.raises(ValueError) as e:
      MemoryConfig.paper(**base, **kw)
    msg = str(e.value)
    assert "impl='pallas'" in msg and field in msg and "\n" not in msg, msg
  with pytest.raises(ValueError, match="impl must be"):
    MemoryConfig.paper(dim=8, impl="mosaic")
  assert MemoryConfig.paper(**base).kernel_unsupported() is None


def test_tokens_laid_out_scan_chunks_long_are_not_padded_again():
  """`scan_chunks` is the chunk count the kernel runs (whole segments): tokens that
  `core` lays out that long go into the kernel as they are (no pad copy), shorter ones
  are padded with identity chunks to it."""
  cfg = paper(dim=16, scan_remat_every=3, **F32)
  C, H, d = cfg.chunk_size, cfg.heads, cfg.head_dim
  state = init_state(make_params(cfg, 0), cfg, 1)
  shapes = [w.shape[2:] for w in state["weights"].values()]
  # segments of at most 3 chunks, as even as their count allows: 4 -> 2 + 2, 5 -> 3 + 3
  assert [K.scan_chunks(cfg, c, d, shapes) for c in (4, 5, 6)] == [4, 6, 6]
  assert (
    K.scan_chunks(MemoryConfig.paper(64, impl="pallas"), 258, 64, [(64, 256), (256, 64)]) == 261
  )

  def primitives(chunks):
    tok = jnp.zeros((1, H, chunks * C, d), jnp.float32)
    gates = jnp.zeros((1, H, chunks * C, len(K.GATE_COLUMNS)), jnp.float32)
    scan = lambda *a: K.chunk_scan(cfg, *a, platform="cpu", interpret=True)
    args = (state["weights"], state["momentum"], tok, tok, tok, gates)
    return [e.primitive.name for e in _equations(jax.make_jaxpr(scan)(*args).jaxpr)]

  assert "pad" in primitives(5) and "pad" not in primitives(6)
