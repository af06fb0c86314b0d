"""One block's mixer against its own pieces: MAL and MAC with and without their residual
memory paths (`TitansConfig.mal_residual`, `mac_retrieval_residual`), and their one-token
decode against the full forward in both settings."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from titans_jax import memory
from titans_jax.models import TitansConfig
from titans_jax.models.blocks import Block

T = 12  # window / segment 4, chunk 4: the decode steps cross chunk, window and segment edges
PREFIX = 5
FLAG = {"mal": "mal_residual", "mac": "mac_retrieval_residual"}


def _block(kind: str, residual: bool, seed=0) -> Block:
  mcfg = memory.MemoryConfig.paper(16, heads=1, chunk_size=4, pre_norm=False, depth=1)
  cfg = TitansConfig.preset(
    "tiny",
    variant=kind,
    dim=16,
    heads=2,
    ffn_hidden=16,
    num_persistent=2,
    window=4,
    segment_len=4,
    memory=mcfg,
    **{FLAG[kind]: residual},
  )
  return Block(cfg, kind, rngs=nnx.Rngs(seed))


def _x(seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, T, 16)), jnp.float32)


def _pair(kind):
  """The block with its residual path and the same parameters without it."""
  with_res, without = _block(kind, True), _block(kind, False)
  nnx.update(without, nnx.state(with_res))
  return with_res, without


def test_mal_residual_adds_the_memory_output_to_the_spec_mixer():
  """o_residual − o_spec = M([P ‖ h]) at h's positions: the same parameters, the one
  difference the flag makes."""
  with_res, spec = _pair("mal")
  h = with_res.mix_norm(_x())
  o_res, _ = with_res._mal(h, want_cache=False)
  o_spec, _ = spec._mal(h, want_cache=False)
  P = with_res._persistent_tokens(h.shape[0])
  m, _ = with_res.memory(jnp.concatenate([P, h], axis=1))
  np.testing.assert_allclose(o_res - o_spec, m[:, 2:], atol=1e-5)
  assert float(jnp.abs(m[:, 2:]).mean()) > 1e-2  # the difference is not trivially zero


def test_mac_retrieval_residual_adds_each_segments_retrieval():
  """o_residual − o_paper = h_i = M*_{i−1}(q(S_i)) per segment: the retrieval with the
  weights at the segment's start (the initial weights for segment 0, the weights after
  segment 0's update for segment 1), the retrieval conv stream carried across."""
  with_res, paper = _pair("mac")
  h = with_res.mix_norm(_x())
  o_res, _ = with_res._mac(h, want_cache=False)
  o_paper, _ = paper._mac(h, want_cache=False)
  S = with_res.cfg.segment_len
  pk, pv = with_res._persistent_kv(2)
  mem0 = with_res.memory.init_state(2)
  carry = (mem0, mem0["conv"])
  for i in range(T // S):
    seg = slice(i * S, (i + 1) * S)
    hret, _ = with_res._retrieve(h[:, seg], carry[0]["weights"], carry[1])
    np.testing.assert_allclose(o_res[:, seg] - o_paper[:, seg], hret, atol=1e-5, err_msg=f"{i}")
    assert float(jnp.abs(hret).mean()) > 1e-3
    carry = with_res._mac_segment(carry, h[:, seg], pk, pv, True)[0]  # the memory after S_i


@pytest.mark.slow  # eager decode steps: ~30 s
@pytest.mark.parametrize("kind", ["mal", "mac"])
@pytest.mark.parametrize("residual", [True, False])
def test_decode_continues_the_full_forward(kind, residual):
  block = _block(kind, residual)
  x = _x()
  full, _ = block(x)
  _, cache = block(x[:, :PREFIX], want_cache=True)
  for t in range(PREFIX, T):
    y, cache = block.decode(x[:, t : t + 1], cache, jnp.asarray(t, jnp.int32))
    np.testing.assert_allclose(y[:, 0], full[:, t], atol=2e-5, err_msg=f"{kind} position {t}")


def test_residual_flags_are_config_fields_with_the_residual_default():
  for flag in FLAG.values():
    assert getattr(TitansConfig(), flag) is True
    assert getattr(dataclasses.replace(TitansConfig(), **{flag: False}), flag) is False
    with pytest.raises((TypeError, ValueError), match=flag):
      TitansConfig(**{flag: "yes"})
