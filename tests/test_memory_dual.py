"""The dual form of the memory core (`MemoryConfig.impl="dual"`, docs/memory.md).

Explicitly against the float64 reference (every commit mode, depth 1–3, momentum off /
order 2, forgetting off, the soft clamp, per-parameter lr modulation), against the primal
path (outputs, final state and the gradients of the slow parameters), and the automatic
choice between the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titans_jax.memory import MemoryConfig, apply
from titans_jax.memory.dual import use_dual

from helpers import F32, apply_jit, compare, make_inputs, paper, tp

# name -> (config, T); every config runs impl="dual" explicitly.
DUAL_CASES = {
  "commit_chunk": (tp(commit_every=4), 19),
  "commit_none": (tp(commit_every=None), 19),
  "commit_none_one_chunk_blocks": (tp(commit_every=None, chunks_per_block=1), 19),
  "commit_3chunks": (tp(commit_every=12), 37),
  "commit_2chunks_chunk1": (tp(chunk_size=1, commit_every=2), 9),
  "depth1": (tp(depth=1, commit_every=8), 19),
  "depth1_commit_none": (tp(depth=1, commit_every=None), 19),
  "depth2_no_residual": (tp(residual_norm=False, activation="silu", commit_every=8), 19),
  "depth3": (tp(depth=3, commit_every=12), 37),
  "depth3_commit_chunk": (tp(depth=3, commit_every=4), 19),
  "momentum_off": (tp(momentum=False, commit_every=8), 19),
  "momentum_off_commit_none": (tp(momentum=False, commit_every=None), 19),
  "momentum_order2": (tp(momentum_order=2, commit_every=8), 19),
  "momentum_order3_learned_combine_zeroth": (
    tp(
      momentum_order=3,
      learned_momentum_combine=True,
      learned_combine_include_zeroth=True,
      commit_every=12,
    ),
    37,
  ),
  "forget_off": (tp(forget=False, commit_every=8), 19),
  "forget_off_momentum_off": (tp(forget=False, momentum=False, commit_every=None), 19),
  "max_grad_norm": (tp(max_grad_norm=0.05, commit_every=8), 19),
  "max_grad_norm_commit_none": (tp(max_grad_norm=0.05, commit_every=None), 19),
  "per_parameter_lr_modulation": (
    tp(per_parameter_lr_modulation=True, max_mem_layer_modulation=3.0, commit_every=8),
    19,
  ),
  "clamp_and_modulation_depth3": (
    tp(
      depth=3,
      max_grad_norm=0.3,
      per_parameter_lr_modulation=True,
      max_mem_layer_modulation=2.0,
      commit_every=None,
    ),
    19,
  ),
  "dense_recurrence": (tp(commit_every=12, momentum_order=2, recurrence="dense"), 37),
  "paper": (paper(), 19),
  "odd_commit_2chunks": (tp(dim=9, heads=3, chunk_size=5, commit_every=10), 37),
  "odd_paper_kitchen_sink": (
    paper(
      dim=9,
      heads=3,
      chunk_size=5,
      commit_every=15,
      qk_rmsnorm=True,
      attn_pool_chunks=True,
      per_parameter_lr_modulation=True,
      max_grad_norm=0.5,
      momentum_order=2,
      learned_momentum_combine=True,
      learned_combine_include_zeroth=True,
    ),
    37,
  ),
}


@pytest.mark.parametrize("name", list(DUAL_CASES))
def test_dual_matches_reference_x64(name):
  cfg, T = DUAL_CASES[name]
  cfg = cfg.replace(impl="dual")
  assert use_dual(cfg)
  with jax.enable_x64(True):
    compare(cfg, T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["tp_commit_none", "tp_commit_2chunks"])
def test_dual_matches_reference_fp32(name):
  cfg = {
    "tp_commit_none": tp(dim=16, commit_every=None, max_lr=0.1, **F32),
    "tp_commit_2chunks": tp(dim=16, commit_every=8, max_lr=0.1, **F32),
  }[name]
  compare(cfg.replace(impl="dual"), 19, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- dual == primal ---

AGREE_CASES = {
  "commit_none_order2_clamp": tp(
    commit_every=None, momentum_order=2, max_grad_norm=0.2, per_parameter_lr_modulation=True
  ),
  "commit_2chunks_depth3": tp(depth=3, commit_every=8),
  "paper": paper(),
}


def _loss(params, x, r, cfg):
  y, state = apply(params, x, cfg)
  extra = sum(jnp.sum(jnp.square(w)) for w in state["weights"].values())
  return jnp.sum(y * r) + 0.1 * extra


_value_and_grad = jax.jit(jax.value_and_grad(_loss), static_argnames="cfg")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AGREE_CASES))
def test_dual_and_primal_agree_values_state_and_grads(name):
  cfg = AGREE_CASES[name]
  dual, primal = cfg.replace(impl="dual"), cfg.replace(impl="primal")
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, 19, seed=4)
    r = jnp.asarray(np.random.default_rng(9).normal(size=x.shape), jnp.float64)
    (y_d, s_d), (y_p, s_p) = apply_jit(params, x, dual), apply_jit(params, x, primal)
    np.testing.assert_allclose(np.asarray(y_d), np.asarray(y_p), rtol=1e-10, atol=1e-10)
    for part in ("weights", "grad_point", "momentum"):
      for n in s_p[part]:
        np.testing.assert_allclose(
          np.asarray(s_d[part][n]),
          np.asarray(s_p[part][n]),
          rtol=1e-10,
          atol=1e-10,
          err_msg=f"{part}[{n}]",
        )
    v_d, g_d = _value_and_grad(params, x, r, dual)
    v_p, g_p = _value_and_grad(params, x, r, primal)
    assert float(v_d) == pytest.approx(float(v_p), rel=1e-10, abs=1e-10)
    flat_d = jax.tree_util.tree_leaves_with_path(g_d)
    flat_p = jax.tree_util.tree_leaves(g_p)
    for (path, a), b in zip(flat_d, flat_p):
      np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-10, err_msg=jax.tree_util.keystr(path)
      )


@pytest.mark.slow
def test_dual_remat_off_same_values_and_grads():
  cfg = tp(commit_every=8, momentum_order=2).replace(impl="dual")
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, 19, seed=2)
    r = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float64)
    v1, g1 = _value_and_grad(params, x, r, cfg.replace(remat=True))
    v0, g0 = _value_and_grad(params, x, r, cfg.replace(remat=False))
    assert float(v1) == pytest.approx(float(v0), rel=1e-12, abs=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------ which path runs ---


def test_auto_choice_and_validation():
  assert use_dual(tp())  # auto: dual
  assert not use_dual(tp(impl="primal"))
  assert not use_dual(tp(spectral_norm_surprises=True))  # Newton–Schulz: primal
  assert use_dual(MemoryConfig.paper(dim=8, heads=2))
  with pytest.raises(ValueError, match="spectral_norm_surprises"):
    tp(spectral_norm_surprises=True, impl="dual")
  with pytest.raises(ValueError, match="impl"):
    tp(impl="fast")
