"""A titans_jax checkpoint as an lm-evaluation-harness model (`pip install -e '.[lm-eval]'`).

    python eval.py --workdir runs/340m --lm_eval_tasks piqa,hellaswag
    # from Python: importing this module registers the model name "titans_jax"
    lm_eval.simple_evaluate(model="titans_jax", model_args="workdir=runs/340m,batch_size=16",
                            tasks=["piqa"])

Scoring (`loglikelihood`, `loglikelihood_rolling`) runs whole sequences through one jitted
forward: the model's memory is carried over the entire context, however much longer than
the training length (there is no fixed context window to roll). Requests are sorted by
length, right-padded to a power-of-two bucket (causal, so padding never changes a scored
position) and batched, so a task compiles a handful of shapes. `max_length` (tokens)
bounds the context for memory: longer contexts keep their last `max_length` tokens, and
longer rolling documents fall back to lm_eval's disjoint rolling windows.

Generation (`generate_until`) uses the cached prefill and one-token decode step of
`titans_jax.models.generate`; prompts of one length share a batch. A prompt is prefilled
up to a multiple of `prefill_bucket` tokens and its remaining tokens are fed through the
decode step, so the prefill compiles per bucket rather than per prompt length.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from titans_jax.data import tokenizer as tokenizer_lib
from titans_jax.data import tokens as token_files
from titans_jax.data.text import DataError
from titans_jax.evaluation import run
from titans_jax.models.generate import decode_step, prefill
from titans_jax.runtime import steps


def _bucket(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@functools.lru_cache(maxsize=8)
def make_token_logprobs(graphdef):
  """Jitted `(params, rest, inputs B×T, targets B×T) -> (log p(target) B×T, greedy B×T)`,
  computed in float32 from the model's logits."""

  def fn(params, rest, inputs_BT, targets_BT):
    logits = nnx.merge(graphdef, params, rest)(inputs_BT).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets_BT

  return jax.jit(fn, compiler_options=steps.compiler_options())


def tokenizer_for(cfg, tokenizer: Optional[str] = None) -> tokenizer_lib.Tokenizer:
  """`tokenizer` if given; else the one in the data's prepare metadata; byte-level data:
  bytes. Raises DataError when a token model has none."""
  if tokenizer:
    return tokenizer_lib.load(tokenizer)
  if cfg.data.kind in ("text", "niah"):
    return tokenizer_lib.ByteTokenizer()
  meta = token_files.read_metadata(cfg.data.paths) if cfg.data.kind == "tokens" else None
  if meta is None:
    raise DataError(
      f"data.kind={cfg.data.kind!r} has no tokenizer in its metadata; pass "
      "--tokenizer FILE (a tokenizers .json or SentencePiece .model)"
    )
  return tokenizer_lib.from_metadata(meta)


@register_model("titans_jax")
class TitansLM(LM):
  """See the module docstring. `prefix_token_id` conditions empty contexts and rolling
  documents (default: the tokenizer's end-of-text id, else 0)."""

  def __init__(
    self,
    graphdef,
    params,
    rest,
    tokenizer: tokenizer_lib.Tokenizer,
    *,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    max_gen_toks: int = 256,
    prefix_token_id: Optional[int] = None,
    prefill_bucket: int = 64,
  ):
    super().__init__()
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.graphdef, self.params, self.rest = graphdef, params, rest
    self.tok = tokenizer
    self.batch_size = int(batch_size)
    self.max_length = None if not max_length else int(max_length)
    self.max_gen_toks = int(max_gen_toks)
    self.prefill_bucket = int(prefill_bucket)
    eos = tokenizer.eos_id
    self.prefix_token_id = int(
      prefix_token_id if prefix_token_id is not None else (eos if eos is not None else 0)
    )
    self._logprobs = make_token_logprobs(graphdef)
    self._model = None
    self.step: Optional[int] = None  # the checkpoint step, set by from_workdir

  @classmethod
  def from_workdir(
    cls, workdir, step: Optional[int] = None, tokenizer: Optional[str] = None, cfg=None, **kwargs
  ) -> TitansLM:
    cfg, step, graphdef, params, rest = run.load_for_eval(workdir, cfg, step)
    lm = cls(graphdef, params, rest, tokenizer_for(cfg, tokenizer), **kwargs)
    lm.step = step
    return lm

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config=None) -> TitansLM:
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(arg_string)
    extra = (additional_config or {}).get("batch_size")
    if extra is not None and str(extra).isdigit():  # lm_eval's --batch_size ("auto": ours)
      args["batch_size"] = extra
    if "workdir" not in args:
      raise ValueError("--model_args needs workdir=PATH (a titans_jax training run)")
    kw = {
      k: int(args[k])
      for k in ("batch_size", "max_length", "max_gen_toks", "step", "prefix_token_id")
      if k in args
    }
    return cls.from_workdir(
      args["workdir"], step=kw.pop("step", None), tokenizer=args.get("tokenizer"), **kw
    )

  @property
  def tokenizer_name(self) -> str:
    return self.tok.path

  @property
  def eot_token_id(self) -> int:
    return self.prefix_token_id

  # ------------------------------------------------------------- scoring ---
  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # Trailing spaces belong to the continuation (as lm_eval's own models do); the
    # continuation's ids are the tail of the whole string's, so merges across the
    # boundary are tokenised as the model saw them in training.
    n = len(context) - len(context.rstrip())
    if n:
      context, continuation = context[:-n], context[-n:] + continuation
    if not context:
      return [self.prefix_token_id], self.tok.encode(continuation)
    whole, ctx = self.tok.encode(context + continuation), self.tok.encode(context)
    return ctx, whole[len(ctx) :]

  def score_tokens(self, sequences: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
    """For each (tokens, n): the summed log-probability of the last n tokens given the
    ones before them, and whether each of them is the argmax (batched, bucketed)."""
    out: list[Any] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    for start in range(0, len(order), self.batch_size):
      idx = order[start : start + self.batch_size]
      T = _bucket(max(len(sequences[i][0]) - 1 for i in idx))
      inputs = np.zeros((self.batch_size, T), np.int32)
      targets = np.zeros((self.batch_size, T), np.int32)
      for row, i in enumerate(idx):
        toks = sequences[i][0]
        inputs[row, : len(toks) - 1] = toks[:-1]
        targets[row, : len(toks) - 1] = toks[1:]
      logp, greedy = jax.device_get(self._logprobs(self.params, self.rest, inputs, targets))
      for row, i in enumerate(idx):
        toks, n = sequences[i]
        end = len(toks) - 1
        out[i] = (
          float(np.sum(logp[row, end - n : end], dtype=np.float64)),
          bool(np.all(greedy[row, end - n : end])),
        )
    return out

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    seqs = []
    for req in requests:
      ctx, cont = self._encode_pair(*req.args[:2])
      if not cont:
        raise ValueError(f"empty continuation for context {req.args[0][-40:]!r}")
      toks = ctx + cont
      if self.max_length and len(toks) - 1 > self.max_length:
        if len(cont) > self.max_length:
          raise ValueError(
            f"continuation of {len(cont)} tokens exceeds max_length={self.max_length}"
          )
        toks = toks[-(self.max_length + 1) :]
      seqs.append((toks, len(cont)))
    results = self.score_tokens(seqs)
    for req, res in zip(requests, results):
      self.cache_hook.add_partial("loglikelihood", req.args, res)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Σ log p of every token of each document, the first conditioned on prefix_token_id."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    seqs, owner = [], []
    for k, req in enumerate(requests):
      toks = self.tok.encode(req.args[0])
      if not self.max_length or len(toks) <= self.max_length:
        windows = [([self.prefix_token_id], toks)] if toks else []
      else:
        windows = [
          make_disjoint_window(w)
          for w in get_rolling_token_windows(
            toks, self.prefix_token_id, self.max_length, context_len=1
          )
        ]
      for ctx, pred in windows:
        seqs.append((ctx + pred, len(pred)))
        owner.append(k)
    totals = [0.0] * len(requests)
    for k, (ll, _) in zip(owner, self.score_tokens(seqs)):
      totals[k] += ll
    for req, ll in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, ll)
    return totals

  # ----------------------------------------------------------- generation ---
  def _merged(self):
    if self._model is None:
      self._model = nnx.merge(self.graphdef, self.params, self.rest)
    return self._model

  def greedy_batch(
    self, prompts: np.ndarray, max_new: int, until: Sequence[str], stop_ids: Sequence[int] = ()
  ) -> list[list[int]]:
    """Greedy continuations (token ids, stopped early by `until` / `stop_ids`) of equal
    length prompts B×P through the cached prefill + decode step."""
    model = self._merged()
    B, P = prompts.shape
    n_pre = P if P <= self.prefill_bucket else P - P % self.prefill_bucket
    logits, cache = prefill(model, jnp.asarray(prompts[:, :n_pre]))
    logits = logits[:, -1]
    for t in range(n_pre, P):  # the prompt's tail, one cached step at a time
      logits, cache = decode_step(model, jnp.asarray(prompts[:, t]), cache)
    new: list[list[int]] = [[] for _ in range(B)]
    done = np.zeros(B, bool)
    for step in range(max_new):
      token = np.asarray(jnp.argmax(logits.astype(jnp.float32), axis=-1), np.int32)
      for b in range(B):
        if done[b]:
          continue
        new[b].append(int(token[b]))
        if int(token[b]) in stop_ids or (
          until and any(s in self.tok.decode(new[b]) for s in until)
        ):
          done[b] = True
      if done.all() or step == max_new - 1:
        break
      logits, cache = decode_step(model, jnp.asarray(token), cache)
    return new

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    groups: dict[tuple, list[int]] = {}
    encoded = []
    for k, req in enumerate(requests):
      context, kwargs = req.args[0], dict(req.args[1] or {})
      until = kwargs.get("until", [])
      until = [u for u in ([until] if isinstance(until, str) else until) if u]
      if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
        raise ValueError(
          f"the titans_jax adapter decodes greedily; sampling was requested ({kwargs})"
        )
      max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
      toks = self.tok.encode(context) or [self.prefix_token_id]
      if self.max_length:
        toks = toks[-max(1, self.max_length - max_new) :]
      encoded.append((toks, tuple(until), max_new))
      groups.setdefault((len(toks), tuple(until), max_new), []).append(k)
    out: list[str] = [""] * len(requests)
    stop_ids = () if self.tok.eos_id is None else (self.tok.eos_id,)
    for (_, until, max_new), ks in groups.items():
      for start in range(0, len(ks), self.batch_size):
        chunk = ks[start : start + self.batch_size]
        rows = [encoded[k][0] for k in chunk]
        rows += [rows[-1]] * (self.batch_size - len(rows))  # one batch shape
        gens = self.greedy_batch(np.asarray(rows, np.int32), max_new, until, stop_ids)
        for k, ids in zip(chunk, gens):
          ids = [i for i in ids if i not in stop_ids]
          text = self.tok.decode(ids)
          for s in until:
            text = text.split(s)[0] if s else text
          out[k] = text
          self.cache_hook.add_partial("generate_until", requests[k].args, text)
    return out


def run_tasks(
  lm: TitansLM,
  tasks: Sequence[str],
  *,
  include_path: Optional[str] = None,
  include_defaults: Optional[bool] = None,
  limit: Optional[float] = None,
  num_fewshot: Optional[int] = None,
  outdir: Optional[str | pathlib.Path] = None,
  log=print,
) -> dict:
  """`lm_eval.simple_evaluate` on `tasks` (names, or YAML tasks under `include_path`;
  lm_eval's own task list is indexed only when `include_defaults` or, by default, when a
  task is not under `include_path`: indexing it takes seconds);
  writes lm_eval.json under `outdir` and returns lm_eval's results dict."""
  import json

  import lm_eval
  from lm_eval.tasks import TaskManager

  manager = None
  if include_path and not include_defaults:
    manager = TaskManager(include_path=include_path, include_defaults=False)
    if include_defaults is None and not set(tasks) <= set(manager.all_tasks):
      manager = None
  if manager is None:
    manager = TaskManager(include_path=include_path)
  res = lm_eval.simple_evaluate(
    model=lm,
    tasks=list(tasks),
    num_fewshot=num_fewshot,
    limit=limit,
    task_manager=manager,
    log_samples=False,
    bootstrap_iters=0,
  )
  results = {
    "results": res["results"],
    "n-samples": res.get("n-samples", {}),
    "versions": res.get("versions", {}),
  }
  if outdir is not None:
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "lm_eval.json").write_text(json.dumps(results, indent=2, default=str))
  try:
    from lm_eval.utils import make_table

    log(make_table(res))
  except Exception:  # the table is a convenience; the JSON is the record
    log(json.dumps(results["results"], indent=2, default=str))
  return results
