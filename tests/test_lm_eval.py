"""Train on prepared text, sample decoded text, and the lm-evaluation-harness adapter, all
on one tiny token model (a BPE tokenizer trained here, the corpus prepared with it, the
tiny config trained a few steps: tests/_text_corpus.py):

  * eval.py's evaluation decodes its prompt and sample through the metadata's tokenizer
    and reports bits per byte;
  * log-likelihoods equal a direct computation from the model's logits (1e-5);
  * generate_until equals generate()'s greedy output;
  * rolling log-likelihood over a document longer than the training length equals the
    model's own held-out evaluation of it;
  * a custom multiple-choice task on a local JSON file runs through lm_eval's own task
    machinery (no download).

Shapes are shared between tests (one batch size, one padded length for the direct
computation, prompts of one token length) to keep the compilations few.
"""

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # eval.py
from flax import nnx  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from titans_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from titans_jax.evaluation import lm_eval_adapter, run, sampling  # noqa: E402
from titans_jax.models.generate import generate  # noqa: E402
from titans_jax.runtime import perplexity  # noqa: E402
from titans_jax.runtime import steps as ts  # noqa: E402

import _text_corpus as tc  # noqa: E402

pytestmark = pytest.mark.slow  # one training run (compiles) shared by the module
DIRECT_LEN = 24  # the direct computation's padded length (the adapter pads to 16 or 32)


@pytest.fixture(scope="module")
def trained():
  return tc.trained_run()


@pytest.fixture(scope="module")
def lm(trained):
  return lm_eval_adapter.TitansLM.from_workdir(trained["workdir"], batch_size=4)


def _inst(kind, args, i=0):
  return Instance(request_type=kind, doc={}, arguments=args, idx=i)


@functools.lru_cache(maxsize=1)
def _forward(graphdef):
  return jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(x).astype(jnp.float32))


def _direct_logprob(lm, ctx_ids, cont_ids):
  """Σ log p(cont | ctx) and all-greedy, from the model's logits on the sequence alone
  (right-padded to DIRECT_LEN: the model is causal), in float64 from there on."""
  toks = np.asarray(ctx_ids + cont_ids, np.int32)
  assert toks.size - 1 <= DIRECT_LEN
  x = np.zeros((1, DIRECT_LEN), np.int32)
  x[0, : toks.size - 1] = toks[:-1]
  logits = np.asarray(_forward(lm.graphdef)(lm.params, lm.rest, x), np.float64)[0]
  logp = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  pos = np.arange(len(ctx_ids) - 1, len(toks) - 1)
  tgt = toks[pos + 1]
  return float(logp[pos, tgt].sum()), bool(np.all(logp[pos].argmax(-1) == tgt))


def test_train_on_prepared_tokens_and_sample_decoded_text(trained):
  r = trained
  res = r["result"]
  assert res.status == "done" and res.final_step == tc.STEPS
  assert all(np.isfinite(v) for v in res.losses.values())
  lines = []
  out = run.evaluate(r["workdir"], log=lines.append)  # tokenizer found through meta.json
  tok = tokenizer_lib.load(r["tokenizer"])
  _, _, graphdef, params, rest = run.load_for_eval(r["workdir"])
  prompt = np.asarray(tok.encode(tc.PROMPT), np.int32)
  ids = np.asarray(generate(nnx.merge(graphdef, params, rest), prompt[None], 5, temperature=0.0))[
    0, prompt.size :
  ]
  assert isinstance(out["sample"]["continuation"], str)
  assert out["sample"]["continuation"] == tok.decode(ids)
  assert sampling.prompt_tokens(tc.PROMPT, False, tok).tolist() == prompt.tolist()
  h = out["heldout"]
  assert h["bits_per_byte"] == pytest.approx(h["bits_per_token"] / r["meta"]["bytes_per_token"])
  step_dir = r["workdir"] / "eval" / f"step_{tc.STEPS}"
  assert (step_dir / "samples.txt").read_text().startswith(tc.PROMPT + tok.decode(ids))


def test_loglikelihood_equals_direct_computation(lm):
  pairs = [
    ("the cat sat on", " the mat"),
    ("the dog ran to the big", " red house"),
    ("", "the river"),
    ("old men fish in the ", "morning"),
    ("a small green tree near the river where old men", " fish"),
  ]
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
  n = len(lm.tok.encode(tc.PROMPT))
  # prompts of the eval prompt's token length: generate() reuses its compiled prefill
  others = [" ".join(tc.WORDS[i : i + k]) for k in range(2, 8) for i in range(len(tc.WORDS) - k)]
  prompts = [tc.PROMPT] + [p for p in others if len(lm.tok.encode(p)) == n][:1]
  assert len(prompts) == 2
  want = []
  for p in prompts:
    ids = np.asarray(lm.tok.encode(p), np.int32)
    out = np.asarray(generate(model, ids[None], 5, temperature=0.0))[0, ids.size :]
    want.append(lm.tok.decode(out.tolist()))
  # batch 1 like generate(); prefill_bucket 4 < n: a prefill of 4 tokens, then the
  # prompt's tail through the cached decode step
  gen = lm_eval_adapter.TitansLM(
    lm.graphdef, lm.params, lm.rest, lm.tok, batch_size=1, prefill_bucket=4
  )
  assert n > 4
  reqs = [
    _inst("generate_until", (p, {"until": [], "max_gen_toks": 5}), i) for i, p in enumerate(prompts)
  ]
  assert gen.generate_until(reqs) == want
  # stop strings cut the text where they first appear
  stop = want[0].strip()[:2]
  got = gen.generate_until(
    [_inst("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 5}))]
  )
  assert got == [want[0].split(stop)[0]]


def test_ruler_file_through_the_model_and_eval_py(lm, trained, tmp_path):
  # A RULER record whose prompt is the eval prompt (compiled shapes are reused); its
  # expected output is the model's own greedy first line, so the cell must score 1.
  model = nnx.merge(lm.graphdef, lm.params, lm.rest)
  ids = np.asarray(lm.tok.encode(tc.PROMPT), np.int32)
  text = lm.tok.decode(np.asarray(generate(model, ids[None], 16, temperature=0.0))[0, ids.size :])
  first = text.split("\n")[0].strip()
  assert first
  d = tmp_path / "ruler" / "64" / "data" / "niah_single_1"
  d.mkdir(parents=True)
  rec = {
    "index": 0,
    "input": tc.PROMPT,
    "outputs": [first, "not-in-the-answer"],
    "length": 60,
    "answer_prefix": "",
    "token_position_answer": 30,
  }
  (d / "validation.jsonl").write_text(json.dumps(rec) + "\n")
  from titans_jax.evaluation import longctx

  ex = longctx.read_ruler([tmp_path / "ruler"])
  gen = lm_eval_adapter.TitansLM(lm.graphdef, lm.params, lm.rest, lm.tok, batch_size=1)
  g = longctx.evaluate(ex, longctx.titans_generator(gen), suite="RULER", task="t", row_axis="depth")
  assert g["lengths"] == [64] and g["depths"] == [0.5] and g["accuracy"] == [[0.5]]
  import eval as eval_cli

  assert (
    eval_cli.main(
      [
        "--workdir",
        str(trained["workdir"]),
        "--skip",
        "ppl,niah,samples",
        "--ruler",
        str(tmp_path / "ruler"),
        "--lm_eval_batch_size",
        "1",
      ]
    )
    == 0
  )
  out = json.loads(
    (trained["workdir"] / "eval" / f"step_{tc.STEPS}" / "ruler_ruler.json").read_text()
  )
  assert out["accuracy"] == [[0.5]]


def test_rolling_loglikelihood_equals_model_perplexity_eval(lm):
  text = " ".join(tc.WORDS * 2)
  ids = lm.tok.encode(text)
  assert len(ids) > 2 * tc.SEQ_LEN  # longer than the training length
  (got,) = lm.loglikelihood_rolling([_inst("loglikelihood_rolling", (text,))])
  batch = {
    "inputs": np.asarray([[lm.prefix_token_id] + ids[:-1]], np.int32),
    "targets": np.asarray([ids], np.int32),
    "weights": np.ones((1, len(ids)), np.float32),
  }
  m = perplexity.evaluate_batches(
    ts.make_eval_step(lm.graphdef), lm.params, lm.rest, [batch], byte_level=False
  )
  assert m["tokens"] == len(ids)
  assert got == pytest.approx(-m["loss"] * m["tokens"], rel=1e-5)


def test_custom_local_task_through_lm_eval(lm, trained, tmp_path):
  docs = [
    {"question": "the cat sat on the", "choices": ["mat", "river"], "label": 0},
    {"question": "the dog ran to the", "choices": ["house", "tree"], "label": 1},
    {"question": "old men fish in the", "choices": ["morning", "cat"], "label": 0},
  ]
  (tmp_path / "data.json").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (tmp_path / "tiny_choice.yaml").write_text(
    "task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
    f"    test: {tmp_path / 'data.json'}\ntest_split: test\noutput_type: multiple_choice\n"
    'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
    "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
  )
  res = lm_eval_adapter.run_tasks(
    lm, ["tiny_choice"], include_path=str(tmp_path), outdir=tmp_path / "out", log=lambda s: None
  )
  # acc from the adapter's own log-likelihoods, computed directly
  correct = 0
  for d in docs:
    lls = [_direct_logprob(lm, *lm._encode_pair(d["question"], " " + c))[0] for c in d["choices"]]
    correct += int(np.argmax(lls) == d["label"])
  assert res["results"]["tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))
  assert json.loads((tmp_path / "out" / "lm_eval.json").read_text())["results"]
  # the same through eval.py (the adapter built from the checkpoint and its meta.json)
  import eval as eval_cli

  assert (
    eval_cli.main(
      [
        "--workdir",
        str(trained["workdir"]),
        "--skip",
        "ppl,niah,samples",
        "--lm_eval_tasks",
        "tiny_choice",
        "--lm_eval_include",
        str(tmp_path),
        "--lm_eval_batch_size",
        "4",
      ]
    )
    == 0
  )
  written = json.loads(
    (trained["workdir"] / "eval" / f"step_{tc.STEPS}" / "lm_eval.json").read_text()
  )
  assert written["results"]["tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))
  # and by name, as lm_eval's own CLI builds models: registered "titans_jax" + model_args
  import lm_eval
  from lm_eval.tasks import TaskManager

  by_name = lm_eval.simple_evaluate(
    model="titans_jax",
    model_args=f"workdir={trained['workdir']},batch_size=4",
    tasks=["tiny_choice"],
    bootstrap_iters=0,
    log_samples=False,
    task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
  )
  assert by_name["results"]["tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))
