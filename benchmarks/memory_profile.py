"""Where the memory layer's forward+backward time goes: a per-op CPU/GPU profile.

Runs the jitted f+b of `memory.apply` (the memory_bench config) under `jax.profiler`,
reads the trace back with `jax.profiler.ProfileData` and sums the time of each compiled
op into four groups:

  * outside the scan, matmuls: the q/k/v/lr/gate/output projections and their backward
    (work titans-pytorch does in the same amount);
  * outside the scan, other: norms, activations, layout copies, buffer initialisation;
  * inside the scan (one commit block per step), matmuls: gradient factors, retrieval,
    block-end weights and their backward;
  * inside the scan, other: elementwise work, most of it over weight-size tensors
    (block-end weights, carried cotangents).

  python benchmarks/memory_profile.py --chunk 16 --seq 1024
  python benchmarks/memory_profile.py --chunk 64 --seq 1024 --top 25 --json out.json
  python benchmarks/memory_profile.py --chunk 64 --torch   # titans-pytorch's split too

Op times are summed over the traced steps and divided by their number; on the CPU they
include the profiler's own overhead, so compare shares, not absolute times.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import tempfile

import jax
import jax.numpy as jnp


def _op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (its HLO text after '=', op_name metadata)."""
    table = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]*)", hlo_text, re.M):
        meta = re.search(r'op_name="([^"]*)"', m.group(2))
        table[m.group(1)] = (m.group(2), meta.group(1) if meta else "")
    return table


def _is_matmul(name: str, text: str) -> bool:
    # XLA:CPU emits matmuls as dot / dot_general or as YNNPACK fusions around a dot.
    return name.startswith(("dot", "ynn_fusion", "cublas", "gemm")) or " dot(" in text


def profile(chunk: int, seq: int, *, batch: int = 2, dim: int = 384, heads: int = 4,
            dim_head: int = 64, steps: int = 2, impl: str = "auto", top: int = 15) -> dict:
    import torch
    from titans_pytorch import NeuralMemory

    from titans_jax import memory
    from titans_jax.interop.titans_pytorch import from_torch

    torch.manual_seed(0)
    nm = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim_head,
                      default_model_kwargs=dict(depth=2, expansion_factor=4.0))
    cfg, params = from_torch(nm)
    cfg = cfg.replace(impl=impl)
    x = jax.random.normal(jax.random.key(0), (batch, seq, dim))
    fwd_bwd = jax.jit(jax.value_and_grad(
        lambda p, x: jnp.mean(jnp.square(memory.apply(p, x, cfg)[0]))))
    jax.block_until_ready(fwd_bwd(params, x))
    ops = _op_table(fwd_bwd.lower(params, x).compile().as_text())

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                jax.block_until_ready(fwd_bwd(params, x))
        xspace = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(xspace)
        per_op = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for ev in line.events:
                    # Leaf ops only: executor and loop events enclose the ops they run.
                    if ev.name in ops and not ev.name.startswith(("while", "call", "conditional")):
                        per_op[ev.name] += ev.duration_ns / steps

    groups = collections.Counter()
    rows = []
    for name, ns in per_op.items():
        text, op_name = ops[name]
        where = "scan" if "/while/" in op_name else "outside"
        kind = "matmul" if _is_matmul(name, text) else "other"
        groups[f"{where}, {kind}"] += ns
        rows.append((ns, name, text.split(" ")[0], op_name[-80:]))
    total = sum(groups.values())
    rows.sort(reverse=True)
    return {
        "chunk": chunk, "seq": seq, "batch": batch, "impl": impl, "steps": steps,
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "total_op_ms": total / 1e6,
        "share": {k: v / total for k, v in sorted(groups.items())},
        "ms": {k: v / 1e6 for k, v in sorted(groups.items())},
        "top_ops": [{"ms": ns / 1e6, "op": n, "shape": s, "source": src}
                    for ns, n, s, src in rows[:top]],
    }


def profile_torch(chunk: int, seq: int, *, batch: int = 2, dim: int = 384, heads: int = 4,
                  dim_head: int = 64, steps: int = 2, top: int = 10) -> dict:
    """The same f+b of titans_pytorch.NeuralMemory under torch.profiler: self CPU time of
    each aten op, grouped into matmuls (mm/bmm/addmm/matmul/einsum kernels) and the rest."""
    import torch
    from titans_pytorch import NeuralMemory

    torch.manual_seed(0)
    nm = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim_head,
                      default_model_kwargs=dict(depth=2, expansion_factor=4.0))
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
        kind = "matmul" if ev.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm",
                                      "aten::addbmm") else "other"
        groups[kind] += us
        rows.append((us, ev.key))
    total = sum(groups.values())
    rows.sort(reverse=True)
    return {"total_op_ms": total / 1e3, "share": {k: v / total for k, v in groups.items()},
            "ms": {k: v / 1e3 for k, v in groups.items()},
            "top_ops": [{"ms": us / 1e3, "op": k} for us, k in rows[:top]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--impl", default="auto", choices=["auto", "dual", "primal"])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--torch", action="store_true",
                    help="also profile titans_pytorch.NeuralMemory's f+b (CPU, torch.profiler)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    res = profile(args.chunk, args.seq, batch=args.batch, steps=args.steps, impl=args.impl,
                  top=args.top)
    print(f"memory layer f+b, chunk {res['chunk']}, T {res['seq']}, B {res['batch']}, "
          f"impl {res['impl']}, {res['device']}: {res['total_op_ms']:.1f} ms of ops per step")
    for k, share in res["share"].items():
        print(f"  {k:18s} {res['ms'][k]:8.1f} ms  {100 * share:5.1f} %")
    print("top ops:")
    for r in res["top_ops"]:
        print(f"  {r['ms']:7.2f} ms  {r['op']:28s} {r['shape']:34s} {r['source']}")
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
