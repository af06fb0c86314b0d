#!/usr/bin/env python
"""Evaluate a trained Titans checkpoint: held-out perplexity / bits-per-byte, an S-NIAH
accuracy grid (JSON, markdown, PNG heatmap) and greedy samples.

  python eval.py --workdir runs/default                  # uses the config saved with the run
  python eval.py --config configs/default.py --workdir runs/default \
      --set eval.niah_lengths=256,512,1024,2048 --set eval.prompt="import "

With --config the checkpoint must belong to the same model config. Outputs go to
<workdir>/eval/step_<N>/.
"""
import sys

from titans_jax.data.text import DataError
from titans_jax.evaluation import run
from titans_jax.training import cli, config as config_lib
from titans_jax.training.checkpointing import CheckpointDamagedError, quiet_orbax_error_logs


def main(argv=None) -> int:
  parser = cli.build_parser("Evaluate a Titans checkpoint (see docs/training.md).")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--skip", default="", help="comma list of parts to skip: ppl,niah,samples")
  args, overrides = cli.parse_args(parser, argv)
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
    run.evaluate(args.workdir, cfg, step=args.step, perplexity_eval="ppl" not in skip,
                 niah_eval="niah" not in skip, samples="samples" not in skip)
  except (config_lib.ConfigError, DataError, ValueError, CheckpointDamagedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except run.NonFiniteResultError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
