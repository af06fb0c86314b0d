#!/usr/bin/env python
"""Train a Titans model.

  python train.py                                   # the default: small MAG, stdlib bytes
  python train.py --config configs/tiny.py --workdir /tmp/tiny --set train.steps=100
  python train.py --config configs/paper_340m.py --workdir runs/340m \
      --set data.paths=/data/train.bin

Re-running with the same --workdir resumes from its latest checkpoint; a damaged newest
checkpoint stops with a one-line error unless --skip_damaged or --resume_from_step N
(newer step directories are then moved to <workdir>/checkpoints_set_aside/). --dry_run
compiles the step for the config's mesh (no data, no parameters allocated), prints the
per-device memory estimate and exits. Several processes (docs/sharding.md):

  python train.py --config ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

import sys

from titans_jax import cli
from titans_jax.config import ConfigError
from titans_jax.data.text import DataError
from titans_jax.runtime.checkpointing import (
  CheckpointDamagedError,
  StorageError,
  describe_error,
  quiet_orbax_error_logs,
)
from titans_jax.sharding import MeshError
from titans_jax.training import loop


def main(argv=None) -> int:
  parser = cli.build_parser("Train a Titans model (see configs/ and docs/training.md).")
  parser.add_argument(
    "--dry_run",
    action="store_true",
    help="AOT-compile the train step for the mesh on abstract inputs, "
    "print per-device memory, exit",
  )
  parser.add_argument(
    "--resume_from_step",
    type=int,
    default=None,
    help="resume from this checkpoint; later step directories are moved to "
    "<workdir>/checkpoints_set_aside/ (never deleted)",
  )
  parser.add_argument(
    "--skip_damaged",
    action="store_true",
    help="resume from the newest readable checkpoint, setting damaged newer "
    "ones aside (default: a damaged newest checkpoint stops the run)",
  )
  parser.add_argument(
    "--target",
    default=None,
    help="with --dry_run: compile for this TPU topology instead (e.g. "
    "v5p:2x2x2; needs the tpu extra) and print fit and roofline "
    "for the train, prefill and decode steps (docs/tpu.md)",
  )
  parser.add_argument(
    "--require_fit",
    action="store_true",
    help="with --target: exit 4 when a step does not fit the chip's HBM",
  )
  cli.add_distributed_flags(parser)
  args, cfg = cli.parse(parser, argv)
  cli.prefer_cpu_without_accelerator()
  quiet_orbax_error_logs()  # failures come out as one `error:` line below
  try:
    cli.init_distributed(args)
    if args.target:
      from titans_jax.training import aot

      return aot.main(cfg, args.target, require_fit=args.require_fit)
    if args.dry_run:
      for k, v in loop.compile_step(cfg).items():
        print(f"{k}: {v / 2**20:.1f} MiB" if k.endswith("bytes") else f"{k}: {v:,.0f}")
      return 0
    loop.train(
      cfg, args.workdir, resume_from_step=args.resume_from_step, skip_damaged=args.skip_damaged
    )
  except (ConfigError, DataError, MeshError, CheckpointDamagedError, StorageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # any other refusal of the filesystem: path and cause, one line
    print(f"error: {describe_error(e)}", file=sys.stderr)
    return 2
  except loop.TrainingDivergedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
