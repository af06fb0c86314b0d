"""Fit and roofline of the train step on TPU slices, compiled ahead of time on any host.

For every (chip, preset, variant, context) cell, one subprocess (with a timeout, so one
slow compile cannot stall the grid) compiles the real train step for the TPU topology
(`titans_jax.training.aot.size_train_step`) and appends one JSON line to --out; cells
already in --out are skipped, so re-running continues an interrupted grid. `--render`
prints the markdown table of docs/tpu.md from --out.

  python benchmarks/tpu_fit.py                       # the docs/tpu.md grid (hours on 2 cores)
  python benchmarks/tpu_fit.py --render              # the table from what finished
  python benchmarks/tpu_fit.py --chips v5p-8 --presets 340m 760m   # a part of the grid

Mesh: fsdp over all chips of the slice (ZeRO-3: parameters and optimizer state are
sharded over every chip, batch rows too), one sequence per chip (global batch = chips).
Needs the tpu extra (libtpu).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's titans_jax, also from benchmarks/
CHIPS = {"v5e-8": "v5e:2x4", "v5p-8": "v5p:2x2x1", "v4-8": "v4:2x2x1"}
PRESETS = ("170m", "340m", "400m", "760m")
VARIANTS = ("mac", "mag", "mal", "lmm", "swa")
CONTEXTS = (4096, 16384)


def cell_config(preset: str, variant: str, seq: int, chips: int):
  from titans_jax.config import Config, DataConfig, TrainConfig
  from titans_jax.models import TitansConfig
  from titans_jax.sharding import MeshConfig

  model = TitansConfig.preset(preset, variant=variant)
  return Config(
    name=f"{preset}-{variant}",
    model=model,
    data=DataConfig(kind="niah", niah_task="passkey", seq_len=seq),
    train=TrainConfig(steps=1, batch_size=chips, warmup_steps=0),
    mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
  )


def provenance() -> dict:
  """When and at which commit a cell was compiled (cells of one grid may span commits)."""
  commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
  ).stdout.strip()
  return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit or "unknown"}


def run_cell(chip: str, preset: str, variant: str, seq: int) -> dict:
  """Compile one cell in this process; the JSON record of docs/tpu.md."""
  from titans_jax.perf import hlo_cost
  from titans_jax.training import aot

  target = CHIPS[chip]
  n = len(aot.target_devices(target))
  cell = dict(chip=chip, target=target, preset=preset, variant=variant, seq=seq, batch=n)
  t = time.time()
  try:
    size = aot.size_train_step(cell_config(preset, variant, seq, n), target)
  except aot.DoesNotFit as e:  # the compiler gave up: only its need and the chip's HBM
    return {
      **cell,
      "fits": False,
      "temp_need_bytes": e.need,
      "hbm_available_bytes": e.have,
      "compile_s": time.time() - t,
      **provenance(),
    }
  if os.environ.get("TPU_FIT_HLO_DIR"):  # keep the program for re-analysis
    d = pathlib.Path(os.environ["TPU_FIT_HLO_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{chip}_{preset}_{variant}_{seq}.hlo.txt").write_text(size.hlo_text)
  return {
    **cell,
    "mesh": size.mesh,
    "state_bytes": size.state_bytes,
    "other_bytes": size.other_bytes,
    "total_bytes": size.total_bytes,
    "hbm_bytes_capacity": size.chip.hbm_bytes,
    "fits": size.fits,
    "flops": size.flops,
    "kernel_flops": size.kernel_flops,
    "model_flops": size.model_flops,
    "hbm_bytes": size.hbm_bytes,
    "compute_s": size.compute_s,
    "memory_s": size.memory_s,
    "bound_s": size.bound_s,
    "mfu_bound": size.mfu_bound,
    "mosaic_calls": size.mosaic_calls,
    "shares": aot.component_shares(size),
    "byte_count": hlo_cost.BYTE_COUNT,
    "compile_s": time.time() - t,
    **provenance(),
  }


def splash_blocks(preset: str, variant: str, seq: int) -> dict:
  """The splash masks' visible blocks of a cell's model ((Qp, Cp) -> blocks), as
  `titans_jax.layers.attention` registers them while tracing."""
  from titans_jax.layers.attention import _GroupedCausalMaskSpec as Spec

  m = cell_config(preset, variant, seq, 1).model
  up = lambda n: -(-n // 128) * 128
  P = m.num_persistent
  if variant == "mac":
    S = min(m.segment_len, seq)
    specs = [Spec(S, P, 2, S, S), Spec(S, P, 1, S, S)]
  elif variant == "lmm":
    specs = []
  else:
    specs = [Spec(seq, P, 1, seq, m.window)]
  return {
    (up(sp[0]), up(sp[1] + sp[2] * sp[3])): sp.visible_blocks(up(sp[0]), up(sp[1] + sp[2] * sp[3]))
    for sp in specs
  }


def reanalyse(record: dict, hlo_text: str) -> dict:
  """Recompute a record's compiled FLOPs / bytes / shares from its saved HLO (after a
  change to titans_jax.perf.hlo_cost), keeping the memory figures."""
  from titans_jax.layers import attention
  from titans_jax.perf import hlo_cost
  from titans_jax.training import aot

  attention.SPLASH_VISIBLE_BLOCKS.update(
    splash_blocks(record["preset"], record["variant"], record["seq"])
  )
  cost = hlo_cost.analyse(hlo_text, aot._kernel_flops)
  chip = next(
    c
    for c in aot.CHIPS.values()
    if c.hbm_bytes == record["hbm_bytes_capacity"] and c.name == record["chip"].split("-")[0]
  )
  size = aot.StepSize(
    step="train step",
    target=record["target"],
    chip=chip,
    mesh=record["mesh"],
    shape="",
    state_bytes=record["state_bytes"],
    state_parts={},
    argument_bytes=0,
    output_bytes=0,
    alias_bytes=0,
    temp_bytes=0,
    flops=cost["flops"],
    kernel_flops=cost["kernel_flops"],
    hbm_bytes=cost["bytes"],
    model_flops=record["model_flops"],
    by_component=cost["by_component"],
    mosaic_calls=record["mosaic_calls"],
  )
  return {
    **record,
    "flops": size.flops,
    "kernel_flops": size.kernel_flops,
    "hbm_bytes": size.hbm_bytes,
    "compute_s": size.compute_s,
    "memory_s": size.memory_s,
    "bound_s": size.bound_s,
    "mfu_bound": size.mfu_bound,
    "shares": aot.component_shares(size),
    "byte_count": hlo_cost.BYTE_COUNT,
  }


def cells():
  # Cheapest first, so that a time-limited run fills whole rows of small models.
  for seq in CONTEXTS:
    for preset in PRESETS:
      for chip in CHIPS:
        for variant in VARIANTS:
          yield chip, preset, variant, seq


def _key(r) -> tuple:
  return (r["chip"], r["preset"], r["variant"], r["seq"])


def load(path: pathlib.Path) -> dict:
  out = {}
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        out[_key(r)] = r
  return out


def _compiler_oom(record: dict):
  """(needed, available) bytes when the TPU compiler refused the cell for lack of HBM
  (records before aot.DoesNotFit kept only the compiler's message)."""
  from titans_jax.training import aot

  if "temp_need_bytes" in record:
    return record["temp_need_bytes"], record["hbm_available_bytes"]
  return aot.parse_hbm_oom(record.get("error", ""))


def render(results: dict) -> str:
  head = (
    "| chip (mesh) | preset | ctx | variant | state GiB | act+temp GiB | total / HBM "
    "| fits | TFLOPs/step | GB/step | bound ms | limit | MFU ≤ | FLOPs: scan / attn / rest "
    "| bytes: scan / attn / rest |"
  )
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  from titans_jax.perf import hlo_cost

  missing, refused, failed, compiled, stale = [], 0, 0, 0, 0
  for chip, preset, variant, seq in cells():
    r = results.get((chip, preset, variant, seq))
    mesh = "fsdp=" + str({"v5e-8": 8}.get(chip, 4))
    if r is None:
      missing.append(f"{chip}/{preset}/{seq // 1024}K/{variant}")
      continue
    oom = _compiler_oom(r)
    if oom:
      refused += 1
      need, have = oom
      lines.append(
        f"| {chip} ({mesh}) | {preset} | {seq // 1024}K | {variant} | | > {need / 2**30:.2f} "
        f"(temporaries) | > {have / 2**30:.2f} | NO (compiler: temporaries alone over by "
        f"{(need - have) / 2**30:.2f}) |" + " |" * 7
      )
      continue
    if "error" in r:
      failed += 1
      lines.append(
        f"| {chip} ({mesh}) | {preset} | {seq // 1024}K | {variant} | "
        f"{r['error'][:60]} |" + " |" * 10
      )
      continue
    compiled += 1
    # records whose bytes came from an older count (perf/hlo_cost.BYTE_COUNT) are marked
    dag = "" if r.get("byte_count", 1) >= hlo_cost.BYTE_COUNT else "†"
    stale += bool(dag)
    sh = r["shares"]
    scan = sh["memory scan"]
    attn = sh["attention"]
    rest = [1 - scan[i] - attn[i] for i in range(2)]
    gib = lambda x: f"{x / 2**30:.2f}"
    lines.append(
      f"| {chip} ({mesh}) | {preset} | {seq // 1024}K | {variant} | {gib(r['state_bytes'])} | "
      f"{gib(r['other_bytes'])} | {gib(r['total_bytes'])} / {gib(r['hbm_bytes_capacity'])} | "
      f"{'yes' if r['fits'] else 'NO'} | {r['flops'] / 1e12:.2f} | {r['hbm_bytes'] / 1e9:.0f}{dag} | "
      f"{r['bound_s'] * 1e3:.0f}{dag} | {'compute' if r['compute_s'] >= r['memory_s'] else 'HBM'}{dag} | "
      f"{100 * r['mfu_bound']:.0f}%{dag} | {100 * scan[0]:.0f} / {100 * attn[0]:.0f} / "
      f"{100 * rest[0]:.0f}% | {100 * scan[1]:.0f} / {100 * attn[1]:.0f} / {100 * rest[1]:.0f}%{dag} |"
    )
  lines.append(
    f"\n{compiled} of {len(list(cells()))} cells compiled, {refused} refused by the compiler "
    f"for lack of HBM, {failed} failed or timed out; not yet run: "
    + (", ".join(missing) if missing else "none")
    + "."
    + (
      f" † {stale} cells' bytes (and the bound, limit and MFU from them) come from an older "
      "byte count (perf/hlo_cost.BYTE_COUNT), which charged the TPU compiler's prefetches "
      "more than once: too high; recompile them to update."
      if stale
      else ""
    )
  )
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tpu_fit.jsonl"))
  ap.add_argument("--timeout", type=int, default=900, help="seconds per compile")
  ap.add_argument("--render", action="store_true", help="print the table and exit")
  ap.add_argument("--variants", nargs="+", choices=VARIANTS, help="only these variants")
  ap.add_argument("--chips", nargs="+", choices=tuple(CHIPS), help="only these chips")
  ap.add_argument("--presets", nargs="+", choices=PRESETS, help="only these presets")
  ap.add_argument("--contexts", nargs="+", type=int, choices=CONTEXTS, help="only these")
  ap.add_argument(
    "--retry_timeouts",
    action="store_true",
    help="compile again the cells whose record is a timeout (e.g. from a busier host)",
  )
  ap.add_argument(
    "--reanalyse",
    metavar="HLO_DIR",
    help="recompute FLOPs/bytes of --out's cells from the HLO saved there "
    "(TPU_FIT_HLO_DIR=HLO_DIR while compiling)",
  )
  ap.add_argument(
    "--cell", nargs=4, metavar=("CHIP", "PRESET", "VARIANT", "SEQ"), help=argparse.SUPPRESS
  )  # the subprocess's own job
  args = ap.parse_args(argv)
  out = pathlib.Path(args.out)
  if args.cell:
    chip, preset, variant, seq = args.cell
    print(json.dumps(run_cell(chip, preset, variant, int(seq))))
    return 0
  if args.reanalyse:
    records = load(out)
    for key, r in records.items():
      hlo = pathlib.Path(args.reanalyse) / "{}_{}_{}_{}.hlo.txt".format(*key)
      if "error" not in r and hlo.exists():
        records[key] = reanalyse(r, hlo.read_text())
    out.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    return 0
  if args.render:
    print(render(load(out)))
    return 0
  out.parent.mkdir(parents=True, exist_ok=True)
  wanted = (args.chips, args.presets, args.variants, args.contexts)
  for cell in cells():
    if any(want and value not in want for want, value in zip(wanted, cell)):
      continue
    done = load(out).get(cell)  # (re-read each time: several runners may share --out)
    if done and not (args.retry_timeouts and "timed out" in done.get("error", "")):
      continue
    cmd = [sys.executable, __file__, "--out", str(out), "--cell", *map(str, cell)]
    t = time.time()
    try:
      p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
      )
      lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
      if p.returncode == 0 and lines:
        record = json.loads(lines[-1])
      else:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1]
        record = dict(zip(("chip", "preset", "variant", "seq"), cell), error=err[:200])
    except subprocess.TimeoutExpired:
      record = dict(
        zip(("chip", "preset", "variant", "seq"), cell),
        error=f"compile timed out after {args.timeout} s",
      )
    with out.open("a") as f:
      f.write(json.dumps(record) + "\n")
    print(
      f"{cell}: {time.time() - t:.0f} s {'error: ' + record['error'] if 'error' in record else ''}",
      flush=True,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
