"""Helpers shared by the test files (test files import this module, never each other).

* `run_concurrently`: compile jobs in a thread pool before the tests that need them. XLA's
  compiler releases the GIL, so several `lower(...).compile()` calls (or first calls of
  jitted functions) overlap with each other and with the next one's tracing; the tests'
  own calls then hit the compiled executables. Checks never run in these threads.
* The memory against the float64 reference (tests/reference_memory.py): `tp` / `paper`
  small configs, `make_params` / `make_inputs` random slow parameters and inputs,
  `apply_jit`, `compare`, and the dtype sets `X64` / `F32`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from titans_jax.memory import MemoryConfig, apply, init
from titans_jax.runtime.steps import FAST_COMPILE

from reference_memory import reference_apply


def run_concurrently(jobs, max_workers=None):
  """Call every zero-argument job, up to max_workers (default: the CPU count) at a
  time, and re-raise the first error."""
  jobs = list(jobs)
  workers = min(len(jobs), max_workers or os.cpu_count() or 1, os.cpu_count() or 1)
  with ThreadPoolExecutor(max(1, workers)) as pool:
    for f in [pool.submit(job) for job in jobs]:
      f.result()


X64 = dict(dtype="float64", param_dtype="float64", inner_dtype="float64")

# The memory's jit; compiled once per (config, shape). Optimisation level 0 only makes
# XLA compile faster on these tiny shapes; it does not change the maths.
apply_jit = jax.jit(apply, static_argnames="cfg", compiler_options=FAST_COMPILE)


def make_params(cfg, seed):
  """Random slow parameters in `init`'s layout (its pytree structure, shapes, dtypes).

  Values are drawn with NumPy at init-like scales, with every norm scale/gamma, bias
  and pool weight non-zero so that no knob hides behind a neutral initialisation.
  (Running `init` itself would compile many PRNG kernels, slow on CPU; its layout is
  all that matters here.)"""
  abstract = jax.eval_shape(lambda: init(jax.random.key(0), cfg))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    keys = [getattr(p, "key", None) for p in path]
    shape = leaf.shape
    n = rng.normal(size=shape)
    if keys[-1] == "scale":  # RMSNorm scales
      v = 1.0 + 0.2 * n
    elif keys[-1] == "gamma":  # (γ + 1) gammas, fast and slow
      v = 0.2 * n
    elif keys[0] == "attn_pool":  # far from the mean pool
      v = n
    elif keys[-1] in ("b", "bias"):
      v = 0.5 * n
    else:
      if keys[0] == "W0":
        fan_in = shape[-2]
      elif keys[0] == "out_proj":
        fan_in = shape[0] * shape[1]
      else:  # D×..., conv kernel K×H×d
        fan_in = shape[0]
      v = n / math.sqrt(fan_in)
    return jnp.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def make_inputs(cfg, T, B=2, seed=0):
  params = make_params(cfg, seed + 100)
  x = np.random.default_rng(seed + 7).normal(size=(B, T, cfg.dim))
  return params, jnp.asarray(x, jnp.dtype(cfg.dtype))


def compare(cfg, T, rtol, atol, B=2, seed=0):
  params, x = make_inputs(cfg, T, B, seed)
  y, state = apply_jit(params, x, cfg)
  y_ref, ref = reference_apply(params, x, cfg)
  np.testing.assert_allclose(
    np.asarray(y, np.float64), y_ref, rtol=rtol, atol=atol, err_msg="retrieved output y"
  )
  for part in ("weights", "grad_point", "momentum"):
    assert sorted(state[part]) == sorted(ref[part]), part
    for name, want in ref[part].items():
      got = np.asarray(state[part][name], np.float64)
      assert got.shape == want.shape, (part, name, got.shape, want.shape)
      np.testing.assert_allclose(
        got, want, rtol=rtol, atol=atol, err_msg=f"final state {part}[{name!r}]"
      )
  assert int(state["pos"]) == T
  # The reference changes something: the memory actually moved (and y is not trivial).
  for name, w in ref["weights"].items():
    w0 = np.broadcast_to(np.asarray(params["W0"][name], np.float64), w.shape)
    if T >= cfg.chunk_size:
      assert np.abs(w - w0).max() > 1e-6, f"fast weight {name} never updated"
  return y_ref


def tp(**kw):
  """titans-pytorch mode, small and in float64 unless overridden."""
  base = dict(dim=8, heads=2, chunk_size=4, expansion=2.0)
  base.update(X64)
  base.update(kw)
  return MemoryConfig.titans_pytorch(**base)


def paper(**kw):
  base = dict(dim=8, heads=2, chunk_size=4, expansion=2.0)
  base.update(X64)
  base.update(kw)
  return MemoryConfig.paper(**base)


# fp32 dtypes of the memory (the fp32 reference cases and the property tests).
F32 = dict(dtype="float32", param_dtype="float32", inner_dtype="float32")
