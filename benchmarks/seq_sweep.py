"""Training-step throughput (tokens/s) against sequence length, per variant.

For each sequence length (log-spaced by default: 1K … 32K on an accelerator, 128 … 512
on CPU) and each variant, time the full training step (benchmarks/timing.py, the same
measurement as benchmarks/model_bench.py) and record tokens/s. The batch is fixed
(--batch) or set per length to keep the tokens per step constant (--tokens). A size
that fails (e.g. out of memory) is recorded with its error and the sweep goes on; a
variant that fails or exceeds --max_step_s at one length skips the longer ones.
The JSON is rewritten after every point, so a killed run keeps what it measured.

  python benchmarks/seq_sweep.py --preset tiny --seqs 128 256 512          # CPU
  python benchmarks/seq_sweep.py --preset 170m --tokens 32768 --out sweep.json \\
      --plot sweep.png                                                    # GPU, 1K…32K
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: `benchmarks.timing` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from titans_jax.models.config import VARIANTS as ALL_VARIANTS

VARIANTS = tuple(sorted(ALL_VARIANTS, key=lambda v: v == "mac"))  # MAC (slowest) last


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
  ap.add_argument("--preset", default="tiny")
  ap.add_argument(
    "--seqs",
    type=int,
    nargs="+",
    default=None,
    help="sequence lengths (default: 1024…32768 on GPU/TPU, 128…512 on CPU)",
  )
  ap.add_argument("--batch", type=int, default=1, help="sequences per step (without --tokens)")
  ap.add_argument(
    "--tokens",
    type=int,
    default=None,
    help="tokens per step: batch = max(1, tokens // seq) at each length",
  )
  ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--peak_flops", type=float, default=None)
  ap.add_argument(
    "--set",
    nargs="*",
    default=[],
    metavar="FIELD=VALUE",
    help="config overrides, e.g. num_layers=1 memory.commit_every=64",
  )
  ap.add_argument(
    "--max_step_s",
    type=float,
    default=None,
    help="skip a variant's longer lengths once one step takes longer",
  )
  ap.add_argument(
    "--time_budget_s", type=float, default=None, help="start no new point after this many seconds"
  )
  ap.add_argument("--out", default=None, help="JSON output")
  ap.add_argument("--plot", default=None, help="PNG of tokens/s vs sequence length")
  return ap.parse_args(argv)


def run(args) -> dict:
  import jax

  from benchmarks import timing

  t_start = time.time()
  args.dtype = timing.resolve_dtype(args.dtype)
  if args.seqs is None:
    args.seqs = (
      [128, 256, 512] if jax.default_backend() == "cpu" else [1024, 2048, 4096, 8192, 16384, 32768]
    )
  overrides = list(args.set)
  result = timing.new_result("seq_sweep", args)
  print(
    f"# {result['device']['device_kind']}, load {result['device']['loadavg']}; "
    f"preset {args.preset} {args.dtype}",
    flush=True,
  )
  stopped: set[str] = set()
  for seq in sorted(args.seqs):
    batch = max(1, args.tokens // seq) if args.tokens else args.batch
    for v in args.variants:
      if v in stopped:
        continue
      if args.time_budget_s and time.time() - t_start > args.time_budget_s:
        print(f"# time budget spent: stopping before {v} at {seq}", flush=True)
        return _finish(args, result)
      cfg = timing.model_config(args.preset, v, args.dtype, overrides)
      try:
        row = timing.time_train_step(
          cfg, batch, seq, steps=args.steps, warmup=args.warmup, peak_flops=args.peak_flops
        )
        row.pop("flops_breakdown", None)
        print(
          f"  {v} T={seq} B={batch}: {row['tokens_per_s']:,.0f} tokens/s "
          f"(step {1e3 * row['step_s_median']:.1f} ms)",
          flush=True,
        )
        if args.max_step_s and row["step_s_median"] > args.max_step_s:
          stopped.add(v)
      except Exception as e:  # noqa: BLE001 - OOM etc.: record, skip longer lengths
        traceback.print_exc()
        row = {
          "variant": v,
          "batch": batch,
          "seq": seq,
          "dtype": cfg.dtype,
          "error": f"{type(e).__name__}: {e}"[:2000],
        }
        stopped.add(v)
      result["rows"].append(row)
      timing.add_baseline_ratios(result["rows"])
      if args.out:
        timing.write_json(args.out, result)
  return _finish(args, result)


def _finish(args, result):
  from benchmarks import timing

  result["device"]["loadavg_end"] = timing.device_info()["loadavg"]
  if args.out:
    timing.write_json(args.out, result)
  if args.plot:
    plot(result, args.plot)
  print(table(result["rows"]))
  return result


def table(rows) -> str:
  seqs = sorted({r["seq"] for r in rows})
  variants = list(dict.fromkeys(r["variant"] for r in rows))
  cell = {(r["variant"], r["seq"]): r for r in rows}
  lines = ["| variant | " + " | ".join(f"T={s}" for s in seqs) + " |", "|---|" + "---|" * len(seqs)]
  for v in variants:
    vals = []
    for s in seqs:
      r = cell.get((v, s))
      vals.append("—" if r is None else "error" if "error" in r else f"{r['tokens_per_s']:,.0f}")
    lines.append(f"| {v} | " + " | ".join(vals) + " |")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  """tokens/s vs sequence length (log-log, so that a flat line — linear cost — reads as
  flat for slow and fast variants alike), one line per variant."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  rows = [r for r in result["rows"] if "tokens_per_s" in r]
  for v in dict.fromkeys(r["variant"] for r in rows):
    pts = sorted((r["seq"], r["tokens_per_s"]) for r in rows if r["variant"] == v)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length (tokens)")
  ax.set_ylabel("training tokens / s")
  a = result["args"]
  per_step = f", B·T = max(T, {a['tokens']})" if a.get("tokens") else f", B = {a.get('batch')}"
  ax.set_title(
    f"{a['preset']} {a['dtype']} on {result['device']['device_kind']}{per_step}, "
    f"{result.get('date', '')[:10]}",
    fontsize=10,
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  return run(parse_args(argv))


if __name__ == "__main__":
  main()
