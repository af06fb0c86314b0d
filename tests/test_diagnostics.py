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
from reference_memory import reference_apply
from test_memory_reference import apply_jit, make_inputs, paper, tp

from titans_jax import memory
from titans_jax.memory import core

diagnostics_jit = jax.jit(memory.diagnostics, static_argnames="cfg",
                          compiler_options={"xla_backend_optimization_level": 0})

# name -> (config, T); T is never a multiple of the chunk size (a pending last chunk).
CASES = {
    "paper": (paper(), 19),
    "commit_2chunks": (tp(commit_every=8), 19),
    "commit_none_knobs": (tp(commit_every=None, momentum_order=2, max_grad_norm=0.05,
                             per_parameter_lr_modulation=True, max_mem_layer_modulation=3.0), 19),
    "momentum_forget_off": (tp(momentum=False, forget=False, commit_every=4), 10),
}


def check_against_reference(d, params, x, cfg):
    rec = {}
    reference_apply(params, x, cfg, record=rec)
    G = x.shape[1] // cfg.chunk_size
    applied = np.asarray(d["chunk_applied"])
    assert applied[:G].all() and not applied[G:].any()
    np.testing.assert_array_equal(np.asarray(d["chunk_index"]), np.arange(len(applied)))
    expected = set(rec) - ({"alpha"} if not cfg.forget else set()) \
        - ({"eta", "momentum_norm"} if not cfg.momentum else set())
    assert expected <= set(d), sorted(expected - set(d))
    for name in expected:
        got = np.asarray(d[name], np.float64)
        if got.shape[1] != x.shape[1]:                 # per chunk: the complete ones
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
            np.testing.assert_allclose(np.asarray(eager[name]), np.asarray(jitted[name]),
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        check_against_reference(eager, params, x, cfg)


def test_memory_diagnostics_continue_a_stream_x64():
    """A call continuing from apply's state (mid-chunk) reports what one whole call does."""
    cfg, T = tp(commit_every=8), 13
    split = 6                                  # chunk 4: this call completes chunks 1 and 2
    with jax.enable_x64(True):
        params, x = make_inputs(cfg, T)
        whole = diagnostics_jit(params, x, cfg)
        _, state = apply_jit(params, x[:, :split], cfg)
        second = diagnostics_jit(params, x[:, split:], cfg, state)
        for name in ("theta", "inner_loss", "grad_point_loss"):
            np.testing.assert_allclose(second[name], whole[name][:, split:],
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        applied = np.asarray(second["chunk_applied"])
        np.testing.assert_array_equal(np.asarray(second["chunk_index"])[applied], [1, 2])
        for name in ("alpha", "eta", "surprise_norm", "momentum_norm", "weights_norm"):
            np.testing.assert_allclose(np.asarray(second[name])[:, applied], whole[name][:, 1:3],
                                       rtol=1e-12, atol=1e-12, err_msg=name)


def test_memory_diagnostics_on_a_mesh():
    """Batch over 'data', heads over 'model' (8 fake CPU devices): the same numbers."""
    cfg, T = paper(dim=16, heads=4, dtype="float32", param_dtype="float32",
                   inner_dtype="float32"), 12
    params, x = make_inputs(cfg, T)
    plain = diagnostics_jit(params, x, cfg)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    params_sharded = jax.device_put(params, NamedSharding(mesh, P()))
    params_sharded["q_proj"] = jax.device_put(params["q_proj"], NamedSharding(mesh, P(None, "model")))
    sharded = diagnostics_jit(params_sharded, x_sharded, cfg)
    assert len(sharded["theta"].sharding.device_set) == 8
    for name in plain:
        np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(plain[name]),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_project_accepts_no_conv_state():
    """core._project(p, x, None, cfg) on a conv config: None is the zero context."""
    cfg = paper(dtype="float32", param_dtype="float32", inner_dtype="float32")
    params, x = make_inputs(cfg, 5)
    zeros = jnp.zeros((2, cfg.qkv_conv - 1, 3, cfg.heads, cfg.head_dim))
    with_none = core._project(params, x, None, cfg)
    with_zeros = core._project(params, x, zeros, cfg)
    for a, b in zip(jax.tree.leaves(with_none), jax.tree.leaves(with_zeros)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
