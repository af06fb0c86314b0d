"""Test-wide JAX set-up: 8 fake CPU devices (for sharding tests), strict rank promotion,
and fast compiles (`runtime.steps.FAST_COMPILE`: the suite is many small compiles of few
steps each; training and benchmarks compile with XLA's defaults).

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here; the
environment is inherited by the CLI runs the tests start as subprocesses.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TITANS_JAX_FAST_COMPILE", "1")  # runtime.steps.FAST_COMPILE_ENV

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches_per_module():
  """Drop the compiled executables of earlier test files before each one: in one long
  `pytest` process they pile up, and the sharded-step compiles of test_sharding crashed
  inside XLA (SIGSEGV in backend_compile) after the rest of the suite, never alone."""
  jax.clear_caches()
  gc.collect()
  yield
