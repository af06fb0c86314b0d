"""Timing of whole-model training steps, built with the project's own train step.

`time_train_step` builds `Titans(cfg)`, the AdamW optimizer and `make_train_step` as
`train()` does (`titans_jax.training.loop`), compiles the step ahead of time on the real
state (so compile time and XLA's memory analysis are reported separately), runs warm-up
steps, then times `steps` steps one by one, each ended with `block_until_ready`.

    row = time_train_step(TitansConfig.preset("tiny", variant="mag"), batch=2, seq=128)
    row["tokens_per_s"], row["mfu"]

Axis legend: B batch, T sequence.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from titans_jax.config import TrainConfig, apply_model_overrides
from titans_jax.models import Titans
from titans_jax.models.config import TitansConfig
from titans_jax.perf import flops as flops_lib
from titans_jax.perf import profile as prof_lib
from titans_jax.runtime import build
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps as ts

DTYPE_ALIASES = {
  "bf16": "bfloat16",
  "bfloat16": "bfloat16",
  "fp32": "float32",
  "float32": "float32",
  "f32": "float32",
}


def resolve_dtype(dtype: str) -> str:
  """ "auto" -> "bf16" on accelerators, "fp32" on CPU (which has no bf16 matmul units:
  bf16 there is emulated and slower, and compiles slower)."""
  if dtype != "auto":
    return dtype
  return "fp32" if jax.default_backend() == "cpu" else "bf16"


def model_config(
  preset: str, variant: str, dtype: str = "bf16", overrides: Sequence[str] = ()
) -> TitansConfig:
  """The preset of `variant` computing in `dtype` (parameters stay float32), with
  `FIELD=VALUE` overrides applied by the same path as train.py's `--set model.FIELD=…`
  (`titans_jax.config.apply_model_overrides`): e.g. `num_layers=1`,
  `memory.commit_every=64`, `memory.impl=primal`. A bad one raises ConfigError naming it.
  """
  kw = {"variant": variant, "dtype": DTYPE_ALIASES[dtype]}
  base = TitansConfig.preset(preset, **kw)
  memory = [o for o in overrides if o.strip().startswith("memory.")]
  parsed = apply_model_overrides(base, [o for o in overrides if o not in memory])
  # Changed model fields go through the preset again, so that at the paper scales the
  # SwiGLU width is re-solved for the changed shape (as the preset documents).
  # A field named in an override is kept even where it equals the preset's value
  # (`ffn_hidden=2176` at num_layers=1 must not be re-solved away).
  named = {o.split("=", 1)[0].strip() for o in overrides if o not in memory}
  kw.update(
    {
      f.name: getattr(parsed, f.name)
      for f in dataclasses.fields(parsed)
      if f.name in named or getattr(parsed, f.name) != getattr(base, f.name)
    }
  )
  return apply_model_overrides(TitansConfig.preset(preset, **kw), memory)


def device_info() -> dict:
  d = jax.devices()[0]
  return {
    "backend": jax.default_backend(),
    "device_kind": d.device_kind,
    "num_devices": jax.device_count(),
    "jax": jax.__version__,
    "host": platform.node(),
    "cpu_count": os.cpu_count(),
    "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }


def _device_memory() -> dict:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - CPU returns None or raises on some versions
    stats = None
  if not stats:
    return {}
  return {
    k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats
  }


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, size=(batch, seq + 1)).astype(np.int32)
  return {
    "inputs": jnp.asarray(tokens[:, :-1]),
    "targets": jnp.asarray(tokens[:, 1:]),
    "weights": jnp.ones((batch, seq), jnp.float32),
  }


def time_train_step(
  cfg: TitansConfig,
  batch: int,
  seq: int,
  *,
  steps: int = 5,
  warmup: int = 1,
  seed: int = 0,
  peak_flops: Optional[float] = None,
  jit_init: bool = True,
  profile_runs: int = 0,
) -> dict:
  """Times the full training step (forward + backward + AdamW) of `Titans(cfg)`.

  Args:
    cfg: the model config.
    batch, seq: B sequences of T tokens per step.
    steps: timed steps (after `warmup` untimed ones; compilation is separate).
    peak_flops: peak FLOP/s for MFU; None = from the device table (None on CPU: MFU
      is then reported as None).
    jit_init: initialise the parameters with one jitted program, as `train()` does
      (False: op by op — measured slower on CPU, 18 s vs 7.5 s for a 1-layer tiny
      LMM; neither changes what is timed).
    profile_runs: if > 0, also profile that many steps after the timed ones
      (`titans_jax.perf.profile`: time per scope — memory blocks, rest of the memory,
      attention, FFN, other — matmul vs other, ops per step, device busy fraction),
      returned under "profile".

  Returns:
    A JSON-ready dict: config, timings (median/min/max step seconds, tokens/s),
    FLOPs (analytic, `titans_jax.perf.flops.step_flops`), MFU and memory.
  """
  tcfg = TrainConfig(steps=max(steps + warmup, 2), batch_size=batch, warmup_steps=1)
  tx = opt_lib.make_optimizer(tcfg)
  schedule = opt_lib.lr_schedule(tcfg)

  t0 = time.perf_counter()
  if jit_init:
    model = build.build_model(cfg, seed)  # as train() does: one compiled program
  else:
    model = Titans(cfg, rngs=nnx.Rngs(seed))  # op by op: no extra compile
  graphdef, state = ts.create_train_state(model, tx)
  del model
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0

  step_fn = ts.make_train_step(graphdef, tx, schedule, 1, donate=True)
  data = random_batch(batch, seq, cfg.vocab_size, seed)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  memory = ts.compiled_memory(compiled)

  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, data)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  loss = float(metrics["loss"])
  memory.update(_device_memory())
  profile = None
  if profile_runs > 0:

    def run_step():
      nonlocal state, metrics
      state, metrics = compiled(state, data)  # noqa: F821 (called before the del below)
      jax.block_until_ready((state, metrics))

    profile = prof_lib.profile_steps(run_step, compiled.as_text(), steps=profile_runs)
  del state, compiled
  gc.collect()

  fl = flops_lib.step_flops(cfg, batch, seq)
  step_s = statistics.median(times)
  if peak_flops is None:
    peak_flops = flops_lib.peak_flops_for(jax.devices()[0].device_kind, cfg.dtype)
  tokens = batch * seq
  return {
    "variant": cfg.variant,
    "batch": batch,
    "seq": seq,
    "dtype": cfg.dtype,
    "remat": cfg.remat,
    "attn_impl": cfg.attn_impl,
    "params": int(fl["params"]),
    "init_s": init_s,
    "compile_s": compile_s,
    "step_s_median": step_s,
    "step_s_min": min(times),
    "step_s_max": max(times),
    "step_s_all": times,
    "tokens_per_s": tokens / step_s,
    "flops_per_step": fl["total"],
    "flops_breakdown": fl,
    "achieved_flops_per_s": fl["total"] / step_s,
    "peak_flops": peak_flops,
    "mfu": flops_lib.model_flops_utilization(fl["total"], step_s, peak_flops),
    "memory": memory,
    "final_loss": loss,
    **({"profile": profile} if profile is not None else {}),
  }


def markdown_table(rows: list[dict], baseline: str = "swa") -> str:
  """One line per row: tokens/s, its ratio to the baseline variant at the same
  (batch, seq, dtype), FLOPs, MFU and memory."""
  base = {
    (r["batch"], r["seq"], r["dtype"]): r["tokens_per_s"]
    for r in rows
    if r.get("variant") == baseline and "tokens_per_s" in r
  }
  head = (
    "variant",
    "B×T",
    "params",
    "step ms",
    "tokens/s",
    f"vs {baseline}",
    "GFLOP/step",
    "GFLOP/s",
    "MFU",
    "compiled peak MiB",
    "device peak MiB",
    "compile s",
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  mib = lambda b: f"{b / 2**20:,.0f}" if b is not None else "n/a"  # noqa: E731
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['variant']} | {r['batch']}×{r['seq']} | "
        + "error: "
        + r["error"][:80].replace("|", "/")
        + " |"
        + " |" * (len(head) - 3)
      )
      continue
    b = base.get((r["batch"], r["seq"], r["dtype"]))
    ratio = f"{r['tokens_per_s'] / b:.2f}" if b else "n/a"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    mem = r.get("memory", {})
    lines.append(
      f"| {r['variant']} | {r['batch']}×{r['seq']} | {r['params'] / 1e6:.2f}M | "
      f"{1e3 * r['step_s_median']:,.1f} | {r['tokens_per_s']:,.0f} | {ratio} | "
      f"{r['flops_per_step'] / 1e9:,.2f} | {r['achieved_flops_per_s'] / 1e9:,.1f} | "
      f"{mfu} | {mib(mem.get('compiled_peak_bytes'))} | "
      f"{mib(mem.get('peak_bytes_in_use'))} | {r['compile_s']:.1f} |"
    )
  return "\n".join(lines)


def add_baseline_ratios(rows: list[dict], baseline: str = "swa") -> None:
  """Sets row["vs_swa"] = tokens/s ÷ the baseline's at the same (batch, seq, dtype)."""
  base = {
    (r["batch"], r["seq"], r["dtype"]): r["tokens_per_s"]
    for r in rows
    if r.get("variant") == baseline and "tokens_per_s" in r
  }
  for r in rows:
    b = base.get((r["batch"], r["seq"], r["dtype"]))
    if "tokens_per_s" in r:
      r[f"vs_{baseline}"] = r["tokens_per_s"] / b if b else None


def write_json(path: str, result: dict) -> None:
  """Rewrite a benchmark's JSON (called after every point, so a cut-short run keeps it)."""
  with open(path, "w") as f:
    json.dump(result, f, indent=1)


def new_result(benchmark: str, args) -> dict:
  """The JSON every benchmark writes: what ran, when, with which flags, on what."""
  return {
    "benchmark": benchmark,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": " ".join(["python"] + sys.argv),
    "args": vars(args),
    "device": device_info(),
    "rows": [],
  }
