"""The ad-hoc MQAR probe behind RESULTS §5's MAL/MAC runs (kept as run, 2026-12-01).

One run of `benchmarks.recall` at the CPU size with overrides, written to NAME.json here:

  python benchmarks/results/recall_cpu_mal_probe/probe.py NAME VARIANT SPEC [SEED]

SPEC is JSON: {"size": {RecallSize fields}, "model": {TitansConfig fields},
"memory": {MemoryConfig fields}, "patch": a name in patches.py}. Without a patch a run
is the same computation as `benchmarks/recall.py --size cpu --tasks mqar` with those
overrides (runs are deterministic: seed 0 reproduced the suite's curve to the digit).
"""

import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, ".")
from benchmarks import recall as R  # noqa: E402

name, variant, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
size = dataclasses.replace(R.SIZES["cpu"], **spec.get("size", {}))
if spec.get("patch"):
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import patches  # noqa: E402

  patches.apply(spec["patch"])
  R.layer_diagnostics = lambda *a, **k: []  # the stats assume the unpatched block
trained = R.train_mqar(
  size, variant, seed, model_overrides=spec.get("model"), log=print, **spec.get("memory", {})
)
score = R.score_mqar(trained, size)
out = {
  "name": name,
  "variant": variant,
  "spec": spec,
  "seed": seed,
  "score": score,
  "curve": trained.curve,
  "diag": R.layer_diagnostics(trained, size),
  "wall": trained.wall_s,
  "diverged": trained.diverged,
}
path = pathlib.Path(__file__).with_name(f"{name}.json")
path.write_text(json.dumps(out, indent=1, default=float))
print("RESULT", name, "beyond", score["beyond_window"])
