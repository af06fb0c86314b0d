"""Memory-layer throughput: titans_jax vs titans-pytorch, same config, same run.

For each chunk size and sequence length: build a titans_pytorch.NeuralMemory, load its
weights into titans_jax (interop.from_torch), check the outputs are equal, then time the
forward and the forward+backward (gradient of a scalar loss w.r.t. every slow parameter)
of both, and print tokens/s and the ratio.

  python benchmarks/memory_bench.py                      # the issue's grid (CPU: minutes)
  python benchmarks/memory_bench.py --seq 1024 --chunks 16 --repeats 3
  python benchmarks/memory_bench.py --impls primal dual     # both core paths, one run

Defaults: B=2, D=384, 4 heads of 64, memory MLP depth 2 × expansion 4, titans-pytorch
defaults otherwise (batch_size=None, i.e. commit_every=None).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def _best_time(fn, repeats: int) -> float:
  fn()  # warm-up (and compile)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def bench_one(
  chunk: int,
  seq: int,
  *,
  batch: int,
  dim: int,
  heads: int,
  dim_head: int,
  repeats: int,
  torch_too: bool = True,
  dense_too: bool = False,
  check_tol: float = 1e-4,
  impls=("auto",),
  chunks_per_block=None,
) -> list[dict]:
  """One row per MemoryConfig.impl in `impls`; titans-pytorch is timed once and shared."""
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
  cfg0, params = from_torch(nm)
  x_t = torch.randn(batch, seq, dim)
  x_j = jnp.asarray(x_t.numpy())
  tokens = batch * seq

  # titans-pytorch runs on the GPU when there is one (same hardware as JAX's default).
  torch_device = "cuda" if torch.cuda.is_available() else "cpu"
  nm = nm.to(torch_device)
  x_t = x_t.to(torch_device)

  y_t = None
  if torch_too:
    with torch.no_grad():
      y_t, _ = nm(x_t)
    y_t = y_t.cpu().numpy()

  rows = []
  for impl in impls:
    cfg = cfg0.replace(impl=impl, chunks_per_block=chunks_per_block)
    fwd = jax.jit(lambda p, x, cfg=cfg: memory.apply(p, x, cfg)[0])
    fwd_bwd = jax.jit(
      jax.value_and_grad(lambda p, x, cfg=cfg: jnp.mean(jnp.square(memory.apply(p, x, cfg)[0])))
    )
    row = {
      "chunk": chunk,
      "seq": seq,
      "batch": batch,
      "impl": impl,
      "chunks_per_block": chunks_per_block,
    }
    if y_t is not None:
      err = float(np.abs(np.asarray(fwd(params, x_j)) - y_t).max())
      row["max_abs_err_vs_torch"] = err
      if err > check_tol * max(1.0, float(np.abs(y_t).max())):
        raise AssertionError(f"{impl}: outputs differ from titans-pytorch: max abs err {err}")
    row["jax_fwd_tok_s"] = tokens / _best_time(
      lambda: fwd(params, x_j).block_until_ready(), repeats
    )
    row["jax_fwd_bwd_tok_s"] = tokens / _best_time(
      lambda: jax.block_until_ready(fwd_bwd(params, x_j)), repeats
    )
    if dense_too:  # the same memory with recurrence="dense" (K×K decay-matrix matmuls)
      dcfg = cfg.replace(recurrence="dense")
      dense_fb = jax.jit(
        jax.value_and_grad(lambda p, x: jnp.mean(jnp.square(memory.apply(p, x, dcfg)[0])))
      )
      row["jax_dense_fwd_bwd_tok_s"] = tokens / _best_time(
        lambda: jax.block_until_ready(dense_fb(params, x_j)), repeats
      )
    rows.append(row)

  if torch_too:

    def sync():
      if torch_device == "cuda":
        torch.cuda.synchronize()

    def torch_fwd():
      with torch.no_grad():
        nm(x_t)
      sync()

    def torch_fwd_bwd():
      nm.zero_grad(set_to_none=True)
      y, _ = nm(x_t)
      y.pow(2).mean().backward()
      sync()

    t_f = tokens / _best_time(torch_fwd, repeats)
    t_fb = tokens / _best_time(torch_fwd_bwd, repeats)
    for row in rows:
      row["torch_fwd_tok_s"], row["torch_fwd_bwd_tok_s"] = t_f, t_fb
      row["fwd_ratio"] = row["jax_fwd_tok_s"] / t_f
      row["fwd_bwd_ratio"] = row["jax_fwd_bwd_tok_s"] / t_fb
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--chunks", type=int, nargs="+", default=[16, 64])
  ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--dim", type=int, default=384)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--dim_head", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no_torch", action="store_true", help="time titans_jax only")
  ap.add_argument(
    "--dense", action="store_true", help="also time forward+backward with recurrence='dense'"
  )
  ap.add_argument(
    "--impls",
    type=str,
    nargs="+",
    default=["auto"],
    help="MemoryConfig.impl values to time (auto|dual|primal), one row each",
  )
  ap.add_argument(
    "--chunks_per_block",
    type=int,
    default=None,
    help="MemoryConfig.chunks_per_block (None: the core's automatic choice)",
  )
  ap.add_argument("--json", type=str, default=None, help="also write the rows here")
  args = ap.parse_args(argv)

  import torch

  print(
    f"# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
    f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
  )
  print(
    f"# jax {jax.__version__}, torch {torch.__version__}; B={args.batch} D={args.dim} "
    f"H={args.heads}x{args.dim_head} MLP depth 2 x4"
  )
  header = (
    "chunk",
    "seq",
    "impl",
    "jax fwd tok/s",
    "torch fwd tok/s",
    "ratio",
    "jax f+b tok/s",
    "torch f+b tok/s",
    "ratio",
    "dense f+b tok/s",
    "dense ratio",
  )
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  rows = []

  def dense_ratio(r):
    if "jax_dense_fwd_bwd_tok_s" in r and "torch_fwd_bwd_tok_s" in r:
      return f"{r['jax_dense_fwd_bwd_tok_s'] / r['torch_fwd_bwd_tok_s']:.2f}x"
    return "-"

  for chunk in args.chunks:
    for seq in args.seq:
      new_rows = bench_one(
        chunk,
        seq,
        batch=args.batch,
        dim=args.dim,
        heads=args.heads,
        dim_head=args.dim_head,
        repeats=args.repeats,
        torch_too=not args.no_torch,
        dense_too=args.dense,
        impls=args.impls,
        chunks_per_block=args.chunks_per_block,
      )
      rows.extend(new_rows)
      for r in new_rows:
        g = lambda k, fmt="{:,.0f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
        print(
          f"| {chunk} | {seq} | {r['impl']} | {g('jax_fwd_tok_s')} | "
          f"{g('torch_fwd_tok_s')} | {g('fwd_ratio', '{:.2f}x')} | "
          f"{g('jax_fwd_bwd_tok_s')} | {g('torch_fwd_bwd_tok_s')} | "
          f"{g('fwd_bwd_ratio', '{:.2f}x')} | {g('jax_dense_fwd_bwd_tok_s')} | "
          f"{dense_ratio(r)} |",
          flush=True,
        )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
