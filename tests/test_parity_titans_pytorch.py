"""titans_jax vs titans-pytorch 0.5.5 (issue 3): load its NeuralMemory and reproduce it.

Needs the `parity` extra (torch==2.13.0 CPU, titans-pytorch==0.5.5), which .ci/run
installs. Without it the module is skipped — except where CI (or
TITANS_JAX_REQUIRE_PARITY=1) is set: there a missing extra is an error, never a silent
pass.

Tolerances (never loosened): output and state 1e-5 in float32 and 1e-10 in float64;
gradients of loss = mean(y²) + Σ_w mean(W_final²) w.r.t. every slow parameter 1e-4 in
float32. "Within tol" is |ours − torch| ≤ tol·(1 + |torch|) elementwise
(numpy.allclose with rtol = atol = tol; see titans_jax.interop.compare). float64 is
enabled only inside the tests that use it.

`C.compare` in float32 measures titans_jax float32 against the float64 run of the same
titans-pytorch module (its float32 weights, cast): two float32 runs each carry rounding
of the order of the tolerance (docs/titans_pytorch.md §5 has the measurement), so the
tolerance is spent on ours alone. The hand-over tests below mix the two frameworks'
float32 states on purpose and compare float32 with float32.
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("TITANS_JAX_REQUIRE_PARITY"):
  import titans_pytorch  # noqa: F401
  import torch  # noqa: F401  (CI installs the parity extra: a missing one must fail)
else:
  torch = pytest.importorskip(
    "torch", reason="parity extra not installed: pip install -e '.[parity]'"
  )
  pytest.importorskip("titans_pytorch", reason="parity extra not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from titans_pytorch import NeuralMemory  # noqa: E402
from titans_pytorch.memory_models import (  # noqa: E402
  GatedResidualMemoryMLP,
  MemoryAttention,
  MemoryMLP,
)

from titans_jax.interop import compare as C  # noqa: E402
from titans_jax.interop.titans_pytorch import (  # noqa: E402
  UnsupportedTorchSetting,
  from_torch,
  state_from_torch,
  state_to_torch,
)
from titans_jax.memory import MemoryConfig  # noqa: E402

from helpers import run_concurrently  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.slow]

F32, F64 = 1e-5, 1e-10


SEQ, BATCH = 37, 2


def test_reference_versions():
  assert importlib.metadata.version("titans-pytorch") == "0.5.5"
  assert torch.__version__.split("+")[0] == "2.13.0"


# Each config switches on several knobs so that, together, the grid covers every knob
# of docs/spec.md §1 (and odd sizes: heads 3, head width 5, chunk 5, sequence 37). Where a
# float32 stream is sensitive (see docs/titans_pytorch.md §5) max_lr is 0.1; max_lr = 1
# runs in the first and fourth configs and in every float64 test. float32 runs each
# config as adjusted by F32_CASES below.
GRID = [
  pytest.param(dict(heads=3, dim_head=5, chunk_size=5), id="heads3-dimhead5-chunk5"),
  pytest.param(
    dict(
      heads=2,
      dim_head=8,
      chunk_size=4,
      batch_size=8,
      qk_rmsnorm=True,
      post_rmsnorm=True,
      max_lr=0.1,
      qkv_activation="silu",
    ),
    id="heads2-dimhead8-chunk4-batch8-qkrmsnorm-postrmsnorm-maxlr0.1-silu",
  ),
  pytest.param(
    dict(
      heads=2,
      dim_head=8,
      chunk_size=5,
      batch_size=5,
      momentum_order=2,
      learned_momentum_combine=True,
      learned_combine_include_zeroth=True,
      attn_pool_chunks=True,
      per_parameter_lr_modulation=True,
      max_mem_layer_modulation=2.0,
      max_lr=0.1,
    ),
    id="heads2-dimhead8-chunk5-batch5-order2-learnedcombine-zeroth-attnpool-lrmod-maxlr0.1",
  ),
  pytest.param(
    dict(
      heads=2,
      dim_head=4,
      chunk_size=5,
      momentum=False,
      spectral_norm_surprises=True,
      max_grad_norm=0.5,
      depth=3,
      expansion=2.25,
      residual_norm=False,
    ),
    id="heads2-dimhead4-chunk5-nomomentum-spectral-maxgradnorm-depth3-exp2.25-noresnorm",
  ),
  pytest.param(
    dict(
      heads=4,
      dim_head=4,
      chunk_size=5,
      batch_size=10,
      depth=1,
      momentum_order=2,
      max_grad_norm=2.0,
      pre_rmsnorm=False,
      max_lr=0.1,
    ),
    id="heads4-dimhead4-chunk5-batch10-depth1-order2-maxgradnorm-noprenorm",
  ),
]


def _assert_rows(rows, dtype):
  bad = C.failures(rows, dtype)
  assert not bad, "mismatch vs titans-pytorch:\n" + "\n".join(bad) + "\n" + C.format_table(rows)
  # the comparison is not vacuous: output, fast weights and every gradient are non-zero
  assert all(
    r["ref_max"] > 0
    for r in rows
    if r["quantity"] == "output" or r["quantity"].startswith(("state.weights", "grad."))
  ), C.format_table(rows)


# float32 is a test of our rounding only where the configuration is well-conditioned in
# float32: titans-pytorch's OWN float32 error against its float64 answer must be at most
# half the tolerance (asserted in the test, so a case cannot silently stop meaning
# anything). Seeds / knob changes below were chosen by that criterion alone, which does
# not look at titans_jax (measured 2026-11-22 over seeds 0-3: on every case our float32
# error tracks titans-pytorch's own; at seed 0, config 1 has one token where the
# post-RMSNorm amplifies rounding to ~1e-5 in BOTH implementations, config 4's k_proj
# gradient is 7.5e-5 off in torch float32). Newton-Schulz is float32-limited in both
# (5-8e-6 on every seed: docs/titans_pytorch.md §5), so config 3 runs without it here;
# spectral_norm_surprises is checked in float64 (grid and SPECTRAL_F64) at 1e-10.
F32_CASES = {  # grid id -> (seed, knob overrides)
  GRID[1].id: (1, {}),
  GRID[3].id: (0, dict(spectral_norm_surprises=False)),
  GRID[4].id: (1, {}),
}
GRID_F32 = [
  pytest.param(
    F32_CASES.get(p.id, (0, {}))[0], {**p.values[0], **F32_CASES.get(p.id, (0, {}))[1]}, id=p.id
  )
  for p in GRID
]


def _assert_float32_testable(rows):
  loose = [
    f"{r['quantity']} ({r['torch_mixed']:.1e})"
    for r in rows
    if not r["torch_mixed"] <= C.tolerance(r["quantity"], "float32") / 2
  ]
  assert not loose, (
    "titans-pytorch float32 itself is further than half the tolerance "
    "from its float64 answer: this case is ill-conditioned in float32 and "
    "tests nothing of ours; change its seed or knobs: " + ", ".join(loose)
  )


@pytest.fixture(scope="module")
def _grid_float32_compiled():
  """The float32 grid's programs (C.jitted "apply" and "grad", one pair per case),
  compiled ahead of its tests, two at a time in threads (XLA's compiler releases the
  GIL); C.compare's calls then reuse them. The torch modules are built here on the
  main thread (build_torch seeds torch and restores its global RNG); only jax's
  lowering and compilation run in the threads."""
  jobs = []
  for p in GRID_F32:
    seed, knobs = p.values
    k = C.Knobs(**knobs)
    cfg, params = from_torch(C.build_torch(k, seed=seed, dtype="float32"))
    x = jnp.asarray(C.make_input(seed, BATCH, SEQ, k.dim, "float32"))
    jobs += [
      lambda fn=C.jitted(name), p=params, x=x, c=cfg: fn.lower(p, x, c).compile()
      for name in ("apply", "grad")
    ]
  run_concurrently(jobs, max_workers=2)


@pytest.mark.parametrize("seed,knobs", GRID_F32)
def test_grid_float32_output_state_and_grads(seed, knobs, _grid_float32_compiled):
  rows = C.compare(seq_len=SEQ, batch=BATCH, dtype="float32", grads=True, seed=seed, **knobs)
  names = {r["quantity"] for r in rows}
  assert "output" in names and any(n.startswith("grad.W0.") for n in names)
  _assert_float32_testable(rows)
  _assert_rows(rows, "float32")


@pytest.mark.parametrize("knobs", GRID)
def test_grid_float64_output_and_state(knobs):
  rows = C.compare(seq_len=SEQ, batch=BATCH, dtype="float64", grads=False, **knobs)
  _assert_rows(rows, "float64")
  assert jnp.asarray(1.0).dtype == jnp.float32  # x64 stayed local to the comparison


# Newton–Schulz maps every singular value of the update towards 1; near 0 its slope is
# ≈ 3.4445⁵ ≈ 490, so float32 rounding in the (near-)null space of a low-rank chunk
# update is amplified to ~1e-5..1e-3 (titans-pytorch float32 is 3.7e-5 from its own
# float64 on the config below), and even full-rank updates leave both implementations
# 5-8e-6 from float64 (F32_CASES). spectral_norm_surprises is therefore checked in
# float64, gradients included.
SPECTRAL_F64 = [
  pytest.param(
    dict(
      chunk_size=5,
      batch_size=10,
      depth=1,
      momentum_order=2,
      spectral_norm_surprises=True,
      max_grad_norm=2.0,
      pre_rmsnorm=False,
    ),
    id="chunk5-batch10-depth1-order2-spectral-resnorm-maxgradnorm-noprenorm",
  ),
]


@pytest.mark.parametrize("knobs", SPECTRAL_F64)
def test_spectral_float64_output_state_and_grads(knobs):
  rows = C.compare(seq_len=SEQ, batch=BATCH, dtype="float64", grads=True, **knobs)
  _assert_rows(rows, "float64")


def test_float32_reference_is_the_float64_module_and_reports_torch_own_error():
  """Default float32 reference: titans-pytorch cast to float64, with its own float32
  error as `torch_mixed`; reference='same' is titans-pytorch float32 itself."""
  knobs = GRID[0].values[0]
  rows = C.compare(seq_len=SEQ, batch=BATCH, dtype="float32", grads=False, **knobs)
  same = C.compare(
    seq_len=SEQ, batch=BATCH, dtype="float32", grads=False, reference="same", **knobs
  )
  by_name = {r["quantity"]: r for r in same}
  for r in rows:
    assert 0 <= r["torch_mixed"] <= F32, r
    assert "torch_mixed" not in by_name[r["quantity"]]
  # torch float32 has rounding error of its own against the float64 reference, so the
  # two references give different errors for our output
  out = next(r for r in rows if r["quantity"] == "output")
  assert out["torch_mixed"] > 0
  assert by_name["output"]["max_abs"] != out["max_abs"]
  with pytest.raises(ValueError, match="reference"):
    C.compare(dtype="float32", reference="float16")


def test_negative_control_detects_a_head_mixup():
  """The same comparison fails when the converted params are subtly wrong."""

  def swap_heads(params):
    return {**params, "W0": {k: v[::-1] for k, v in params["W0"].items()}}

  rows = C.compare(
    seq_len=SEQ,
    batch=BATCH,
    dtype="float32",
    grads=False,
    params_hook=swap_heads,
    **GRID[0].values[0],
  )
  assert C.worst(rows, "output") > 1e-3
  assert C.worst(rows, "state.weights") > 1e-3


# ------------------------------------------------------------------- streaming ---

STREAM_KNOBS = GRID[2].values[0]  # heads 2, chunk 5, batch_size 5, order-2 momentum, ...
# titans-pytorch handles only calls that start on a chunk boundary, or single tokens.
TORCH_SPLITS = [12, 1, 1, 1, 10, 1, 1, 1, 1, 1, 7]
JAX_SPLITS = [13, 1, 23]  # any lengths


def _setup(knobs, dtype="float32"):
  nm = C.build_torch(C.Knobs(**knobs), seed=0, dtype=dtype)
  x = C.make_input(0, BATCH, SEQ, C.Knobs(**knobs).dim, dtype)
  cfg, params = from_torch(nm)
  return nm, x, cfg, params


def _torch_ref(nm, x, splits=TORCH_SPLITS):
  with torch.no_grad():
    y, st = C.torch_stream(nm, x, splits)
  return y.numpy(), st


def _max_err(a, b):
  """max |a − b| / (1 + |b|): ≤ tol is numpy.allclose(a, b, rtol=tol, atol=tol)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  err = np.abs(a - b) / (1.0 + np.abs(b))
  return float("nan") if np.isnan(err).any() else float(err.max())


def test_torch_stream_matches_one_jax_call():
  rows = C.compare(
    seq_len=SEQ, batch=BATCH, dtype="float32", grads=False, splits=TORCH_SPLITS, **STREAM_KNOBS
  )
  _assert_float32_testable(rows)
  _assert_rows(rows, "float32")


def test_jax_stream_matches_torch_stream():
  nm, x, cfg, params = _setup(STREAM_KNOBS)
  y_t, st_t = _torch_ref(nm, x)
  apply = C.jitted("apply")
  ys, state, start = [], None, 0
  for n in JAX_SPLITS:
    y, state = apply(params, jnp.asarray(x[:, start : start + n]), cfg, state)
    ys.append(y)
    start += n
  assert _max_err(jnp.concatenate(ys, axis=1), y_t) <= F32
  ref = state_from_torch(st_t, cfg, params)
  for row in C.state_rows(state, ref):
    assert row["mixed"] <= F32, row
  # the pending chunk matches too (2 tokens of chunk 7 are waiting)
  assert int(state["pos"]) == SEQ
  for part in ("x", "keys", "values", "lr"):
    assert _max_err(state["pending"][part], ref["pending"][part]) <= F32, part


# ------------------------------------------------------------------- hand-over ---

# The same config and call lengths as the streaming tests, so the compiled programs are
# shared (13 tokens from a fresh state, 23 from a carried one).
HANDOFF_KNOBS = STREAM_KNOBS


@pytest.mark.parametrize("dtype,tol", [("float32", F32), ("float64", F64)])
def test_state_started_in_torch_continued_in_jax(dtype, tol):
  with C.jax_dtype_scope(dtype):
    nm, x, cfg, params = _setup(HANDOFF_KNOBS, dtype)
    y_ref, st_ref = _torch_ref(nm, x)  # wholly in PyTorch
    with torch.no_grad():  # 14 tokens: 4 left in the cache
      _, st_mid = C.torch_stream(nm, x[:, :14])
    state = state_from_torch(st_mid, cfg, params)
    y, state = C.jitted("apply")(params, jnp.asarray(x[:, 14:]), cfg, state)
    assert _max_err(y, y_ref[:, 14:]) <= tol
    for row in C.state_rows(state, state_from_torch(st_ref, cfg, params)):
      assert row["mixed"] <= tol, row


@pytest.mark.parametrize("dtype,tol", [("float32", F32), ("float64", F64)])
def test_state_started_in_jax_continued_in_torch(dtype, tol):
  with C.jax_dtype_scope(dtype):
    nm, x, cfg, params = _setup(HANDOFF_KNOBS, dtype)
    y_ref, st_ref = _torch_ref(nm, x)
    _, state = C.jitted("apply")(params, jnp.asarray(x[:, :13]), cfg)  # unaligned
    st = state_to_torch(state, cfg)
    with torch.no_grad():  # torch resumes with single tokens up to the chunk boundary
      y, st = C.torch_stream(nm, x[:, 13:], [1, 1, 10, 12], state=st)
    assert _max_err(y.numpy(), y_ref[:, 13:]) <= tol
    ours, ref = state_from_torch(st, cfg, params), state_from_torch(st_ref, cfg, params)
    for row in C.state_rows(ours, ref):
      assert row["mixed"] <= tol, row


# ------------------------------------------------------------------ conversion ---


def test_default_module_is_the_titans_pytorch_preset():
  nm = NeuralMemory(dim=16, chunk_size=4, heads=2)
  cfg, params = from_torch(nm)
  assert cfg.has_gate and cfg.has_out_proj
  assert cfg.replace(gate=None, out_proj=None) == MemoryConfig.titans_pytorch(
    16, heads=2, chunk_size=4, dim_head=16
  )
  assert params["W0"]["w0"].shape == (2, 16, 64)


@pytest.mark.parametrize("d,expansion", [(7, 1.3), (5, 2.2), (6, 2.5)])
def test_odd_expansion_reproduces_hidden_width(d, expansion):
  nm = NeuralMemory(dim=d, chunk_size=2, model=MemoryMLP(d, depth=2, expansion_factor=expansion))
  cfg, _ = from_torch(nm)
  assert cfg.hidden_dim == int(d * expansion)


UNSUPPORTED = [
  pytest.param(dict(num_kv_per_token=2), "num_kv_per_token=2", id="num_kv_per_token2"),
  pytest.param(dict(gated_transition=True), "gated_transition", id="gated_transition"),
  pytest.param(dict(model=MemoryAttention(16)), "MemoryAttention", id="MemoryAttention"),
  pytest.param(
    dict(model=GatedResidualMemoryMLP(16, 1)), "GatedResidualMemoryMLP", id="GatedResidualMemoryMLP"
  ),
  pytest.param(
    dict(chunk_size=(2, 4)), "retrieve/store chunk sizes", id="retrieve_store_chunks_differ"
  ),
  pytest.param(dict(qkv_receives_diff_views=True), "qkv_receives_diff_views", id="qkv_diff_views"),
  pytest.param(dict(accept_weight_residual=True), "accept_weight_residual", id="weight_residual"),
  pytest.param(
    dict(per_head_learned_parameters=False), "per_head_learned_parameters", id="shared_head_params"
  ),
  pytest.param(dict(store_with_lookahead_value=True), "store_with_lookahead_value", id="lookahead"),
  pytest.param(
    dict(adaptive_step_transform=lambda s: s.sigmoid()),
    "adaptive_step_transform",
    id="custom_step_transform",
  ),
  pytest.param(
    dict(store_memory_loss_fn=lambda p, t: (p - t).abs().mean(-1)),
    "store_memory_loss_fn",
    id="custom_loss",
  ),
  pytest.param(dict(activation=torch.nn.Tanh()), "Tanh", id="tanh_activation"),
]


@pytest.mark.parametrize("kwargs,name", UNSUPPORTED)
def test_unsupported_setting_raises_naming_it(kwargs, name):
  kw = dict(dim=16, chunk_size=2)
  kw.update(kwargs)
  nm = NeuralMemory(**kw)
  with pytest.raises(UnsupportedTorchSetting, match=name.replace("(", r"\(")):
    from_torch(nm)


def test_mixed_dtype_module_is_refused():
  nm = NeuralMemory(dim=16, chunk_size=2)
  nm.to_keys.double()
  with pytest.raises(UnsupportedTorchSetting, match="mixed dtypes"):
    from_torch(nm)


def test_float64_module_needs_x64():
  nm = NeuralMemory(dim=16, chunk_size=2).double()
  with pytest.raises(ValueError, match="x64"):
    from_torch(nm)
  with jax.enable_x64(True):
    cfg, params = from_torch(nm)
    assert cfg.dtype == "float64" and params["q_proj"].dtype == jnp.float64


def test_compare_cli(capsys):
  """`python -m titans_jax.interop.compare` (the grid's first config: compiled already)."""
  rc = C.main(
    [
      "--heads",
      "3",
      "--dim-head",
      "5",
      "--chunk-size",
      "5",
      "--seq-len",
      str(SEQ),
      "--batch",
      str(BATCH),
      "--no-grads",
    ]
  )
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "output" in out and "state.weights.w0" in out and "OK" in out
