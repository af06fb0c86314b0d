#!/usr/bin/env python
"""Evaluate a trained Titans checkpoint: held-out perplexity / bits-per-byte, an S-NIAH
accuracy grid (JSON, markdown, PNG heatmap) and greedy samples.

  python eval.py --workdir runs/default                  # uses the config saved with the run
  python eval.py --config configs/default.py --workdir runs/default \
      --set eval.niah_lengths=256,512,1024,2048 --set eval.prompt="import "

With --config the checkpoint must belong to the same model config. Outputs go to
<workdir>/eval/step_<N>/.
"""

import pathlib
import sys

from titans_jax import cli
from titans_jax import config as config_lib
from titans_jax.data.text import DataError
from titans_jax.evaluation import run
from titans_jax.runtime.checkpointing import CheckpointDamagedError, quiet_orbax_error_logs


def main(argv=None) -> int:
  parser = cli.build_parser("Evaluate a Titans checkpoint (see docs/training.md).")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--skip", default="", help="comma list of parts to skip: ppl,niah,samples")
  parser.add_argument(
    "--tokenizer",
    default=None,
    help="tokenizer file for a token model (default: the data's meta.json)",
  )
  parser.add_argument(
    "--lm_eval_tasks",
    default="",
    help="comma list of lm-evaluation-harness tasks (needs the lm-eval extra)",
  )
  parser.add_argument(
    "--lm_eval_include",
    default=None,
    help="directory of extra lm_eval task YAMLs (local data sets)",
  )
  parser.add_argument(
    "--lm_eval_limit",
    type=float,
    default=None,
    help="examples per lm_eval task (a fraction if < 1)",
  )
  parser.add_argument("--lm_eval_batch_size", type=int, default=8)
  parser.add_argument(
    "--babilong",
    default=None,
    help="a local BABILong directory (<length>/<qa>-*.parquet), see docs/data.md",
  )
  parser.add_argument("--babilong_tasks", default="qa1,qa2,qa3,qa4,qa5")
  parser.add_argument(
    "--ruler", default="", help="comma list of RULER-generated .jsonl files or directories"
  )
  parser.add_argument(
    "--longctx_samples",
    type=int,
    default=0,
    help="BABILong: examples per task and length; RULER: per file (0: all)",
  )
  args, overrides = cli.parse_args(parser, argv)
  cli.prefer_cpu_without_accelerator()
  if args.workdir is None:
    parser.error("--workdir is required")
  skip = {s.strip() for s in args.skip.split(",") if s.strip()}
  quiet_orbax_error_logs()  # a damaged checkpoint comes out as one `error:` line
  try:
    if args.config:
      base = config_lib.load_config(args.config)
    else:
      base = run.load_for_eval(args.workdir, None, args.step, config_only=True)
    cfg = cli.resolve(parser, base, overrides)
    run.evaluate(
      args.workdir,
      cfg,
      step=args.step,
      perplexity_eval="ppl" not in skip,
      niah_eval="niah" not in skip,
      samples="samples" not in skip,
      tokenizer=args.tokenizer,
    )
    if args.lm_eval_tasks or args.babilong or args.ruler:
      try:
        from titans_jax.evaluation import lm_eval_adapter, longctx
      except ImportError as e:
        raise config_lib.ConfigError(
          f"--lm_eval_tasks / --babilong / --ruler need the lm_eval "
          f"extra (pip install -e '.[lm-eval]'): {e}"
        ) from None
      lm = lm_eval_adapter.TitansLM.from_workdir(
        args.workdir, args.step, args.tokenizer, cfg=cfg, batch_size=args.lm_eval_batch_size
      )
      outdir = pathlib.Path(args.workdir) / "eval" / f"step_{lm.step}"
      if args.lm_eval_tasks:
        lm_eval_adapter.run_tasks(
          lm,
          [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()],
          include_path=args.lm_eval_include,
          limit=args.lm_eval_limit,
          outdir=outdir,
        )
      n = args.longctx_samples or None
      suites = []
      if args.babilong:
        tasks = tuple(t.strip() for t in args.babilong_tasks.split(",") if t.strip())
        suites.append(
          (
            "BABILong",
            "-".join(tasks),
            "task",
            longctx.read_babilong(args.babilong, tasks, samples=n),
          )
        )
      if args.ruler:
        suites.append(
          (
            "RULER",
            "ruler",
            "depth",
            longctx.read_ruler([p for p in args.ruler.split(",") if p], samples=n),
          )
        )
      for suite, task, rows, examples in suites:
        g = longctx.evaluate(
          examples,
          longctx.titans_generator(lm),
          suite=suite,
          task=task,
          row_axis=rows,
          outdir=outdir,
        )
        print(longctx.niah.to_markdown(g))
  except (config_lib.ConfigError, DataError, ValueError, CheckpointDamagedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except run.NonFiniteResultError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
