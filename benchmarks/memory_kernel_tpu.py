"""The memory's Pallas scan kernel (`impl="pallas"`) against the XLA path and SWA, in one
run: each variant's real train step compiled ahead of time for a TPU (libtpu, no TPU
needed), per device: temporaries, peak, FLOPs and HBM bytes (compiled program, loops
counted, the kernels' FLOPs from their traced chunk step and their bytes as the custom
call's operands + outputs: W and S stay on chip), the roofline bound on step time, and
each figure as a ratio to SWA's.

  python benchmarks/memory_kernel_tpu.py            # 170m, 4K, batch 1, one v5e chip
  python benchmarks/memory_kernel_tpu.py --every auto 8   # the kernel's segment lengths
  python benchmarks/memory_kernel_tpu.py --preset 340m --target v5p:1x1x1 --batch 4

Writes --out (JSON: rows, device, date, commit, command) and prints the markdown table
of benchmarks/RESULTS.md §6. Needs the tpu extra (libtpu).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: `benchmarks.tpu_fit` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import tpu_fit  # noqa: E402

GIB = 2.0**30


def _config(preset, variant, seq, batch, impl, every):
  cfg = tpu_fit.cell_config(preset, variant, seq, batch)
  if variant == "swa":
    return cfg
  memory = cfg.model.memory_config.replace(impl=impl, scan_remat_every=every)
  return dataclasses.replace(cfg, model=cfg.model.replace(memory=memory))


def measure(preset, variant, seq, batch, target, impl="auto", every=None) -> dict:
  """One compiled train step's sizes (one row of the table)."""
  from titans_jax.training import aot

  t = time.time()
  row = dict(
    variant=variant,
    impl="xla" if variant == "swa" or impl == "auto" else impl,
    scan_remat_every=every,
  )
  try:
    size = aot.size_train_step(_config(preset, variant, seq, batch, impl, every), target)
  except Exception as e:  # noqa: BLE001 - a row that does not compile is a result too
    return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
  return dict(
    **row,
    temp_bytes=size.temp_bytes,
    total_bytes=size.total_bytes,
    flops=size.flops,
    kernel_flops=size.kernel_flops,
    hbm_bytes=size.hbm_bytes,
    bound_s=size.bound_s,
    mfu_bound=size.mfu_bound,
    mosaic_calls=size.mosaic_calls,
    by_component=size.by_component,
    chip=size.chip.name,
    compile_s=time.time() - t,
  )


def render(rows: list[dict]) -> str:
  swa = next(r for r in rows if r["variant"] == "swa")
  head = (
    "| variant | memory scan | temporaries | × SWA | FLOPs | × SWA | HBM bytes | × SWA "
    "| bound step time | roofline MFU |\n|---|---|---|---|---|---|---|---|---|---|"
  )
  lines = [head]
  for r in rows:
    scan = "—" if r["variant"] == "swa" else r["impl"]
    if r["impl"] == "pallas":
      every = r["scan_remat_every"]
      scan += f", segments ≤ {every} chunks" if every else ", segments auto"
    if "error" in r:
      lines.append(f"| {r['variant']} | {scan} | did not compile: {r['error'][:120]} |" + " |" * 7)
      continue
    lines.append(
      f"| {r['variant']} | {scan} | {r['temp_bytes'] / GIB:.2f} GiB "
      f"| {r['temp_bytes'] / swa['temp_bytes']:.2f} | {r['flops'] / 1e12:.2f} T "
      f"| {r['flops'] / swa['flops']:.2f} | {r['hbm_bytes'] / 1e9:.1f} G "
      f"| {r['hbm_bytes'] / swa['hbm_bytes']:.2f} | {r['bound_s'] * 1e3:.0f} ms "
      f"| {r['mfu_bound']:.0%} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="170m")
  ap.add_argument("--seq", type=int, default=4096)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--target", default="v5e:1x1", help="a TPU topology (one chip: v5e:1x1)")
  ap.add_argument("--variants", nargs="+", default=["mag", "mal", "mac"])
  ap.add_argument(
    "--every",
    nargs="+",
    type=lambda s: None if s == "auto" else int(s),
    default=[None],
    help="the kernel's scan_remat_every values (auto: None, the kernel picks)",
  )
  ap.add_argument("--out", default=None, help="JSON (default: benchmarks/results/…)")
  args = ap.parse_args(argv)
  rows = [measure(args.preset, "swa", args.seq, args.batch, args.target)]
  for v in args.variants:
    rows.append(measure(args.preset, v, args.seq, args.batch, args.target))
    for n in args.every:
      rows.append(measure(args.preset, v, args.seq, args.batch, args.target, "pallas", n))
    print(render(rows), flush=True)
  out = pathlib.Path(
    args.out
    or tpu_fit.ROOT
    / "benchmarks/results"
    / f"memory_kernel_tpu_{args.preset}_{args.seq}_{args.target.replace(':', '-')}_b{args.batch}.json"
  )
  record = dict(
    rows=rows,
    target=args.target,
    preset=args.preset,
    seq=args.seq,
    batch=args.batch,
    device="compiled ahead of time for TPU on the 2-core development CPU (libtpu)",
    command="python benchmarks/memory_kernel_tpu.py "
    + " ".join(sys.argv[1:] if argv is None else argv),
    **tpu_fit.provenance(),
  )
  out.write_text(json.dumps(record, indent=1) + "\n")
  print(render(rows))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
