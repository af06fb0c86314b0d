"""Learning-task evidence for the paper preset's defaults (docs/memory.md §6,
benchmarks/RESULTS.md §5): lmm on the tiny MQAR (recall.SIZES["tiny"]) with the memory's
inner-loop knobs overridden; one JSON line per (case, seed) on stdout.

  python benchmarks/recall_defaults.py new_defaults,old_defaults,max8 0,1
"""

import dataclasses
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from benchmarks import recall as R

size = R.SIZES["tiny"]
CASES = {
  "new_defaults": {},
  "old_defaults": dict(max_lr=1.0, init_lr_bias=None, init_decay_bias=None),
  "no_retain_bias": dict(init_decay_bias=None),
  "theta_small_max1_b3": dict(max_lr=1.0, init_lr_bias=3.0),
  "sum_loss_equiv_max32": dict(max_lr=32.0),
  "max8": dict(max_lr=8.0),
  "mild_retain_decay_b-3": dict(init_decay_bias=-3.0),
}
names = sys.argv[1].split(",")
seeds = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0]
for name in names:
  for seed in seeds:
    sz = dataclasses.replace(size, memory=CASES[name])
    t = time.time()
    tr = R.train_mqar(sz, "lmm", seed, log_every=20)
    sc = R.score_mqar(tr, sz)
    print(
      json.dumps(
        {
          "case": name,
          "seed": seed,
          "overrides": CASES[name],
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
