"""Train steps of several configs timed in turn in one process: the same-run ratio.

Each entry is `VARIANT[:FIELD=VALUE[:FIELD=VALUE…]]` — a variant of the preset with its
own model overrides (as `--set` takes them), on top of the shared `--set`. Every step is
compiled once and warmed up, then the steps run in turn for `--rounds` rounds, so that
load changes hit all of them alike (model_bench runs one variant after another). Printed:
each entry's median step time, tokens/s and its ratio to the first entry's.

  # the issue-18 CPU comparison: one 170m-width layer, T = 1K, each variant's own FFN
  python benchmarks/step_race.py --preset 170m --seq 1024 --set num_layers=1 vocab_size=256 \\
      --entries swa:ffn_hidden=3392 mag:ffn_hidden=2176 mag:ffn_hidden=2176:memory.remat_blocks=4
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: `benchmarks.timing` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax

from benchmarks import timing
from titans_jax.config import TrainConfig
from titans_jax.runtime import build
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps as ts


def parse_entry(entry: str, shared: list[str]) -> tuple[str, list[str]]:
  """'mag:ffn_hidden=2176' -> ('mag', shared + ['ffn_hidden=2176'])."""
  variant, *overrides = entry.split(":")
  bad = [o for o in overrides if "=" not in o]
  if bad:
    raise SystemExit(f"--entries {entry!r}: {bad[0]!r} is not FIELD=VALUE")
  return variant, list(shared) + overrides


def step_runner(cfg, batch: int, seq: int):
  """A function that runs `cfg`'s compiled train step once (state carried), and the
  compiled step."""
  tcfg = TrainConfig(steps=100, batch_size=batch, warmup_steps=1)
  tx = opt_lib.make_optimizer(tcfg)
  graphdef, state = ts.create_train_state(build.build_model(cfg, 0), tx)
  step = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(tcfg), 1, donate=True)
  data = timing.random_batch(batch, seq, cfg.vocab_size, 0)
  compiled = step.lower(state, data).compile()
  box = [state]

  def run():
    box[0], metrics = compiled(box[0], data)
    jax.block_until_ready((box[0], metrics))

  return run, compiled


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--dtype", default="fp32", choices=("bf16", "fp32"))
  ap.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up)")
  ap.add_argument("--set", nargs="*", default=[], help="model overrides shared by all entries")
  ap.add_argument("--entries", nargs="+", required=True, help="VARIANT[:FIELD=VALUE…]")
  args = ap.parse_args(argv)
  entries = [parse_entry(e, args.set) for e in args.entries]
  runners = {}
  for name, (variant, overrides) in zip(args.entries, entries):
    cfg = timing.model_config(args.preset, variant, args.dtype, overrides)
    t = time.perf_counter()
    runners[name] = step_runner(cfg, args.batch, args.seq)[0]
    runners[name]()  # warm-up
    print(f"{name}: compiled and warmed up in {time.perf_counter() - t:.1f} s", flush=True)
  times = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      t = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t)
  info = timing.device_info()
  print(
    f"# {info['backend']}, jax {info['jax']}, load {info['loadavg']}; {args.preset}, "
    f"B={args.batch} T={args.seq} {args.dtype}, shared: {' '.join(args.set) or '—'}, "
    f"{args.rounds} rounds"
  )
  first = statistics.median(times[args.entries[0]])
  print("| entry | median step | tokens/s | × first | rounds (ms) |\n|---|---|---|---|---|")
  for name, runs in times.items():
    med = statistics.median(runs)
    print(
      f"| {name} | {1e3 * med:.0f} ms | {args.batch * args.seq / med:,.0f} "
      f"| {first / med:.3f} | {', '.join(f'{1e3 * s:.0f}' for s in runs)} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
