"""Where the memory layer's forward+backward time goes: a per-op CPU/GPU profile.

Runs the jitted f+b of `memory.apply` (the memory_bench config) under `jax.profiler`
(`titans_jax.perf.profile`) and sums the time of each compiled op into groups, chiefly:

  * "memory, matmul" (outside the scan): the q/k/v/lr/gate/output projections and their
    backward (work titans-pytorch does in the same amount);
  * "memory, other": norms, activations, layout copies, buffer initialisation;
  * "memory_block, matmul" (inside the scan, one commit block per step): gradient
    factors, retrieval, block-end weights and their backward;
  * "memory_block, other": elementwise work, most of it over weight-size tensors
    (block-end weights, carried cotangents);
  * and small "other, …" (the loss) and "unnamed, …" (ops XLA left without a source
    name outside any loop, e.g. the zero-filled buffers the scan stacks carries into).

It also reports the ops executed per step and `busy` (summed op time / wall time): on a
GPU, a busy fraction well under 1 is time the device waits for the scan's kernel
launches — the case for fusing a block step into one kernel.

  python benchmarks/memory_profile.py --chunk 16 --seq 1024
  python benchmarks/memory_profile.py --chunk 64 --seq 1024 --top 25 --json out.json
  python benchmarks/memory_profile.py --chunk 64 --torch   # titans-pytorch's split too

Op times are summed over the traced steps and divided by their number; on the CPU they
include the profiler's own overhead, so compare shares, not absolute times.
"""

from __future__ import annotations

import argparse
import collections
import json

import jax
import jax.numpy as jnp

from titans_jax.perf import profile as prof_lib


def profile(
  chunk: int,
  seq: int,
  *,
  batch: int = 2,
  dim: int = 384,
  heads: int = 4,
  dim_head: int = 64,
  steps: int = 2,
  impl: str = "auto",
  top: int = 15,
) -> dict:
  """The jitted f+b of the memory_bench layer under `titans_jax.perf.profile`: groups
  "memory_block, …" (one commit block of the scan, and its backward) and "memory, …"
  (the rest of the layer: projections, gates, buffers)."""
  import torch
  from titans_pytorch import NeuralMemory

  from titans_jax import memory
  from titans_jax.interop.titans_pytorch import from_torch

  torch.manual_seed(0)
  nm = NeuralMemory(
    dim=dim,
    chunk_size=chunk,
    heads=heads,
    dim_head=dim_head,
    default_model_kwargs=dict(depth=2, expansion_factor=4.0),
  )
  cfg, params = from_torch(nm)
  cfg = cfg.replace(impl=impl)
  x = jax.random.normal(jax.random.key(0), (batch, seq, dim))
  fwd_bwd = jax.jit(
    jax.value_and_grad(lambda p, x: jnp.mean(jnp.square(memory.apply(p, x, cfg)[0])))
  )
  compiled = fwd_bwd.lower(params, x).compile()
  res = prof_lib.profile_steps(
    lambda: jax.block_until_ready(compiled(params, x)), compiled.as_text(), steps=steps, top=top
  )
  res.update(chunk=chunk, seq=seq, batch=batch, impl=impl, jax=jax.__version__)
  return res


def profile_torch(
  chunk: int,
  seq: int,
  *,
  batch: int = 2,
  dim: int = 384,
  heads: int = 4,
  dim_head: int = 64,
  steps: int = 2,
  top: int = 10,
) -> dict:
  """The same f+b of titans_pytorch.NeuralMemory under torch.profiler: self CPU time of
  each aten op, grouped into matmuls (mm/bmm/addmm/matmul/einsum kernels) and the rest."""
  import torch
  from titans_pytorch import NeuralMemory

  torch.manual_seed(0)
  nm = NeuralMemory(
    dim=dim,
    chunk_size=chunk,
    heads=heads,
    dim_head=dim_head,
    default_model_kwargs=dict(depth=2, expansion_factor=4.0),
  )
  x = torch.randn(batch, seq, dim)

  def step():
    nm.zero_grad(set_to_none=True)
    y, _ = nm(x)
    y.square().mean().backward()

  step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  groups, rows = collections.Counter(), []
  for ev in prof.key_averages():
    us = ev.self_cpu_time_total / steps
    if us <= 0:
      continue
    kind = (
      "matmul"
      if ev.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")
      else "other"
    )
    groups[kind] += us
    rows.append((us, ev.key))
  total = sum(groups.values())
  rows.sort(reverse=True)
  return {
    "total_op_ms": total / 1e3,
    "share": {k: v / total for k, v in groups.items()},
    "ms": {k: v / 1e3 for k, v in groups.items()},
    "top_ops": [{"ms": us / 1e3, "op": k} for us, k in rows[:top]],
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--chunk", type=int, default=16)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--impl", default="auto", choices=["auto", "dual", "primal"])
  ap.add_argument("--top", type=int, default=15)
  ap.add_argument(
    "--torch",
    action="store_true",
    help="also profile titans_pytorch.NeuralMemory's f+b (CPU, torch.profiler)",
  )
  ap.add_argument("--json", help="also write the result here")
  args = ap.parse_args()
  res = profile(
    args.chunk, args.seq, batch=args.batch, steps=args.steps, impl=args.impl, top=args.top
  )
  print(
    f"memory layer f+b, chunk {res['chunk']}, T {res['seq']}, B {res['batch']}, impl {res['impl']}"
  )
  print(prof_lib.format_profile(res))
  if args.torch:
    res["torch"] = profile_torch(args.chunk, args.seq, batch=args.batch, steps=args.steps)
    t = res["torch"]
    print(f"titans-pytorch f+b: {t['total_op_ms']:.1f} ms of ops (self time) per step")
    for k in sorted(t["share"]):
      print(f"  {k:18s} {t['ms'][k]:8.1f} ms  {100 * t['share'][k]:5.1f} %")
    for r in t["top_ops"]:
      print(f"  {r['ms']:7.2f} ms  {r['op']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
