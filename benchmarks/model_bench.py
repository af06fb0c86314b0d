"""Whole-model training-step throughput: tokens/s, MFU and peak memory per variant.

For each variant, build `Titans(cfg)` at the preset, its AdamW train state and the
project's jitted train step (`titans_jax.runtime.steps.make_train_step`, as
`train()` does), compile it ahead of time, run warm-up steps, then time `--steps` steps
one by one (each ended by `block_until_ready`). Reported per variant: median step time,
tokens/s, its ratio to the SWA baseline of the same size (SWA is added if not listed),
model FLOPs per step (`titans_jax.perf.flops`), MFU, XLA's compiled peak memory and, on
GPU, the device's peak bytes in use.

  python benchmarks/model_bench.py --preset tiny --seq 128 --batch 2            # CPU, <1 min
  python benchmarks/model_bench.py --preset 170m --seq 4096 --batch 1 --dtype bf16 \\
      --variants mag mal swa --out model_bench.json                             # GPU

MFU is n/a on CPU (and on devices missing from titans_jax.perf.flops.PEAK_FLOPS) unless
--peak_flops is given. The device's peak_bytes_in_use is a high-water mark over the
whole process, so with several variants it is the maximum so far (run one variant per
process for each one's own peak).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import traceback

if __package__ in (None, ""):  # run as a script: `benchmarks.timing` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from titans_jax.models.config import VARIANTS


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
  ap.add_argument("--preset", default="tiny", help="tiny, 170m, 340m, 400m, 760m")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument(
    "--dtype",
    default="auto",
    choices=("auto", "bf16", "fp32"),
    help="compute dtype; auto = bf16 on GPU/TPU, fp32 on CPU (no bf16 units)",
  )
  ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
  ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  ap.add_argument(
    "--peak_flops",
    type=float,
    default=None,
    help="peak FLOP/s for MFU (default: the device table; n/a on CPU)",
  )
  ap.add_argument("--remat", default=None, help="override the preset's remat policy")
  ap.add_argument("--attn_impl", default=None, help="override attention kernel")
  ap.add_argument(
    "--set",
    nargs="*",
    default=[],
    metavar="FIELD=VALUE",
    help="config overrides, e.g. num_layers=1 memory_chunk=16 "
    "memory.commit_every=64: model-relative keys, parsed as train.py's "
    "--set model.KEY=VALUE (python train.py --help lists them)",
  )
  ap.add_argument(
    "--profile",
    type=int,
    default=0,
    metavar="STEPS",
    help="also profile STEPS steps per variant: time per scope (memory "
    "blocks, memory, attention, ffn, other), matmul share, ops per "
    "step, device busy fraction (titans_jax.perf.profile)",
  )
  ap.add_argument("--no_baseline", action="store_true", help="do not add swa")
  ap.add_argument("--out", default=None, help="write the JSON here (after every variant)")
  return ap.parse_args(argv)


def run(args) -> dict:
  import jax

  from benchmarks import timing
  from titans_jax.perf import profile as prof_lib

  variants = list(dict.fromkeys(args.variants))
  if not args.no_baseline and "swa" not in variants:
    variants.append("swa")
  overrides = list(args.set)
  overrides += [f"{k}={getattr(args, k)}" for k in ("remat", "attn_impl") if getattr(args, k)]
  args.dtype = timing.resolve_dtype(args.dtype)
  result = timing.new_result("model_bench", args)
  print(
    f"# {result['device']['device_kind']} ({jax.default_backend()}), jax {jax.__version__}, "
    f"load {result['device']['loadavg']}; preset {args.preset}, B={args.batch} "
    f"T={args.seq} {args.dtype}, {args.steps} timed steps",
    flush=True,
  )
  for v in variants:
    cfg = timing.model_config(args.preset, v, args.dtype, overrides)
    try:
      row = timing.time_train_step(
        cfg,
        args.batch,
        args.seq,
        steps=args.steps,
        warmup=args.warmup,
        peak_flops=args.peak_flops,
        profile_runs=args.profile,
      )
    except Exception as e:  # noqa: BLE001 - e.g. OOM at one size: record, go on
      traceback.print_exc()
      row = {
        "variant": v,
        "batch": args.batch,
        "seq": args.seq,
        "dtype": cfg.dtype,
        "error": f"{type(e).__name__}: {e}"[:2000],
      }
    row["preset"] = args.preset
    result["rows"].append(row)
    timing.add_baseline_ratios(result["rows"])
    if "error" not in row:
      print(
        f"  {v}: {row['tokens_per_s']:,.0f} tokens/s, step {1e3 * row['step_s_median']:.1f} ms, "
        f"compile {row['compile_s']:.1f} s",
        flush=True,
      )
      if "profile" in row:
        print(prof_lib.format_profile(row["profile"]), flush=True)
    if args.out:
      timing.write_json(args.out, result)
  result["device"]["loadavg_end"] = timing.device_info()["loadavg"]
  if args.out:
    timing.write_json(args.out, result)
  print(timing.markdown_table(result["rows"]))
  return result


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main()
