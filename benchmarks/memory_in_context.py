"""What the memory layer costs inside a model's train step vs on its own, in one run.

Three programs, compiled once and then run in turn (interleaved rounds, so that load
changes hit all three alike), for one variant of a preset:

  model    the variant's train step (`make_train_step`: forward + backward + AdamW);
  ablated  the same step with every memory layer replaced by the identity (the
           memory's input passes through; its parameters get no gradient) — an
           ablation for timing only, never a model anyone trains;
  alone    the memory layer by itself (`NeuralMemory` of the same config, the same
           input length: T plus the persistent tokens), forward + backward of
           sum(y²) with respect to its parameters and input.

Reported per program: the median step time over the rounds; then model − ablated (what
the memory adds to the step) against alone. On the 2-core development CPU the first was
measured at 2-3× the second for the same loop HLO (benchmarks/RESULTS.md §6).

  python benchmarks/memory_in_context.py --preset 170m --variant mag --seq 1024 \\
      --set num_layers=1 ffn_hidden=2176 vocab_size=256
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from unittest import mock

if __package__ in (None, ""):  # run as a script: `benchmarks.timing` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import step_race, timing
from titans_jax.memory.module import NeuralMemory


def _identity_memory(self, x, state=None):
  return x, None


def train_step_program(cfg, batch: int, seq: int, ablate_memory: bool):
  """`step_race.step_runner` of `cfg`, traced with the memory ablated or not: a function
  that runs the compiled train step once, and the compiled step."""
  patch = (
    mock.patch.object(NeuralMemory, "__call__", _identity_memory)
    if ablate_memory
    else mock.patch.object(NeuralMemory, "__call__", NeuralMemory.__call__)
  )
  with patch:  # the patch only matters while the step is traced
    jax.clear_caches()  # jit reuses a trace of the same function: force a fresh one
    return step_race.step_runner(cfg, batch, seq)


def memory_alone_program(cfg, batch: int, seq: int):
  """The memory layer's forward + backward on its own, as a run-once function."""
  mem_cfg = cfg.memory_config
  graphdef, params = nnx.split(NeuralMemory(mem_cfg, rngs=nnx.Rngs(0)))
  length = seq + cfg.num_persistent  # MAG / MAL / MAC prepend the persistent tokens
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, length, mem_cfg.dim), mem_cfg.dtype)

  def loss(params, x):
    y, _ = nnx.merge(graphdef, params)(x)
    return jnp.sum(jnp.square(y.astype(jnp.float32)))

  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return lambda: jax.block_until_ready(compiled(params, x))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="170m")
  ap.add_argument("--variant", default="mag", choices=("mag", "mal", "lmm"))
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--dtype", default="fp32", choices=("bf16", "fp32"))
  ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
  ap.add_argument("--set", nargs="*", default=[], help="model FIELD=VALUE overrides")
  args = ap.parse_args(argv)
  cfg = timing.model_config(args.preset, args.variant, args.dtype, args.set)
  programs = {}
  for name, make in (
    ("model", lambda: train_step_program(cfg, args.batch, args.seq, False)[0]),
    ("ablated", lambda: train_step_program(cfg, args.batch, args.seq, True)[0]),
    ("alone", lambda: memory_alone_program(cfg, args.batch, args.seq)),
  ):
    t = time.perf_counter()
    programs[name] = make()
    programs[name]()  # warm-up
    print(f"{name}: compiled and warmed up in {time.perf_counter() - t:.1f} s", flush=True)
  times = {name: [] for name in programs}
  for _ in range(args.rounds):
    for name, run in programs.items():
      t = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t)
  med = {name: statistics.median(v) for name, v in times.items()}
  info = timing.device_info()
  print(
    f"# {info['backend']}, jax {info['jax']}, load {info['loadavg']}; {args.preset} "
    f"{args.variant} {' '.join(args.set)}, B={args.batch} T={args.seq} {args.dtype}, "
    f"{args.rounds} rounds"
  )
  for name in programs:
    runs = ", ".join(f"{1e3 * s:.0f}" for s in times[name])
    print(f"  {name:8s} median {1e3 * med[name]:8.1f} ms   (rounds: {runs})")
  in_model = med["model"] - med["ablated"]
  print(
    f"  memory in the model (model − ablated): {1e3 * in_model:.1f} ms; alone: "
    f"{1e3 * med['alone']:.1f} ms; ratio {in_model / med['alone']:.2f}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
