"""The train step on a toy NNX model (fast to compile): gradient accumulation is exact,
the NaN/Inf guard leaves the state untouched, bf16 compute keeps float32 parameters,
and the schedule / weight-decay mask follow the paper's recipe."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from titans_jax.config import TrainConfig
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps as ts


class Toy(nnx.Module):
  def __init__(self, dtype=jnp.float32, *, rngs):
    self.emb = nnx.Embed(64, 16, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(16, 64, dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BxT):
    return self.out(jax.nn.gelu(self.emb(tokens_BxT)))


def _batch(B=8, T=12, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 64, size=(B, T + 1)).astype(np.int32)
  w = (rng.random((B, T)) > 0.3).astype(np.float32)  # uneven weights per micro-batch
  return {
    "inputs": jnp.asarray(x[:, :-1]),
    "targets": jnp.asarray(x[:, 1:]),
    "weights": jnp.asarray(w),
  }


def _state(tcfg, dtype=jnp.float32):
  tx = opt_lib.make_optimizer(tcfg)
  graphdef, state = ts.create_train_state(Toy(dtype, rngs=nnx.Rngs(0)), tx)
  return graphdef, tx, state


def test_grad_accumulation_equals_one_big_batch():
  tcfg = TrainConfig(steps=10, warmup_steps=1, lr=1e-2)
  graphdef, tx, s1 = _state(tcfg)
  _, _, s4 = _state(tcfg)
  sched = opt_lib.lr_schedule(tcfg)
  batch = _batch()
  step1 = ts.make_train_step(graphdef, tx, sched, accum_steps=1, donate=False)
  step4 = ts.make_train_step(graphdef, tx, sched, accum_steps=4, donate=False)
  for _ in range(3):
    s1, m1 = step1(s1, batch)
    s4, m4 = step4(s4, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(s4.step) == 3


def test_nan_guard_keeps_state():
  tcfg = TrainConfig(steps=10, warmup_steps=1)
  graphdef, tx, state = _state(tcfg)
  bad = dict(_batch(), weights=_batch()["weights"].at[0, 0].set(jnp.nan))
  step = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(tcfg), donate=False)
  new, m = step(state, bad)
  assert int(m["finite"]) == 0 and not np.isfinite(float(m["loss"]))
  for a, b in zip(
    jax.tree.leaves((state.params, state.opt_state)), jax.tree.leaves((new.params, new.opt_state))
  ):
    np.testing.assert_array_equal(a, b)
  # an overflowing learning rate with finite gradients is caught too
  inf_cfg = TrainConfig(steps=10, warmup_steps=0, lr=float("inf"))
  graphdef, tx, state = _state(inf_cfg)
  step = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(inf_cfg), donate=False)
  new, m = step(state, _batch())
  assert int(m["finite"]) == 0 and np.isfinite(float(m["loss"]))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)


def test_bf16_compute_keeps_f32_params_and_learns():
  tcfg = TrainConfig(steps=20, warmup_steps=2, lr=3e-2)
  graphdef, tx, state = _state(tcfg, dtype=jnp.bfloat16)
  step = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(tcfg))
  batch = _batch()
  losses = []
  for _ in range(15):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.5
  # The forward really computes in bf16 ...
  out = nnx.merge(graphdef, state.params)(batch["inputs"])
  assert out.dtype == jnp.bfloat16
  # ... while the parameters stay float32 and keep updates finer than bf16 can hold:
  # Adam's first step moves every entry by lr = 1e-4, far below a bf16 ulp of these
  # weights (~1e-3); a step that rounded the parameters through bf16 would move them by
  # the rounding error instead (median 2.3e-4 here, measured), or not at all.
  small = TrainConfig(steps=10, warmup_steps=0, lr=1e-4, weight_decay=0.0)
  graphdef, tx, state = _state(small, dtype=jnp.bfloat16)
  before = np.asarray(state.params["out"]["kernel"][...], np.float64)
  state, _ = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(small), donate=False)(
    state, batch
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  after = np.asarray(state.params["out"]["kernel"][...], np.float64)
  delta = np.abs(after - before)
  np.testing.assert_allclose(delta, 1e-4, rtol=1e-2)


def test_schedule_and_decay_mask():
  t = TrainConfig(steps=100, warmup_steps=10, lr=4e-4, min_lr_ratio=0.1)
  s = opt_lib.lr_schedule(t)
  assert float(s(0)) == 0.0
  assert float(s(10)) == pytest.approx(4e-4)
  assert float(s(100)) == pytest.approx(4e-5, rel=1e-4)
  assert float(s(55)) < float(s(20))
  short = opt_lib.lr_schedule(dataclasses.replace(t, steps=6))  # warmup clamped to 3
  assert float(short(3)) == pytest.approx(4e-4)
  assert float(short(5)) < float(short(4)) < 4e-4
  mask = opt_lib._decay_mask({"w": jnp.ones((3, 3)), "b": jnp.ones((3,))})
  assert mask == {"w": True, "b": False}


def test_compiler_options_fast_compile_only_when_asked(monkeypatch):
  """Steps compile with XLA's defaults; FAST_COMPILE (CPU backend level 0: slower steps)
  only with TITANS_JAX_FAST_COMPILE=1, as the suite's conftest sets it."""
  monkeypatch.delenv(ts.FAST_COMPILE_ENV, raising=False)
  assert ts.compiler_options() is None
  monkeypatch.setenv(ts.FAST_COMPILE_ENV, "0")
  assert ts.compiler_options() is None
  monkeypatch.setenv(ts.FAST_COMPILE_ENV, "1")
  assert ts.compiler_options() == ts.FAST_COMPILE  # the suite runs on CPU
