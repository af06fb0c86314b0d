"""One block's mixer against its own pieces: MAL with and without its residual memory
path (`TitansConfig.mal_residual`), and its one-token decode against the full forward."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from titans_jax import memory
from titans_jax.models import TitansConfig
from titans_jax.models.blocks import Block

T = 12  # window 4, chunk 4: the decode steps cross chunk and window boundaries
PREFIX = 5


def _block(mal_residual: bool, seed=0) -> Block:
  mcfg = memory.MemoryConfig.paper(16, heads=1, chunk_size=4, pre_norm=False, depth=1)
  cfg = TitansConfig.preset(
    "tiny",
    variant="mal",
    dim=16,
    heads=2,
    ffn_hidden=16,
    num_persistent=2,
    window=4,
    memory=mcfg,
    mal_residual=mal_residual,
  )
  return Block(cfg, "mal", rngs=nnx.Rngs(seed))


def _x(seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, T, 16)), jnp.float32)


def test_mal_residual_adds_the_memory_output_to_the_spec_mixer():
  """o_residual − o_spec = M([P ‖ h]) at h's positions: the same parameters, the one
  difference the flag makes."""
  with_res, spec = _block(True), _block(False)
  nnx.update(spec, nnx.state(with_res))
  h = with_res.mix_norm(_x())
  o_res, _ = with_res._mal(h, want_cache=False)
  o_spec, _ = spec._mal(h, want_cache=False)
  P = with_res._persistent_tokens(h.shape[0])
  m, _ = with_res.memory(jnp.concatenate([P, h], axis=1))
  np.testing.assert_allclose(o_res - o_spec, m[:, 2:], atol=1e-5)
  assert float(jnp.abs(m[:, 2:]).mean()) > 1e-2  # the difference is not trivially zero


@pytest.mark.slow  # eager decode steps: ~30 s
@pytest.mark.parametrize("mal_residual", [True, False])
def test_mal_decode_continues_the_full_forward(mal_residual):
  block = _block(mal_residual)
  x = _x()
  full, _ = block(x)
  _, cache = block(x[:, :PREFIX], want_cache=True)
  for t in range(PREFIX, T):
    y, cache = block.decode(x[:, t : t + 1], cache, jnp.asarray(t, jnp.int32))
    np.testing.assert_allclose(y[:, 0], full[:, t], atol=2e-5, err_msg=f"position {t}")


def test_mal_residual_is_a_config_field_with_the_residual_default():
  assert TitansConfig().mal_residual is True
  cfg = dataclasses.replace(TitansConfig(variant="mal"), mal_residual=False)
  assert cfg.mal_residual is False
  with pytest.raises((TypeError, ValueError), match="mal_residual"):
    TitansConfig(variant="mal", mal_residual="yes")
