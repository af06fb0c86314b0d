"""Titans model family: causality, incremental decode == full forward, greedy generation,
overfitting a fixed batch, for every variant.

To keep compile time low, each variant compiles three functions once (module-scoped):
the training loss with its gradient (which also returns the full-forward logits, reused
by the causality and decode checks), the prefill and the one-token decode step. They
are compiled ahead of the tests, several variants at a time, in a thread pool.

Tiny shapes: window W = 8, MAC segment S = 8, memory chunk c = 4, T = 32, so positions
3, 7, 8, 15, 16, 23 sit on and beside chunk, window and segment boundaries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from titans_jax.models import Titans, TitansConfig, decode_step, generate, prefill
from titans_jax.models.config import VARIANTS
from titans_jax.runtime import steps

from helpers import run_concurrently

# Compiles every variant's training function up front (~80 s on 2 cores): not in the
# fast subset `-m "not slow"`.
pytestmark = pytest.mark.slow

T = 32
PROMPT = 5
BOUNDARY_TS = (3, 4, 7, 8, 15, 16, 23)


def _config(variant):
  # MAC: memory on the second layer only, so that both MAC kinds (segment attention
  # with and without memory) and a two-run layer stack are exercised.
  extra = {"memory_layers": (1,)} if variant == "mac" else {}
  return TitansConfig.preset(
    "tiny", variant=variant, window=8, segment_len=8, memory_chunk=4, **extra
  )


class Harness:
  def __init__(self, variant):
    self.cfg = _config(variant)
    self.model = Titans(self.cfg, rngs=nnx.Rngs(0))
    self.graphdef, self.params = nnx.split(self.model)
    graphdef = self.graphdef

    def loss_and_logits(params, tokens_BT1):
      logits = nnx.merge(graphdef, params)(tokens_BT1[:, :-1]).astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BT1[:, 1:])
      return loss.mean(), logits

    # On CPU, cheaper XLA optimisation roughly halves this (largest) compile; the
    # numerics are unchanged up to float reassociation.
    opts = steps.compiler_options()
    self.loss_grad = jax.jit(
      jax.value_and_grad(loss_and_logits, has_aux=True), compiler_options=opts
    )

  def logits(self, tokens_BT):
    """Full-forward logits of T tokens (via the compiled training function)."""
    tokens = jnp.concatenate([tokens_BT, tokens_BT[:, :1]], axis=1)
    (_, logits), _ = self.loss_grad(self.params, tokens)
    return logits


_HARNESS = {}


def harness(variant) -> Harness:
  if variant not in _HARNESS:
    _HARNESS[variant] = Harness(variant)
  return _HARNESS[variant]


@pytest.fixture(scope="module", autouse=True)
def _compile_concurrently(_fresh_jax_caches_per_module):
  """Compile every variant's functions ahead of the tests, one variant per worker
  thread, several variants at a time (XLA's compiler releases the GIL): the training
  function (AOT, for the one token shape every loss_grad call below uses), and
  prefill of 5 and 16 tokens and the decode step, by calling them once on the
  variant's own model (no model is touched by two threads). The tests' calls then
  reuse these executables; every check runs on the main thread, afterwards. It asks for
  conftest's cache-clearing fixture so that it surely runs after it."""
  tokens = _tokens(0, length=T + 1)

  def compile_variant(variant):
    h = harness(variant)
    h.loss_grad.lower(h.params, tokens).compile()
    _, cache = prefill(h.model, tokens[:, :PROMPT])
    prefill(h.model, tokens[:, :16])
    jax.block_until_ready(decode_step(h.model, tokens[:, PROMPT], cache))

  for v in VARIANTS:  # build the models first, on this thread
    harness(v)
  run_concurrently(lambda v=v: compile_variant(v) for v in VARIANTS)


def _tokens(seed, batch=2, length=T):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, 256, jnp.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
  h = harness(variant)
  tokens = _tokens(1)
  base = np.asarray(h.logits(tokens))
  for t in BOUNDARY_TS:
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 1 + t) % 256)
    out = np.asarray(h.logits(changed))
    np.testing.assert_allclose(
      out[:, : t + 1],
      base[:, : t + 1],
      atol=1e-6,
      rtol=0,
      err_msg=f"{variant}: logits ≤ {t} changed",
    )
    # The change must be visible after t (else this test could not fail).
    assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_matches_full_forward(variant):
  h = harness(variant)
  tokens = _tokens(2)
  full = np.asarray(h.logits(tokens))
  logits, cache = prefill(h.model, tokens[:, :PROMPT])
  np.testing.assert_allclose(np.asarray(logits), full[:, :PROMPT], atol=1e-4, rtol=1e-4)
  for t in range(PROMPT, T):
    step_logits, cache = decode_step(h.model, tokens[:, t], cache)
    np.testing.assert_allclose(
      np.asarray(step_logits),
      full[:, t],
      atol=1e-4,
      rtol=1e-4,
      err_msg=f"{variant}: decode at position {t}",
    )
  assert int(cache["pos"]) == T
  # A prompt that ends exactly on a segment / window boundary (T ≥ W: the ring buffer
  # is built from a wrapped window; MAC: no partial segment).
  logits, cache = prefill(h.model, tokens[:, :16])
  np.testing.assert_allclose(np.asarray(logits), full[:, :16], atol=1e-4, rtol=1e-4)
  for t in range(16, 21):
    step_logits, cache = decode_step(h.model, tokens[:, t], cache)
    np.testing.assert_allclose(
      np.asarray(step_logits),
      full[:, t],
      atol=1e-4,
      rtol=1e-4,
      err_msg=f"{variant}: decode at position {t} after prefill 16",
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_is_argmax_of_full_forward(variant):
  h = harness(variant)
  prompt = _tokens(3)[:, :PROMPT]
  seq = generate(h.model, prompt, max_new_tokens=T - PROMPT, temperature=0.0)
  assert seq.shape == (2, T) and seq.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(seq[:, :PROMPT]), np.asarray(prompt))
  full = np.asarray(h.logits(seq))
  np.testing.assert_array_equal(np.asarray(seq[:, PROMPT:]), full[:, PROMPT - 1 : T - 1].argmax(-1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_overfits_a_fixed_batch(variant):
  h = harness(variant)
  tokens = _tokens(4, length=T + 1)
  tx = optax.adam(3e-3)
  params = h.params
  opt_state = tx.init(params)

  @jax.jit
  def update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  (first, _), _ = h.loss_grad(params, tokens)
  loss = first
  for _ in range(30):
    (loss, _), grads = h.loss_grad(params, tokens)
    params, opt_state = update(grads, opt_state, params)
    if loss < first / 2:
      break
  assert np.isfinite(float(first)) and float(loss) < float(first) / 2, (variant, first, loss)


def _allowed_next_tokens(logits_BV, top_k=None, top_p=None, slack=1e-4):
  """Boolean B×V mask of the tokens a top-k / top-p sampler may pick (numpy, float64;
  `slack` admits a token at the nucleus edge that the decode path's rounding kept)."""
  logits = np.asarray(logits_BV, np.float64)
  allowed = np.ones(logits.shape, bool)
  if top_k is not None:
    kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
    allowed &= logits >= kth
  if top_p is not None:
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, -1)
    before = np.cumsum(sorted_p, -1) - sorted_p  # mass of the more likely tokens
    keep_sorted = before < top_p + slack
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    allowed &= keep
  return allowed


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
  h = harness("swa")
  prompt = _tokens(5)[:, :PROMPT]
  new = T - PROMPT  # the full length, so h.logits scores every step
  a = generate(h.model, prompt, new, temperature=1.0, top_k=5, seed=7)
  b = generate(h.model, prompt, new, temperature=1.0, top_k=5, seed=7)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  greedy = np.asarray(generate(h.model, prompt, new, temperature=0.0))
  # Every sample lies in the filtered set of the logits that preceded it (the full
  # forward over the sampled sequence), and sampling is not greedy decoding.
  for kw, seq in (
    ({"top_k": 5}, a),
    ({"top_p": 0.5}, generate(h.model, prompt, new, temperature=1.0, top_p=0.5, seed=8)),
  ):
    seq = np.asarray(seq)
    assert seq.shape == (2, T)
    logits = np.asarray(h.logits(jnp.asarray(seq)))
    for t in range(PROMPT, T):
      allowed = _allowed_next_tokens(logits[:, t - 1], **kw)
      assert allowed.sum(-1).max() < 0.9 * h.cfg.vocab_size, kw  # the filter bites
      assert allowed[np.arange(2), seq[:, t]].all(), (kw, t)
    assert not np.array_equal(seq, greedy), kw
  # top_k = 1 is greedy whatever the temperature.
  g1 = generate(h.model, prompt, 6, temperature=2.0, top_k=1, seed=9)
  g0 = generate(h.model, prompt, 6, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(g1), np.asarray(g0))
  with pytest.raises(ValueError, match="top_p"):
    generate(h.model, prompt, 2, top_p=1.5)
