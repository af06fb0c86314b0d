"""S-NIAH passkey check of the paper preset's inner-loop defaults (docs/memory.md §6):
MAG at the CPU size of benchmarks/recall.py (width 32, 2 layers, window 8 — shorter than
the 39-byte question, so the needle is always beyond it), trained at 128 bytes under one
setting of benchmarks/recall_defaults_sweep.SETTINGS; one JSON line on stdout.

  python benchmarks/recall_defaults_niah.py B 0 200
"""

import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import recall as R
from benchmarks.recall_defaults_sweep import SETTINGS

if __name__ == "__main__":
  name, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  sz = dataclasses.replace(
    R.SIZES["cpu"],
    memory=SETTINGS[name],
    niah_steps=steps,
    niah_scales=(1, 2),
    niah_depths=(0.0, 0.5, 1.0),
    niah_samples=8,
  )
  t = time.time()
  tr = R.train_variant(
    R.model_config(sz, "mag", 256),
    R.train_config(sz, steps, seed),
    lambda s, b: R.niah_batch(sz, "passkey", seed, s, b),
    log_every=20,
    log=lambda m: print(m, file=sys.stderr, flush=True),
  )
  sc = R.score_niah(tr, sz, "passkey")
  print(
    json.dumps(
      {
        "setting": name,
        "variant": "mag",
        "task": "passkey",
        "seed": seed,
        "steps": steps,
        "overrides": SETTINGS[name],
        "score": sc,
        "diverged": tr.diverged,
        "curve": [(c["step"], round(c["loss"], 3), round(c["accuracy"], 3)) for c in tr.curve],
        "wall_s": round(time.time() - t),
      },
      default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o),
    ),
    flush=True,
  )
