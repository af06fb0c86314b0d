"""Attention kernels against a naive T×T masked-softmax reference, and the O(T·W)
memory claim of the block-local sliding window (compiled memory analysis)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titans_jax.layers import attention as A
from titans_jax.layers.rope import apply_rope


def naive_window_attention(q, k, v, window, pk=None, pv=None):
  """Full T×T (+ persistent) masked softmax in float64 numpy."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, H, K = q.shape
  t = np.arange(T)
  mask = (t[None, :] <= t[:, None]) & (t[:, None] - t[None, :] < window)  # T×T
  if pk is not None:
    k = np.concatenate([np.asarray(pk, np.float64), k], axis=1)
    v = np.concatenate([np.asarray(pv, np.float64), v], axis=1)
    mask = np.concatenate([np.ones((T, pk.shape[1]), bool), mask], axis=1)
  s = np.einsum("bqhk,bchk->bhqc", q, k) / math.sqrt(K)
  s = np.where(mask[None, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqc,bchk->bqhk", p, v)


def _qkv(seed, B, T, H, K, P=0):
  ks = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(ks[i], (B, T, H, K)) for i in range(3))
  pk = pv = None
  if P:
    pk, pv = (jax.random.normal(ks[3 + i], (B, P, H, K)) for i in range(2))
  return q, k, v, pk, pv


@pytest.mark.parametrize(
  "T,W,P,impl",
  [
    (1, 4, 0, "xla"),
    (5, 8, 0, "xla"),
    (16, 4, 2, "xla"),
    (21, 4, 3, "xla"),
    (37, 8, 0, "xla"),
    (9, 16, 1, "xla"),
    (21, 4, 3, "dot_product"),
    (37, 8, 0, "dot_product"),
  ],
)
@pytest.mark.slow
def test_block_local_window_matches_naive(T, W, P, impl):
  q, k, v, pk, pv = _qkv(T * 100 + W, 2, T, 2, 8, P)
  out = jax.jit(lambda *a: A.sliding_window_attention(*a[:3], W, *a[3:], impl=impl))(
    q, k, v, pk, pv
  )
  assert out.shape == q.shape
  np.testing.assert_allclose(
    np.asarray(out), naive_window_attention(q, k, v, W, pk, pv), atol=1e-5, rtol=1e-5
  )


@pytest.mark.parametrize("T,W,P", [(13, 4, 0), (21, 8, 3)])
def test_window_attention_probs_reproduce_the_attention(T, W, P):
  """The diagnostics' dense weights (persistent keys first) are the naive float64
  softmax's: weighting the values with them gives the naive attention output, each row
  sums to 1 and nothing beyond the window or the causal edge gets weight."""
  q, k, v, pk, pv = _qkv(T + W, 2, T, 2, 8, P)
  p = np.asarray(A.window_attention_probs(q, k, W, pk), np.float64)  # B×H×T×(P+T)
  vv = np.asarray(v, np.float64) if pv is None else np.concatenate([pv, v], axis=1)
  out = np.einsum("bhqc,bchk->bqhk", p, vv)
  np.testing.assert_allclose(out, naive_window_attention(q, k, v, W, pk, pv), atol=1e-5)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
  lag = np.arange(T)[:, None] - np.arange(T)[None, :]
  assert np.all(p[..., P:][..., (lag < 0) | (lag >= W)] == 0)


def test_segment_attention_probs_reproduce_the_attention():
  """MAC's dense weights over [P ‖ h ‖ x] against a float64 loop over queries: each
  query's softmax over the keys its mask lets it see; weighting the values gives
  segment_attention's output."""
  L, P = 5, 2
  q, k, v, pk, pv = _qkv(3, 2, L, 2, 8, P)
  _, hk, hv, _, _ = _qkv(4, 2, L, 2, 8)
  keys, values = [pk, hk, k], [pv, hv, v]
  mask = A.segment_mask(L, L, P, with_memory=True)
  p = np.asarray(A.segment_attention_probs(q, keys, mask), np.float64)  # B×H×L×(P+2L)
  K = np.concatenate([np.asarray(x, np.float64) for x in keys], axis=1)
  V = np.concatenate([np.asarray(x, np.float64) for x in values], axis=1)
  m = np.asarray(mask)
  ref = np.zeros(p.shape)
  for i in range(L):
    s = np.einsum("bhk,bchk->bhc", np.asarray(q, np.float64)[:, i], K[:, m[i]]) / np.sqrt(8)
    e = np.exp(s - s.max(-1, keepdims=True))
    ref[:, :, i, m[i]] = e / e.sum(-1, keepdims=True)
  np.testing.assert_allclose(p, ref, atol=1e-6)
  out = np.asarray(A.segment_attention(q, keys, values, mask, impl="xla"), np.float64)
  np.testing.assert_allclose(np.einsum("bhqc,bchk->bqhk", p, V), out, atol=1e-5)


def test_decode_ring_buffer_matches_naive():
  """Writing k/v at pos % W and attending over valid slots equals row `pos` of the
  naive window attention, for positions before and after the ring first wraps."""
  W, T = 4, 11
  q, k, v, pk, pv = _qkv(0, 1, T, 2, 8, 2)
  ref = naive_window_attention(q, k, v, W, pk, pv)
  kr = jnp.zeros((1, W, 2, 8))
  vr = jnp.zeros((1, W, 2, 8))
  step = jax.jit(lambda q, kr, vr, t: A.decode_window_attention(q, kr, vr, t, W, pk, pv))
  for t in range(T):
    kr = kr.at[:, t % W].set(k[:, t])
    vr = vr.at[:, t % W].set(v[:, t])
    out = step(q[:, t : t + 1], kr, vr, jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(out[:, 0]), ref[:, t], atol=1e-5, rtol=1e-5)


def test_segment_mask_is_causal_within_segment():
  m = np.asarray(A.segment_mask(3, 3, 2, with_memory=True))
  expected = np.array(
    [
      # P P | h0 h1 h2 | x0 x1 x2
      [1, 1, 1, 0, 0, 1, 0, 0],
      [1, 1, 1, 1, 0, 1, 1, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(m, expected)
  row = np.asarray(A.segment_mask(1, 3, 0, with_memory=False, query_offset=1))
  np.testing.assert_array_equal(row, [[1, 1, 0]])


def test_rope_is_relative():
  """q·k after RoPE depends only on the position difference."""
  q, k, _, _, _ = _qkv(3, 1, 1, 1, 16)

  def dot(pq, pk):
    return float(jnp.sum(apply_rope(q, jnp.array([pq])) * apply_rope(k, jnp.array([pk]))))

  assert dot(7, 3) == pytest.approx(dot(104, 100), rel=1e-5, abs=1e-5)
  assert dot(7, 3) != pytest.approx(dot(7, 4), rel=1e-3)


class TestShapes(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_dtypes(self):
    for dtype in (jnp.float32, jnp.bfloat16):
      q, k, v, pk, pv = (None if x is None else x.astype(dtype) for x in _qkv(4, 2, 13, 2, 8, 2))
      f = self.variant(lambda q, k, v, pk, pv: A.sliding_window_attention(q, k, v, 4, pk, pv))
      out = f(q, k, v, pk, pv)
      chex.assert_shape(out, (2, 13, 2, 8))
      chex.assert_type(out, dtype)
      chex.assert_tree_all_finite(out)


def test_bad_window_and_impl_raise():
  q, k, v, _, _ = _qkv(5, 1, 4, 1, 8)
  with pytest.raises(ValueError, match="window"):
    A.sliding_window_attention(q, k, v, 0)
  with pytest.raises(ValueError, match="impl"):
    A.sliding_window_attention(q, k, v, 2, impl="flash3")


def _temp_bytes(T, W=256, H=4, K=32, P=4):
  sds = jax.ShapeDtypeStruct
  q = sds((1, T, H, K), jnp.float32)
  p = sds((1, P, H, K), jnp.float32)
  fn = jax.jit(lambda q, k, v, pk, pv: A.sliding_window_attention(q, k, v, W, pk, pv, impl="xla"))
  mem = fn.lower(q, q, q, p, p).compile().memory_analysis()
  return mem.temp_size_in_bytes + mem.output_size_in_bytes


def test_window_memory_is_linear_in_T():
  """Peak (temp + output) bytes per token at T = 16K stays within 1.5× of T = 4K; a
  T×T score matrix alone would be 4× per token (and 1 GiB in fp32 at 16K, H× that
  for H heads)."""
  per_tok_4k = _temp_bytes(4096) / 4096
  per_tok_16k = _temp_bytes(16384) / 16384
  assert per_tok_16k <= 1.5 * per_tok_4k, (per_tok_4k, per_tok_16k)
  assert per_tok_16k * 16384 < 16384**2 * 4  # below a single T×T fp32 matrix


@pytest.mark.slow
def test_splash_kernel_matches_naive_in_interpret_mode():
  """The TPU splash-attention path (persistent + local mask, 128-token padding), run
  by the Pallas interpreter on CPU."""
  pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
  q, k, v, pk, pv = _qkv(6, 1, 150, 2, 128, 3)
  out = A._splash_window_attention(q, k, v, 32, pk, pv, interpret=True)
  np.testing.assert_allclose(
    np.asarray(out), naive_window_attention(q, k, v, 32, pk, pv), atol=1e-5, rtol=1e-5
  )
  # Off TPU (and not interpreting) the kernel declines and "splash" falls back to XLA.
  if jax.default_backend() != "tpu":
    assert A._splash_window_attention(q, k, v, 32, pk, pv) is None
    out_fallback = A.sliding_window_attention(q, k, v, 32, pk, pv, impl="splash")
    np.testing.assert_allclose(np.asarray(out_fallback), np.asarray(out), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["swa", "mac"])
def test_model_forward_memory_is_linear_in_T(variant):
  """Whole tiny model (W = S = 256): compiled temp + output bytes per token at T = 16K
  within 1.5× of T = 4K (abstract params; compile only, nothing runs)."""
  from flax import nnx

  from titans_jax.models import Titans, TitansConfig

  cfg = TitansConfig.preset("tiny", variant=variant, window=256, segment_len=256, memory_chunk=16)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Titans(cfg, rngs=nnx.Rngs(0))))
  fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))

  def per_token(T):
    mem = fwd.lower(state, jax.ShapeDtypeStruct((1, T), jnp.int32)).compile().memory_analysis()
    return (mem.temp_size_in_bytes + mem.output_size_in_bytes) / T

  assert per_token(16384) <= 1.5 * per_token(4096)
