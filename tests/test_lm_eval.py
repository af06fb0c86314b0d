"""The lm-evaluation-harness adapter on the tiny token model trained in _text_corpus:
log-likelihoods equal a direct computation from the model's logits, generate_until equals
generate()'s greedy output, rolling log-likelihood over a document longer than the
training length equals the model's own held-out evaluation, and a custom multiple-choice
task on a local JSON file runs through lm_eval's own task machinery (no download)."""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _text_corpus as tc  # noqa: E402
from flax import nnx  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from titans_jax.evaluation import lm_eval_adapter, perplexity  # noqa: E402
from titans_jax.models.generate import generate  # noqa: E402
from titans_jax.training import train_state as ts  # noqa: E402

pytestmark = pytest.mark.slow  # shares the trained run with test_prepare (one training)


@pytest.fixture(scope="module")
def lm():
  r = tc.trained_run()
  return lm_eval_adapter.TitansLM.from_workdir(r["workdir"], batch_size=4)


def _inst(kind, args, i=0):
  return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def _direct_logprob(lm, ctx_ids, cont_ids):
  """Σ log p(cont | ctx) and all-greedy, from the model's logits on the exact sequence."""
  model = nnx.merge(lm.graphdef, lm.params, lm.rest)
  toks = np.asarray(ctx_ids + cont_ids, np.int32)
  logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(toks[None, :-1])).astype(
      jnp.float32), axis=-1), np.float64)[0]
  pos = np.arange(len(ctx_ids) - 1, len(toks) - 1)
  tgt = toks[pos + 1]
  return float(logp[pos, tgt].sum()), bool(np.all(logp[pos].argmax(-1) == tgt))


def test_loglikelihood_equals_direct_computation(lm):
  pairs = [("the cat sat on", " the mat"), ("the dog ran to the big", " red house"),
           ("", "the river"), ("old men fish in the ", "morning"),
           ("a small green tree near the river where old men", " fish")]
  got = lm.loglikelihood([_inst("loglikelihood", p, i) for i, p in enumerate(pairs)])
  for (ctx, cont), (ll, greedy) in zip(pairs, got):
    c_ids, k_ids = lm._encode_pair(ctx, cont)
    want_ll, want_greedy = _direct_logprob(lm, c_ids, k_ids)
    assert ll == pytest.approx(want_ll, rel=1e-5, abs=1e-5), (ctx, cont)
    assert greedy == want_greedy
  # the continuation's ids are the tail of the whole string's encoding
  c_ids, k_ids = lm._encode_pair("the cat sat on", " the mat")
  assert c_ids + k_ids == lm.tok.encode("the cat sat on the mat")


def test_generate_until_equals_greedy_generate(lm):
  model = nnx.merge(lm.graphdef, lm.params, lm.rest)
  prompts = ["the cat sat on the", "the dog ran", "the big red house with a small green tree"]
  reqs = [_inst("generate_until", (p, {"until": [], "max_gen_toks": 5}), i)
          for i, p in enumerate(prompts)]
  want = []
  for p in prompts:
    ids = np.asarray(lm.tok.encode(p), np.int32)
    out = np.asarray(generate(model, ids[None], 5, temperature=0.0))[0, ids.size:]
    want.append(lm.tok.decode(out.tolist()))
  assert lm.generate_until(reqs) == want
  # the bucketed path: prefill a multiple of 4 tokens, decode the prompt's tail
  lm.prefill_bucket = 4
  try:
    assert lm.generate_until(reqs) == want
  finally:
    lm.prefill_bucket = 64
  # stop strings cut the text where they first appear
  stop = want[0][1:3] if len(want[0]) >= 3 else None
  if stop and stop.strip():
    got = lm.generate_until([_inst("generate_until", (prompts[0], {"until": [stop],
                                                                   "max_gen_toks": 5}))])
    assert got == [want[0].split(stop)[0]]


def test_rolling_loglikelihood_equals_model_perplexity_eval(lm):
  text = " ".join(tc.WORDS * 2)
  ids = lm.tok.encode(text)
  assert len(ids) > 2 * tc.SEQ_LEN  # longer than the training length
  (got,) = lm.loglikelihood_rolling([_inst("loglikelihood_rolling", (text,))])
  batch = {"inputs": np.asarray([[lm.prefix_token_id] + ids[:-1]], np.int32),
           "targets": np.asarray([ids], np.int32),
           "weights": np.ones((1, len(ids)), np.float32)}
  m = perplexity.evaluate_batches(ts.make_eval_step(lm.graphdef), lm.params, lm.rest, [batch],
                                  byte_level=False)
  assert m["tokens"] == len(ids)
  assert got == pytest.approx(-m["loss"] * m["tokens"], rel=1e-5)


def test_custom_local_task_through_lm_eval(lm, tmp_path):
  docs = [{"question": "the cat sat on the", "choices": ["mat", "river"], "label": 0},
          {"question": "the dog ran to the", "choices": ["house", "tree"], "label": 1},
          {"question": "old men fish in the", "choices": ["morning", "cat"], "label": 0}]
  (tmp_path / "data.json").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (tmp_path / "tiny_choice.yaml").write_text(
      "task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
      f"    test: {tmp_path / 'data.json'}\ntest_split: test\noutput_type: multiple_choice\n"
      'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
      "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
  res = lm_eval_adapter.run_tasks(lm, ["tiny_choice"], include_path=str(tmp_path),
                                  include_defaults=False, outdir=tmp_path / "out",
                                  log=lambda s: None)
  # acc from the adapter's own log-likelihoods, computed directly
  correct = 0
  for d in docs:
    lls = [_direct_logprob(lm, *lm._encode_pair(d["question"], " " + c))[0]
           for c in d["choices"]]
    correct += int(np.argmax(lls) == d["label"])
  assert res["results"]["tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))
  assert json.loads((tmp_path / "out" / "lm_eval.json").read_text())["results"]
