"""Two real processes on localhost (jax.distributed + gloo, 4 fake CPU devices each)
train the tiny model (at one layer) for a few steps on the global (8, 1, 1) mesh: each
reads only its rows of every batch, their losses equal the single-process 8-device run,
and the checkpoint both processes wrote restores in this single process, equal to the
one the single-process run wrote."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from titans_jax import config as config_lib
from titans_jax.runtime import checkpointing
from titans_jax.training import loop, sharded

pytestmark = pytest.mark.slow  # end-to-end / multi-device: excluded from `-m "not slow"`

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
OVERRIDES = [
  f"train.steps={STEPS}",
  f"train.checkpoint_every={STEPS}",
  "train.log_every=1",
  "train.warmup_steps=1",
  "train.lr=0.01",
  "train.async_checkpoint=false",
  "train.eval_batches=1",
  "eval.batch_size=4",
  "mesh.data=-1",
  "model.num_layers=1",
  # The paper preset's default inner step (θ = max_lr/2 = 1 at init, docs/memory.md §6)
  # amplifies the float32 reduction-order differences between 2×4 and 1×8 devices to
  # 3.7e-5 on the memory's retrieval gate after 3 steps (measured 2026-11-30; losses
  # still agree to 1e-5). This test checks the distributed plumbing, not the inner
  # loop's conditioning, so it keeps the earlier, gentler inner step, where the two
  # runs agree to 1e-5 in every parameter.
  "model.memory.max_lr=1.0",
  "model.memory.init_decay_bias=None",
  "model.memory.init_lr_bias=None",
]  # one layer: smaller compiles (3 processes each compile)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  port = _free_port()
  workdir = tmp_path / "two"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(ROOT / "tests" / "multihost_worker.py"),
        str(port),
        str(i),
        str(workdir),
        str(tmp_path / f"out{i}.json"),
        *OVERRIDES,
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append(out)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
  assert [r["local_devices"] for r in results] == [4, 4]
  assert results[0]["log_lines"] > 0 and results[1]["log_lines"] == 0  # logs: process 0

  cfg = config_lib.apply_overrides(config_lib.load_config(ROOT / "configs" / "tiny.py"), OVERRIDES)
  single = loop.train(cfg, tmp_path / "one", log=lambda s: None)
  want = [single.losses[s] for s in range(1, STEPS + 1)]
  for r in results:
    got = [r["losses"][str(s)] for s in range(1, STEPS + 1)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

  su = sharded.setup_for(cfg, donate=False)
  restored = []
  for wd in (workdir, tmp_path / "one"):
    assert checkpointing.existing_steps(wd) == [STEPS]
    ck = checkpointing.Checkpointer(wd, create=False, async_save=False)
    restored.append(ck.restore(STEPS, su.abstract))
    ck.close()
  assert int(restored[0].step) == STEPS
  paths_a = jax.tree_util.tree_leaves_with_path(restored[0])
  for (path, a), b in zip(paths_a, jax.tree.leaves(restored[1])):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )
