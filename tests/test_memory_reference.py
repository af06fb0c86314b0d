"""The fast memory path (`titans_jax.memory.apply`) against the naive float64 reference.

x64 configs must agree to 1e-10 (outputs and the final fast weights, momentum and
gradient point); a few fp32 configs to 1e-5. Every mode of docs/spec.md §1 and every optional
knob is exercised with randomised slow parameters (non-zero norm gammas, biases, pool
weights) so that no knob hides behind its neutral initialisation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titans_jax.memory import MemoryConfig, apply, init_state

from helpers import F32, X64, apply_jit, compare, make_inputs, make_params, paper, tp  # noqa: F401
from reference_memory import mem_grad, mem_loss, newton_schulz

# name -> (config, T)
X64_CASES = {
  # the three commit modes
  "commit_chunk": (tp(commit_every=4), 19),
  "commit_none": (tp(commit_every=None), 19),
  "commit_3chunks": (tp(commit_every=12), 37),
  "commit_none_small_blocks": (tp(commit_every=None, chunks_per_block=2), 19),
  "commit_2chunks_chunk1": (tp(chunk_size=1, commit_every=2), 9),
  # memory network depth / wrapper
  "depth1": (tp(depth=1, commit_every=8), 19),
  "depth3": (tp(depth=3, commit_every=4), 19),
  "no_residual_norm_silu": (tp(residual_norm=False, activation="silu", commit_every=8), 19),
  # optional knobs
  "qk_rmsnorm": (tp(qk_rmsnorm=True, commit_every=8), 19),
  "attn_pool_chunks": (tp(attn_pool_chunks=True, commit_every=8), 19),
  "per_parameter_lr_modulation": (
    tp(per_parameter_lr_modulation=True, max_mem_layer_modulation=3.0, commit_every=8),
    19,
  ),
  "max_grad_norm": (tp(max_grad_norm=0.05, commit_every=8), 19),
  # the hard clip of each chunk's surprise; bounds chosen so that some chunks clip and
  # some do not (test_surprise_clip_is_exact_below_its_bound_and_acts_above_it checks)
  "max_surprise_norm": (tp(max_surprise_norm=5.0, commit_every=8), 19),
  "paper_max_surprise_norm": (paper(max_surprise_norm=0.03), 19),
  "spectral_norm_surprises": (tp(spectral_norm_surprises=True, commit_every=8), 19),
  "momentum_order2": (tp(momentum_order=2, commit_every=8), 19),
  "momentum_order3_learned_combine": (
    tp(momentum_order=3, learned_momentum_combine=True, commit_every=8),
    19,
  ),
  "momentum_order2_combine_zeroth": (
    tp(
      momentum_order=2,
      learned_momentum_combine=True,
      learned_combine_include_zeroth=True,
      commit_every=None,
    ),
    19,
  ),
  "momentum_off": (tp(momentum=False, commit_every=8), 19),
  "forget_off": (tp(forget=False, commit_every=4), 19),
  "post_rmsnorm_gate_1head": (tp(heads=1, post_rmsnorm=True, gate=True, commit_every=4), 19),
  "one_head_plain": (tp(heads=1, commit_every=None), 19),
  "dim_head_out_proj": (tp(heads=2, dim_head=5, commit_every=8), 19),
  "max_lr": (tp(max_lr=0.3, commit_every=4), 19),
  # the paper preset: linear -> causal depthwise conv(4) -> SiLU, L2 q/k, post-norm, gate
  "paper": (paper(), 19),
  "paper_commit_none": (paper(commit_every=None, chunk_size=3), 19),
  # odd sizes: heads 3, chunk 5, T = 37, every commit mode
  "odd_commit_chunk": (tp(dim=9, heads=3, chunk_size=5, commit_every=5), 37),
  "odd_commit_none": (tp(dim=9, heads=3, chunk_size=5, commit_every=None), 37),
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
      spectral_norm_surprises=True,
      momentum_order=2,
      learned_momentum_combine=True,
      learned_combine_include_zeroth=True,
    ),
    37,
  ),
}


# The dense (K×K decay-matrix) form of the momentum / forgetting recurrences, where the
# config has it: the same sums as the associative scan.
if "recurrence" in MemoryConfig.__dataclass_fields__:
  for _name in (
    "commit_3chunks",
    "commit_none",
    "momentum_order3_learned_combine",
    "forget_off",
    "odd_paper_kitchen_sink",
  ):
    _cfg, _T = X64_CASES[_name]
    X64_CASES[_name + "_dense"] = (_cfg.replace(recurrence="dense"), _T)


# The primal path (per-chunk weights; `impl="auto"` picks the dual form wherever it can,
# so these keep the primal path covered; spectral_norm_surprises always runs primal).
if "impl" in MemoryConfig.__dataclass_fields__:
  for _name in (
    "commit_chunk",
    "commit_none",
    "commit_3chunks",
    "depth1",
    "depth3",
    "per_parameter_lr_modulation",
    "max_grad_norm",
    "max_surprise_norm",
    "paper_max_surprise_norm",
    "momentum_order2",
    "momentum_order3_learned_combine",
    "momentum_off",
    "forget_off",
    "paper",
    "odd_commit_2chunks",
    "commit_none_dense",
  ):
    _cfg, _T = X64_CASES[_name]
    X64_CASES[_name + "_primal"] = (_cfg.replace(impl="primal"), _T)


# Two-level rematerialisation of the block scan: groups of n blocks and the N mod n
# blocks left over (N = 5 blocks here; tests/test_memory_properties.py has the gradients).
if "scan_remat_every" in MemoryConfig.__dataclass_fields__:
  for _name, _every in (("paper", 2), ("commit_chunk_primal", 3)):
    _cfg, _T = X64_CASES[_name]
    X64_CASES[f"{_name}_scan_remat_every{_every}"] = (_cfg.replace(scan_remat_every=_every), _T)

# Several blocks to a checkpoint (remat_blocks): groups of n and the N mod n left over,
# alone and inside the two-level remat's groups.
for _name, _n, _every in (("paper", 3, 4), ("commit_chunk_primal", 2, None)):
  _cfg, _T = X64_CASES[_name]
  X64_CASES[f"{_name}_remat_blocks{_n}" + (f"_every{_every}" if _every else "")] = (
    _cfg.replace(remat=True, remat_blocks=_n, scan_remat_every=_every),
    _T,
  )


@pytest.mark.parametrize("name", list(X64_CASES))
def test_fast_path_matches_reference_x64(name):
  cfg, T = X64_CASES[name]
  with jax.enable_x64(True):
    compare(cfg, T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["max_surprise_norm", "paper_max_surprise_norm"])
def test_surprise_clip_is_exact_below_its_bound_and_acts_above_it(name):
  """The clip changes nothing while every chunk's surprise is within the bound (the same
  floats as no clip) and changes the memory at the bound of the x64 case."""
  cfg, T = X64_CASES[name]
  with jax.enable_x64(True):
    params, x = make_inputs(cfg, T, 2, 0)
    y_off = apply_jit(params, x, cfg.replace(max_surprise_norm=None))[0]
    y_far = apply_jit(params, x, cfg.replace(max_surprise_norm=1e9))[0]
    y_on = apply_jit(params, x, cfg)[0]
  np.testing.assert_array_equal(np.asarray(y_far), np.asarray(y_off))
  assert float(jnp.abs(y_on - y_off).max()) > 1e-6


# fp32: moderate inner learning rates keep the memory dynamics well conditioned (with
# max_lr = 1 over 37 tokens a 1e-7 input change moves y by ~1e-4 in exact arithmetic,
# so no fp32 implementation could match to 1e-5).
FP32_CASES = {
  "tp_commit_none": (tp(dim=16, commit_every=None, max_lr=0.1, **F32), 19),
  "tp_commit_2chunks": (tp(dim=16, commit_every=8, max_lr=0.1, **F32), 19),
  "paper": (paper(**F32), 19),
  "paper_odd_commit_2chunks": (paper(dim=9, heads=3, chunk_size=5, commit_every=10, **F32), 37),
}


if "impl" in MemoryConfig.__dataclass_fields__:
  FP32_CASES["tp_commit_2chunks_primal"] = (
    FP32_CASES["tp_commit_2chunks"][0].replace(impl="primal"),
    19,
  )


@pytest.mark.parametrize("name", list(FP32_CASES))
def test_fast_path_matches_reference_fp32(name):
  cfg, T = FP32_CASES[name]
  compare(cfg, T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 4, 5])
def test_short_sequences_x64(T):
  """Fewer tokens than a chunk (nothing stored yet) and exactly one chunk."""
  with jax.enable_x64(True):
    compare(tp(commit_every=None), T, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------ the contract itself ---

RANK_CASES = [
  X64_CASES[n][0]
  for n in ("commit_3chunks", "odd_paper_kitchen_sink", "momentum_off", "one_head_plain", "depth1")
]


@pytest.mark.slow
def test_apply_respects_rank_promotion():
  with jax.numpy_rank_promotion("raise"), jax.enable_x64(True):
    for cfg in RANK_CASES:
      params = make_params(cfg, 0)
      for T in (1, 9):
        x = jnp.zeros((2, T, cfg.dim), jnp.float64)
        try:  # abstract evaluation only: the check is about tracing
          jax.eval_shape(lambda p, x: apply(p, x, cfg, init_state(p, cfg, 2)), params, x)
          jax.eval_shape(jax.grad(lambda p, x: apply(p, x, cfg)[0].sum()), params, x)
        except ValueError as e:  # keep the report short
          raise AssertionError(f"{cfg}: {str(e)[:200]}") from None


# ----------------------------------------------------- the reference checks itself ---


@pytest.mark.parametrize(
  "depth,residual,act",
  [(1, True, "gelu"), (2, True, "gelu"), (3, False, "silu"), (2, False, "gelu")],
)
def test_reference_gradient_matches_finite_differences(depth, residual, act):
  """The hand-derived inner gradient of the reference against central differences."""
  cfg = MemoryConfig(dim=5, depth=depth, expansion=2.0, residual_norm=residual, activation=act)
  rng = np.random.default_rng(depth)
  W = {n: rng.normal(size=s) * 0.7 for n, s in cfg.fast_weight_shapes().items()}
  keys, values = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  lrs = rng.uniform(0.1, 1.0, size=3)
  grads = mem_grad(W, keys, values, lrs, cfg)
  eps = 1e-6
  for name, w in W.items():
    for idx in np.ndindex(w.shape):
      Wp = {n: v.copy() for n, v in W.items()}
      Wm = {n: v.copy() for n, v in W.items()}
      Wp[name][idx] += eps
      Wm[name][idx] -= eps
      fd = (mem_loss(Wp, keys, values, lrs, cfg) - mem_loss(Wm, keys, values, lrs, cfg)) / (2 * eps)
      assert math.isclose(grads[name][idx], fd, rel_tol=1e-6, abs_tol=1e-8), (name, idx)


def test_reference_newton_schulz_orthogonalises():
  rng = np.random.default_rng(0)
  for shape in [(4, 4), (6, 3), (3, 6)]:
    X = newton_schulz(rng.normal(size=shape))
    assert X.shape == shape
    s = np.linalg.svd(X, compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.3, s  # NS5 gives singular values near 1
