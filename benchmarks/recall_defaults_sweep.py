"""Seeded sweep behind the paper preset's inner-loop defaults (docs/memory.md §6,
benchmarks/RESULTS.md §5): lmm and mag on the tiny MQAR (recall.SIZES["tiny"], d = 32)
under four settings of max_lr and the initial θ/α biases; one JSON line per
(setting, variant, seed) on stdout.

  python benchmarks/recall_defaults_sweep.py A,B,C,D lmm,mag 0,1
  python benchmarks/recall_defaults_sweep.py mild_retain_decay_b-3,max8 lmm 0   # one-seed variations
  python benchmarks/recall_defaults_sweep.py probe     # does θ diverge at init? (below)
  python benchmarks/recall_defaults_sweep.py model_check  # B and C in a whole model, d=64 chunk 16
  python benchmarks/recall_defaults_sweep.py summary DIR  # DIR/*.jsonl -> DIR/summary.json + table

  A old:  max_lr 1, no init biases (θ, α gates random-init)   — before commit 9c49a8f
  B new:  max_lr d/16, θ bias 0, α bias −6                   — MemoryConfig.paper now
  C:      max_lr d/4,  θ bias 0, α bias −6
  D:      max_lr d/4,  θ bias 0, α gate random-init
"""

import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import recall as R

SIZE = R.SIZES["tiny"]
D_HEAD = SIZE.dim // SIZE.memory_heads
SETTINGS = {
  "A": {"max_lr": 1.0, "init_lr_bias": None, "init_decay_bias": None},
  "B": {},
  "C": {"max_lr": D_HEAD / 4, "init_lr_bias": 0.0, "init_decay_bias": -6.0},
  "D": {"max_lr": D_HEAD / 4, "init_lr_bias": 0.0, "init_decay_bias": None},
  # the earlier one-seed variations (lmm, seed 0; docs/memory.md §6), each over the preset
  "no_retain_bias": {"init_decay_bias": None},
  "theta_small_max1_b3": {"max_lr": 1.0, "init_lr_bias": 3.0},
  "sum_loss_equiv_max32": {"max_lr": 32.0},
  "max8": {"max_lr": 8.0},
  "mild_retain_decay_b-3": {"init_decay_bias": -3.0},
}

# (head width d, chunk, max_lr) for the memorisation probe: B and C at the paper's
# shapes, plus points between them. θ = max_lr / 2 at init (θ bias 0), α bias −6.
PROBE_SHAPES = [(d, c, d / div) for d in (64, 128) for c in (8, 16) for div in (16, 4)] + [
  (32, 4, 2.0),
  (32, 4, 8.0),
  (32, 4, 16.0),
  (64, 16, 8.0),
  (64, 8, 16.0),
  (128, 16, 16.0),
]


def probe(seeds=(0, 1)):
  """Memorisation probe (recall.memorisation, 256 random tokens, no outer training) of the
  paper preset at each PROBE_SHAPES entry: NaN means the inner loop diverges at init."""
  from titans_jax.memory import MemoryConfig

  for d, c, max_lr in PROBE_SHAPES:
    for seed in seeds:
      cfg = MemoryConfig.paper(d, heads=1, chunk_size=c, pre_norm=False, max_lr=max_lr)
      m = R.memorisation(cfg, 256, seed=seed)
      print(
        json.dumps(
          {
            "d": d,
            "chunk": c,
            "max_lr": max_lr,
            "seed": seed,
            **{k: round(v, 4) for k, v in m.items()},
          }
        ),
        flush=True,
      )


def model_check(steps=3):
  """B and C at the preset's default chunk (16) and d = 64 in a whole model (lmm, mag;
  one layer, MQAR 8 pairs in 256 tokens): is the training loss finite from step 1?"""
  base = dataclasses.replace(
    SIZE,
    dim=64,
    heads=2,
    memory_chunk=16,
    mqar_len=256,
    mqar_pairs=8,
    mqar_queries=16,
    mqar_vocab=64,
  )
  for name, mem in (("B", {}), ("C", {"max_lr": 64 / 4})):
    for variant in ("lmm", "mag"):
      sz = dataclasses.replace(base, memory=mem, mqar_steps=steps)
      tr = R.train_mqar(sz, variant, 0, log_every=1)
      print(
        json.dumps(
          {
            "setting": name,
            "variant": variant,
            "d": 64,
            "chunk": 16,
            "len": sz.mqar_len,
            "overrides": mem,
            "diverged": tr.diverged,
            "loss": [c["loss"] for c in tr.curve],
          }
        ),
        flush=True,
      )


def summary(out_dir):
  """Beyond-window accuracy per (setting, variant): per seed, mean and sample std."""
  import statistics

  out_dir = pathlib.Path(out_dir)
  runs = [
    json.loads(line)
    for f in sorted(out_dir.glob("*.jsonl"))
    for line in f.open()
    if '"beyond_window"' in line
  ]
  table = {}
  for r in runs:
    table.setdefault(f"{r['setting']} {r['variant']}", {})[r["seed"]] = r["beyond_window"]
  rows = {}
  for key, by_seed in sorted(table.items()):
    vals = [by_seed[s] for s in sorted(by_seed)]
    rows[key] = {
      "by_seed": {str(s): by_seed[s] for s in sorted(by_seed)},
      "mean": statistics.mean(vals),
      "std": statistics.stdev(vals) if len(vals) > 1 else None,
      "diverged": any(r["diverged"] for r in runs if f"{r['setting']} {r['variant']}" == key),
    }
    print(
      f"| {key} | "
      + " | ".join(f"{100 * v:.1f}" for v in vals)
      + f" | {100 * rows[key]['mean']:.1f} ± {100 * (rows[key]['std'] or 0):.1f} |"
    )
  (out_dir / "summary.json").write_text(
    json.dumps(
      {
        "settings": SETTINGS,
        "metric": "held-out MQAR accuracy on values whose key is "
        "beyond the attention window (recall.score_mqar beyond_window)",
        "rows": rows,
      },
      indent=1,
    )
  )


if __name__ == "__main__" and sys.argv[1] == "probe":
  probe()
elif __name__ == "__main__" and sys.argv[1] == "model_check":
  model_check()
elif __name__ == "__main__" and sys.argv[1] == "summary":
  summary(sys.argv[2])
elif __name__ == "__main__":
  names = sys.argv[1].split(",")
  variants = sys.argv[2].split(",")
  seeds = [int(s) for s in sys.argv[3].split(",")]
  for name in names:
    for variant in variants:
      for seed in seeds:
        sz = dataclasses.replace(SIZE, memory=SETTINGS[name])
        t = time.time()
        tr = R.train_mqar(sz, variant, seed, log_every=20)
        sc = R.score_mqar(tr, sz)
        print(
          json.dumps(
            {
              "setting": name,
              "variant": variant,
              "seed": seed,
              "overrides": SETTINGS[name],
              "beyond_window": sc["beyond_window"],
              "accuracy": sc["accuracy"],
              "diverged": tr.diverged,
              "final_loss": tr.curve[-1]["loss"],
              "curve": [(c["step"], round(c["loss"], 3)) for c in tr.curve],
              "wall_s": round(time.time() - t),
            }
          ),
          flush=True,
        )
