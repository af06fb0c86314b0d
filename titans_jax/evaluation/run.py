"""`eval.py` as a library call: restore a checkpoint and measure it.

evaluate(workdir, cfg=None) -> results dict, and files under <workdir>/eval/step_<N>/:
  metrics.json          held-out loss, perplexity, bits/byte (or bits/token), accuracy
  niah_<task>.json/.md/.png   the S-NIAH grid (byte-level models)
  samples.txt           greedy continuation of eval.prompt
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Optional

import jax

from titans_jax import config as config_lib
from titans_jax.data import pipeline
from titans_jax.data import tokenizer as tokenizer_lib
from titans_jax.data import tokens as token_files
from titans_jax.evaluation import niah, sampling
from titans_jax.runtime import build, checkpointing, perplexity
from titans_jax.runtime import steps as ts
from titans_jax.runtime.metrics import strict_json


class NonFiniteResultError(RuntimeError):
  """The held-out loss of the checkpoint is NaN/Inf (metrics.json is still written)."""


def load_for_eval(
  workdir,
  cfg: Optional[config_lib.Config] = None,
  step: Optional[int] = None,
  config_only: bool = False,
):
  """(cfg, step, graphdef, params, rest) from the checkpoint in `workdir`.

  Without `cfg` the config saved with the checkpoint is used; with it, the checkpoint
  must have been written for the same model (else CheckpointMismatchError naming the
  fields). `config_only`: return just the saved config.
  """
  steps = checkpointing.existing_steps(workdir)
  if not steps:
    raise config_lib.ConfigError(
      f"no checkpoint in {checkpointing.checkpoint_dir(workdir)}; train first "
      f"(python train.py --workdir {workdir})"
    )
  ck = checkpointing.Checkpointer(workdir, create=False, async_save=False)
  try:
    step = ck.latest_step() if step is None else step
    if step not in ck.all_steps():
      raise config_lib.ConfigError(
        f"no checkpoint for step {step} in {ck.directory}; have {ck.all_steps()}"
      )
    if cfg is None:
      cfg = config_lib.config_from_dict(ck.saved_config(step))
      if config_only:
        return cfg
    else:
      ck.check_compatible(cfg, step)
    graphdef, abstract = build.abstract_train_state(cfg)
    # Evaluation runs on one device: restore every shard there, whatever mesh wrote it.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract
    )
    state = ck.restore(step, abstract)
  finally:
    ck.close()
  return cfg, step, graphdef, state.params, state.rest


def evaluate(
  workdir,
  cfg: Optional[config_lib.Config] = None,
  *,
  step: Optional[int] = None,
  perplexity_eval: bool = True,
  niah_eval: bool = True,
  samples: bool = True,
  tokenizer: Optional[str] = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Evaluates the checkpoint in `workdir`; see the module docstring for the outputs.

  `tokenizer`: a tokenizer file for token models (default: the one in the data's
  prepare metadata); with one, prompts and samples are text and bits/byte is reported.
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  cfg, step, graphdef, params, rest = load_for_eval(workdir, cfg, step)
  outdir = workdir / "eval" / f"step_{step}"
  results: dict = {"step": step, "config": cfg.name}
  byte_level = cfg.data.kind in ("text", "niah")
  log(f"evaluating {workdir} at step {step} ({cfg.model.variant}, data={cfg.data.kind})")
  tok, meta = _token_text(cfg, tokenizer)
  for s, d in checkpointing.step_dirs(workdir).items():
    what = checkpointing.missing_part(d)
    if s > step and what is not None:  # never chosen as the latest; say why
      log(f"note: {checkpointing.damaged_message(d, what, step)}")

  if perplexity_eval:
    corpus = pipeline.load_corpus(cfg.data, cfg.model.vocab_size)
    batches = pipeline.eval_batches(cfg.data, corpus, cfg.eval.batch_size, cfg.eval.batches)
    m = perplexity.evaluate_batches(
      ts.make_eval_step(graphdef), params, rest, batches, byte_level=corpus.byte_level
    )
    if meta and not corpus.byte_level:  # bytes/token measured by prepare on held-out text
      m["bits_per_byte"] = m["bits_per_token"] / meta["bytes_per_token"]
    results["heldout"] = m
    log("held-out: " + perplexity.format_metrics(m))

  e = cfg.eval
  if niah_eval and e.niah_lengths and e.niah_depths and e.niah_samples > 0:
    if cfg.model.vocab_size < 256:
      log("S-NIAH grid skipped: it is byte-level and model.vocab_size < 256")
    else:
      grid = niah.niah_grid(
        niah.make_predict(graphdef),
        params,
        rest,
        task=e.niah_task,
        lengths=e.niah_lengths,
        depths=e.niah_depths,
        samples=e.niah_samples,
        batch_size=e.batch_size,
      )
      paths = niah.write_grid(grid, outdir, title=f"{cfg.name} step {step}: S-NIAH {e.niah_task}")
      results["niah"] = grid
      results["niah_files"] = paths
      log(niah.to_markdown(grid))

  if samples and e.prompt and e.sample_tokens > 0:
    cont = sampling.sample(
      graphdef,
      params,
      rest,
      e.prompt,
      max_new_tokens=e.sample_tokens,
      byte_level=byte_level,
      tokenizer=tok,
    )
    results["sample"] = {"prompt": e.prompt, "continuation": cont}
    log(f"greedy sample:\n{e.prompt}{cont}")

  outdir.mkdir(parents=True, exist_ok=True)
  # strict JSON: a non-finite value is written as null, never as a bare NaN
  (outdir / "metrics.json").write_text(
    strict_json({k: v for k, v in results.items() if k not in ("niah",)})
  )
  if "sample" in results:
    (outdir / "samples.txt").write_text(
      results["sample"]["prompt"] + results["sample"]["continuation"] + "\n"
    )
  log(f"wrote {outdir}")
  loss = results.get("heldout", {}).get("loss", 0.0)
  if not math.isfinite(loss):
    raise NonFiniteResultError(
      f"checkpoint step {step} in {workdir} gives a non-finite held-out loss ({loss}; "
      f"written as null to {outdir / 'metrics.json'})"
    )
  return results


def _token_text(cfg, tokenizer: Optional[str]):
  """(tokenizer or None, prepare metadata or None) for decoding a token model's text."""
  meta = token_files.read_metadata(cfg.data.paths) if cfg.data.kind == "tokens" else None
  if tokenizer:
    return tokenizer_lib.load(tokenizer), meta
  if meta is not None:
    return tokenizer_lib.from_metadata(meta), meta
  return None, None
