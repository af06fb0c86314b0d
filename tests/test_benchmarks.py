"""Smoke runs of benchmarks/model_bench.py and benchmarks/seq_sweep.py on the tiny
preset (one layer, short sequences, one timed step): valid JSON with the fields the
GPU suite reads, the SWA ratio, and the plot; and of benchmarks/memory_profile.py on a
small memory layer; and benchmarks/memory_in_context.py's ablation."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_model_bench_smoke(tmp_path, capsys):
  out = tmp_path / "mb.json"
  _load("model_bench").main(
    [
      "--variants",
      "lmm",
      "--preset",
      "tiny",
      "--batch",
      "1",
      "--seq",
      "16",
      "--steps",
      "2",
      "--dtype",
      "fp32",
      "--set",
      "num_layers=1",
      "--profile",
      "1",
      "--out",
      str(out),
    ]
  )
  res = json.loads(out.read_text())
  rows = {r["variant"]: r for r in res["rows"]}
  # --profile: every executed op lands in a named scope group of its model's code.
  lmm_groups, swa_groups = rows["lmm"]["profile"]["ms"], rows["swa"]["profile"]["ms"]
  assert lmm_groups["memory_block, matmul"] > 0 and lmm_groups["ffn, matmul"] > 0
  assert not any(k.startswith("attention") for k in lmm_groups)
  assert sum(v for k, v in swa_groups.items() if k.startswith("attention")) > 0
  assert not any(k.startswith("memory") for k in swa_groups)
  for r in rows.values():
    p = r["profile"]
    assert p["ops_per_step"] > 0 and p["wall_ms"] > 0
    assert sum(p["share"].values()) == pytest.approx(1.0)
  assert set(rows) == {"lmm", "swa"}  # the SWA baseline is added
  for r in rows.values():
    assert "error" not in r, r.get("error")
    assert r["tokens_per_s"] > 0 and len(r["step_s_all"]) == 2
    assert r["flops_per_step"] > 0 and r["memory"]["compiled_peak_bytes"] > 0
    assert r["mfu"] is None  # CPU, no --peak_flops
  assert rows["swa"]["vs_swa"] == pytest.approx(1.0)
  assert rows["lmm"]["vs_swa"] == pytest.approx(
    rows["lmm"]["tokens_per_s"] / rows["swa"]["tokens_per_s"]
  )
  assert res["device"]["backend"] == "cpu" and len(res["device"]["loadavg"]) == 3
  assert "| lmm | 1×16 |" in capsys.readouterr().out


@pytest.mark.slow
def test_memory_in_context_ablates_only_the_memory():
  """The ablated step has no memory scan left (a cached trace of the real step would
  time the same program twice) and the real one has; both run."""
  bench = _load("memory_in_context")
  cfg = bench.timing.model_config("tiny", "mag", "fp32", ["num_layers=1"])
  run_real, real = bench.train_step_program(cfg, 1, 16, ablate_memory=False)
  run_ablated, ablated = bench.train_step_program(cfg, 1, 16, ablate_memory=True)
  assert "memory_block" in real.as_text() and "memory_block" not in ablated.as_text()
  run_real()
  run_ablated()


@pytest.mark.slow
def test_seq_sweep_smoke_with_plot(tmp_path):
  out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
  _load("seq_sweep").main(
    [
      "--variants",
      "swa",
      "--preset",
      "tiny",
      "--seqs",
      "16",
      "32",
      "--steps",
      "1",
      "--warmup",
      "0",
      "--set",
      "num_layers=1",
      "--peak_flops",
      "1e12",
      "--out",
      str(out),
      "--plot",
      str(png),
    ]
  )
  res = json.loads(out.read_text())
  assert [(r["variant"], r["seq"]) for r in res["rows"]] == [("swa", 16), ("swa", 32)]
  assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in res["rows"])
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_memory_profile_groups_every_op_of_both_libraries():
  """benchmarks/memory_profile.py on a small layer: the per-op times of the f+b are found
  in the trace, fall into the four groups, and the titans-pytorch split is filled in."""
  mod = _load("memory_profile")
  res = mod.profile(8, 256, batch=1, dim=32, heads=2, dim_head=16, steps=1, top=5)
  assert res["op_ms"] > 0 and res["wall_ms"] > 0 and res["ops_per_step"] > 0
  assert set(res["share"]) <= {
    f"{c}, {k}" for c in ("memory", "memory_block", "other", "unnamed") for k in ("matmul", "other")
  }
  # 4 scan blocks: most of the time is in the block step, and the ops XLA strips of
  # their source names are placed by where they sit (the loop body), not lost.
  assert res["ms"]["memory_block, matmul"] > res["ms"]["memory, matmul"] > 0
  assert res["share"].get("unnamed, matmul", 0) + res["share"].get("unnamed, other", 0) < 0.1
  assert abs(sum(res["share"].values()) - 1.0) < 1e-9
  assert len(res["top_ops"]) == 5
  t = mod.profile_torch(8, 64, batch=1, dim=32, heads=2, dim_head=16, steps=1)
  assert t["ms"]["matmul"] > 0 and t["ms"]["other"] > 0


def test_profile_component_reads_the_most_specific_library_scope():
  from titans_jax.perf.profile import component

  assert (
    component("jit(train_step)/jvp()/while/body/memory/while/body/memory_block/mul")
    == "memory_block"
  )
  assert component("jit(step)/transpose(jvp(memory))/dot_general") == "memory"
  assert component("jit(step)/while/body/attention/exp") == "attention"
  assert component("jit(step)/ffn/dot_general") == "ffn"
  assert component("jit(step)/memory_norm/add") == "other"  # whole scope names only
  assert component("") == "other"


def test_model_config_memory_overrides():
  from titans_jax.config import ConfigError

  timing = _load("timing")

  cfg = timing.model_config(
    "tiny", "mag", "fp32", ["num_layers=1", "memory.commit_every=64", "memory.impl=primal"]
  )
  assert cfg.num_layers == 1
  assert cfg.memory_config.commit_every == 64 and cfg.memory_config.impl == "primal"
  preset = timing.TitansConfig.preset("tiny", variant="mag")
  assert cfg.memory_config.chunk_size == preset.memory_chunk  # the rest of the preset kept
  # An override equal to the preset's value is still an override: at the paper scales
  # a changed depth re-solves the SwiGLU width unless ffn_hidden is named.
  solved = timing.TitansConfig.preset("170m", variant="mag").ffn_hidden
  one_layer = timing.model_config("170m", "mag", "fp32", ["num_layers=1", f"ffn_hidden={solved}"])
  assert (one_layer.num_layers, one_layer.ffn_hidden) == (1, solved)
  assert timing.model_config("170m", "mag", "fp32", ["num_layers=1"]).ffn_hidden != solved
  with pytest.raises(ConfigError, match="not a multiple"):
    timing.model_config("tiny", "mag", "fp32", ["memory.commit_every=6"])
  with pytest.raises(ConfigError, match="key=value"):
    timing.model_config("tiny", "mag", "fp32", ["num_layers"])


def test_tpu_fit_render_rows_for_compiled_refused_and_missing_cells():
  """benchmarks/tpu_fit.py --render: a compiled cell's figures; a cell the TPU compiler
  refused for lack of HBM (new record, or an old record holding only its message) as
  "NO" by how much; anything else as its error; missing cells listed."""
  import sys

  sys.path.insert(0, str(ROOT))
  tpu_fit = _load("tpu_fit")
  from titans_jax.perf import hlo_cost

  G = 2**30
  ok = {
    "state_bytes": 0.5 * G,
    "other_bytes": 3 * G,
    "total_bytes": 3.5 * G,
    "hbm_bytes_capacity": 16 * G,
    "fits": True,
    "flops": 7.5e12,
    "hbm_bytes": 91e9,
    "bound_s": 0.111,
    "compute_s": 0.038,
    "memory_s": 0.111,
    "mfu_bound": 0.19,
    "shares": {"memory scan": [0.0, 0.0], "attention": [0.09, 0.04]},
    "byte_count": hlo_cost.BYTE_COUNT,
  }
  old_count = {**ok, "byte_count": hlo_cost.BYTE_COUNT - 1}
  results = {
    ("v5e-8", "170m", "swa", 4096): ok,
    ("v5p-8", "170m", "swa", 4096): old_count,
    ("v5e-8", "170m", "mag", 4096): {
      "temp_need_bytes": 19.69 * G,
      "hbm_available_bytes": 15.75 * G,
    },
    ("v5e-8", "170m", "mal", 4096): {
      "error": "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the "
      "total memory required for HLO temporaries (22.60G) exceeds available HBM (15.75G)."
    },
    ("v5e-8", "170m", "lmm", 4096): {"error": "compile timed out after 900 s"},
  }
  table = tpu_fit.render(results)
  row = {
    line.split("|")[4].strip(): line
    for line in table.splitlines()
    if line.startswith("| v5e-8") and "| 170m | 4K |" in line
  }
  assert "| 3.50 / 16.00 | yes | 7.50 | 91 | 111 | HBM | 19% |" in row["swa"]
  assert "NO (compiler: temporaries alone over by 3.94)" in row["mag"]
  assert "NO (compiler: temporaries alone over by 6.85)" in row["mal"]
  assert "compile timed out" in row["lmm"]
  # bytes from an older byte count are marked, and counted under the table
  v5p = next(
    line for line in table.splitlines() if line.startswith("| v5p-8 (fsdp=4) | 170m | 4K | swa")
  )
  assert "| 91† | 111† | HBM† | 19%† |" in v5p and "† 1 cells' bytes" in table
  assert "†" not in row["swa"]
  assert "mac" not in row
  assert "2 of 120 cells compiled, 2 refused by the compiler for lack of HBM, 1 failed" in table
  assert "v5e-8/170m/4K/mac" in table
