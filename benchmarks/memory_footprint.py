"""Per-device memory and memory traffic of each variant's train step, compiled ahead of
time: for this machine's backend (CPU here) and/or a TPU chip (libtpu, no TPU needed).

For each variant: the train step `make_train_step` runs (forward + backward + AdamW,
donated state) is compiled on abstract inputs, and XLA reports

  * args: parameters + optimizer state + batch (`memory_analysis().argument_size`),
  * temps: temporaries (activations kept for the backward, workspaces),
  * peak: args + outputs − donated aliases + temps (what must fit on the chip),
  * FLOPs and bytes accessed: `cost_analysis()`, XLA's estimate, in which a while loop's
    body counts ONCE whatever its trip count (checked for TPU and CPU: a scan of 10
    matmuls reports the FLOPs of one). With the layers scanned and the memory's blocks
    scanned these are one layer and one block, not the step: compare them only
    between programs with the same loops,

plus, from `jax.ad_checkpoint` on the abstract loss, the residuals the forward saves for
the backward, split into the memory's block scan (`memory_block` scope) and the rest.
`--parts` adds the memory layer alone (one layer's `memory.apply`, f+b) and the same
model with the memory's scan rematerialisation off, to split what the scan keeps.

  python benchmarks/memory_footprint.py --preset 170m --seq 4096 --target tpu:v5e \\
      --variants swa mag mal mac                  # 170m at 4K on one v5e chip, bf16
  python benchmarks/memory_footprint.py --preset 170m --seq 1024 --target cpu --dtype fp32 \\
      --set num_layers=1 --variants swa mag

`--set memory.scan_remat_every=8` etc. change the MemoryConfig (as model_bench: `timing.model_config`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: `benchmarks.timing` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Several processes on this machine may compile for TPU at once (libtpu's lock would
# refuse all but one); compiling needs no exclusive chip.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

VARIANTS = ("mac", "mag", "mal", "lmm", "swa")
GiB = 2**30


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--variants", nargs="+", default=["swa", "mag", "mal", "mac"], choices=VARIANTS)
  ap.add_argument("--preset", default="170m")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--seq", type=int, default=4096)
  ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
  ap.add_argument(
    "--target",
    nargs="+",
    default=["tpu:v5e"],
    help="cpu (this backend) and/or tpu:TOPOLOGY (one chip of v5e, v5p, v4...)",
  )
  ap.add_argument(
    "--set",
    nargs="*",
    default=[],
    metavar="FIELD=VALUE",
    help="config overrides, as model_bench (memory.FIELD for MemoryConfig)",
  )
  ap.add_argument(
    "--parts", action="store_true", help="also: the memory layer alone, and memory remat off"
  )
  ap.add_argument(
    "--saved_only",
    action="store_true",
    help="only the saved-for-backward split (traces, compiles nothing)",
  )
  ap.add_argument("--out", default=None, help="JSON output")
  return ap.parse_args(argv)


# ------------------------------------------------------------------ compile targets ---


def _tpu_device(name: str):
  """One compile-only TPU chip of the named generation (libtpu; no TPU needed)."""
  from titans_jax.training import aot

  gen = name.split(":", 1)[1] if ":" in name else "v5e"
  return aot.target_devices("v5e:1x1" if gen == "v5e" else f"{gen}:1x1x1")[0]


@contextlib.contextmanager
def _trace_as(platform: str):
  """Trace model code as if on `platform` (the attention picks its kernel by the
  default backend: splash on TPU)."""
  import jax

  if platform == "cpu":
    yield
    return
  saved = jax.default_backend
  jax.default_backend = lambda: platform
  try:
    yield
  finally:
    jax.default_backend = saved


def _compile(fn, args, device, donate=()):
  """AOT-compile fn(*args) for `device` (None: this backend). Returns the compiled."""
  import jax
  from jax.sharding import SingleDeviceSharding

  if device is None:
    from titans_jax.runtime.steps import compiler_options

    jitted = jax.jit(fn, donate_argnums=donate, compiler_options=compiler_options())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    return jitted.trace(*abstract).lower().compile()
  sh = SingleDeviceSharding(device)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), args)
  with _trace_as(device.platform):
    traced = jax.jit(fn, donate_argnums=donate).trace(*abstract)
  return traced.lower(lowering_platforms=(device.platform,)).compile()


def _analysis(compiled) -> dict:
  from titans_jax.runtime import steps as ts

  mem = ts.compiled_memory(compiled)
  out = {k: mem[f"{k}_size_in_bytes"] for k in ("argument", "output", "alias", "temp")}
  out["peak"] = mem["compiled_peak_bytes"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out["flops"] = float(cost.get("flops", 0.0))
  out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  return out


# ----------------------------------------------------------------------- programs ---


def _train_step_program(cfg, batch, seq):
  """(fn, abstract args, donate, loss_fn) of the project's train step."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from titans_jax.config import TrainConfig
  from titans_jax.models import Titans
  from titans_jax.runtime import optimizer as opt_lib
  from titans_jax.runtime import steps as ts

  tcfg = TrainConfig(steps=10, batch_size=batch, warmup_steps=1)
  tx, schedule = opt_lib.make_optimizer(tcfg), opt_lib.lr_schedule(tcfg)

  def new_model():
    return Titans(cfg, rngs=nnx.Rngs(0))

  graphdef = nnx.graphdef(nnx.eval_shape(new_model))
  state = jax.eval_shape(lambda: ts.create_train_state(new_model(), tx)[1])
  data = {
    "inputs": jax.ShapeDtypeStruct((batch, seq), jnp.int32),
    "targets": jax.ShapeDtypeStruct((batch, seq), jnp.int32),
    "weights": jax.ShapeDtypeStruct((batch, seq), jnp.float32),
  }
  fn = functools.partial(ts.train_step, graphdef=graphdef, tx=tx, schedule=schedule, accum_steps=1)

  def loss_fn(params, rest, batch_):
    s, w, _ = ts._forward_sums(graphdef, params, rest, batch_)
    return s / w

  return fn, (state, data), (0,), (loss_fn, (state.params, state.rest, data))


def _memory_layer_program(cfg, batch, seq):
  """f+b of one memory layer alone (the model's MemoryConfig, input B×T×D)."""
  import jax
  import jax.numpy as jnp

  from titans_jax import memory

  mcfg = cfg.memory_config
  params = jax.eval_shape(lambda: memory.init(jax.random.key(0), mcfg))
  x = jax.ShapeDtypeStruct((batch, seq, mcfg.dim), jnp.dtype(mcfg.dtype))

  def loss(p, x_):
    y, _ = memory.apply(p, x_, mcfg)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  return jax.grad(loss, argnums=(0, 1)), (params, x), (), (loss, (params, x))


CARRIED = "scan-carry"


def _sub_jaxpr(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(key)
    if j is not None:
      return getattr(j, "jaxpr", j)
  return None


def _producer_scope(jaxpr, var, prefix: str = "") -> str:
  """The full name stack of the op that computes `var`, looking through scan / jit /
  checkpoint bodies (whose ops carry name stacks relative to their call)."""
  from jax._src import core

  for eqn in jaxpr.eqns:
    if any(v is var for v in eqn.outvars):
      break
  else:
    return prefix
  scope = f"{prefix}/{eqn.source_info.name_stack}"
  sub = _sub_jaxpr(eqn)
  if sub is None or len(sub.outvars) != len(eqn.outvars):
    return scope
  inner = sub.outvars[next(i for i, v in enumerate(eqn.outvars) if v is var)]
  if isinstance(inner, core.Literal):
    return scope
  for i, v in enumerate(sub.invars):
    if v is inner:
      if eqn.primitive.name == "scan":  # a carry stacked over the iterations
        return f"{scope}/{CARRIED}"
      if len(sub.invars) == len(eqn.invars):  # an input passed through
        return _producer_scope(jaxpr, eqn.invars[i], prefix)
  return _producer_scope(sub, inner, scope)


def saved_residual_bytes(loss_fn, args) -> dict:
  """Bytes the forward of `loss_fn` keeps for its backward (the residuals of its vjp),
  by the scope of the op that computes them: the memory's block scan (`memory_block`
  ops, and the scan's carries stacked over its blocks), the rest of the memory
  (`memory`), everything else."""
  import math

  import jax
  from jax._src import core

  closed, out_shape = jax.make_jaxpr(lambda *a: jax.vjp(loss_fn, *a), return_shape=True)(*args)
  jaxpr = closed.jaxpr
  num_res = len(jax.tree.leaves(out_shape[1]))
  out = {"memory_block": 0, "memory": 0, "other": 0}
  seen = set()
  for var in jaxpr.outvars[len(jaxpr.outvars) - num_res :]:
    if isinstance(var, core.Literal) or id(var) in seen or any(var is v for v in jaxpr.invars):
      continue  # literals, duplicates and the inputs themselves cost nothing extra
    seen.add(id(var))
    nbytes = math.prod(var.aval.shape) * var.aval.dtype.itemsize
    scope = _producer_scope(jaxpr, var)
    in_memory = "memory" in scope
    key = (
      "memory_block"
      if "memory_block" in scope or (in_memory and CARRIED in scope)
      else "memory"
      if in_memory
      else "other"
    )
    out[key] += nbytes
  return out


def measure(cfg, batch, seq, target, program, saved_only=False):
  fn, args, donate, (loss_fn, loss_args) = program(cfg, batch, seq)
  device = None if target == "cpu" else _tpu_device(target)
  row = {}
  if not saved_only:
    t0 = time.perf_counter()
    compiled = _compile(fn, args, device, donate)
    row = _analysis(compiled)
    row["compile_s"] = time.perf_counter() - t0
  with _trace_as("cpu" if device is None else device.platform):
    row["saved"] = saved_residual_bytes(loss_fn, loss_args)
  return row


# ------------------------------------------------------------------------- report ---


def size(nbytes) -> str:
  return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB / 2 else f"{nbytes / 2**20:.1f} MiB"


def _ratio(row, base, key) -> str:
  return f"{row[key] / base[key]:.2f}" if base and base[key] else "—"


def markdown(rows) -> str:
  head = (
    "target",
    "variant",
    "what",
    "args",
    "temps",
    "peak",
    "temps/SWA",
    "GFLOP",
    "GB accessed",
    "bytes/SWA",
    "saved for bwd: scan / rest",
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  base = {r["target"]: r for r in rows if r["variant"] == "swa" and r["what"] == "train step"}
  for r in rows:
    if "error" in r:
      lines.append(
        f"| {r['target']} | {r['variant']} | {r['what']} | error: "
        f"{r['error'][:100]} |" + " |" * (len(head) - 4)
      )
      continue
    b = base.get(r["target"])
    ratio = functools.partial(_ratio, r, b)
    s = r["saved"]
    lines.append(
      f"| {r['target']} | {r['variant']} | {r['what']} | {size(r['argument'])} | "
      f"{size(r['temp'])} | {size(r['peak'])} | {ratio('temp')} | "
      f"{r['flops'] / 1e9:,.1f} | {r['bytes_accessed'] / 1e9:,.2f} | {ratio('bytes_accessed')} | "
      f"{size(s['memory_block'])} / {size(s['memory'] + s['other'])} |"
    )
  return "\n".join(lines)


def run(args):
  import jax

  from benchmarks import timing

  overrides = list(args.set)
  rows = []
  print(
    f"# jax {jax.__version__}; preset {args.preset}, B={args.batch} T={args.seq} "
    f"{args.dtype}; overrides {overrides or 'none'}",
    flush=True,
  )
  for target in args.target:
    for v in args.variants:
      cfg = timing.model_config(args.preset, v, args.dtype, overrides)
      jobs = [("train step", cfg, _train_step_program)]
      if args.parts and v != "swa":
        jobs.append(("memory layer f+b", cfg, _memory_layer_program))
        jobs.append(
          (
            "train step, memory remat off",
            cfg.replace(memory=cfg.memory_config.replace(remat=False)),
            _train_step_program,
          )
        )
      for what, c, program in jobs:
        try:
          row = measure(c, args.batch, args.seq, target, program, args.saved_only)
        except Exception as e:  # noqa: BLE001 - record and go on
          row = {"error": f"{type(e).__name__}: {e}"[:500]}
        row.update(target=target, variant=v, what=what)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
          with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
  if not args.saved_only:
    print(markdown(rows))
  return rows


if __name__ == "__main__":
  run(parse_args())
