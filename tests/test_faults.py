"""Faults and bad input (issue 17): a NaN stop leaves a checkpoint that resumes, a damaged
newest checkpoint is reported in one line and left byte-identical, filesystem errors
are one-line `error:`s with exit 2 and no half-written step, and wrong input (2-D token
files, out-of-range prompt ids, a non-dividing mesh, replayed metrics rows) is caught.

One training config for the whole module (one compilation): a 1-layer tiny MAG at
train.lr=10 with a long warmup and train.checkpoint_every=1 diverges after a few
steps; every test copies that run's workdir (shutil.copytree) before changing it.
The tests on that run are marked slow: its compilation is most of this module's time
(80 s of 100 s on the shared 2-core development CPU at load average 24).
"""

import errno
import hashlib
import json
import math
import pathlib
import re
import shutil
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # train.py, eval.py
import eval as eval_cli  # noqa: E402
import train as train_cli  # noqa: E402
from titans_jax import config as config_lib  # noqa: E402
from titans_jax.data import tokens  # noqa: E402
from titans_jax.data.text import DataError  # noqa: E402
from titans_jax.evaluation import run as eval_run  # noqa: E402
from titans_jax.runtime import checkpointing  # noqa: E402
from titans_jax.runtime.metrics import MetricsWriter  # noqa: E402
from titans_jax.training import loop, sharded

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# lr=10 reached over 120 warmup steps: finite for a few steps, then the weights blow up.
OVERRIDES = [
  "model.num_layers=1",
  # lr 10 drives the memory's inner loop to diverge; without the paper preset's surprise
  # clip that gives the non-finite loss these tests need (with it the loss stays finite)
  "model.memory.max_surprise_norm=none",
  "train.steps=1000",
  "train.lr=10",
  "train.warmup_steps=120",
  "train.checkpoint_every=1",
  "train.keep_checkpoints=3",
  "train.log_every=1",
  "train.async_checkpoint=false",
  "train.eval_every=0",
]
GOOD = re.compile(r"newest checkpoint (\S+/checkpoints/(\d+)) \(step (\d+)\)")


def _cfg():
  return config_lib.apply_overrides(config_lib.load_config(TINY), OVERRIDES)


def _cli(workdir, *extra):
  args = ["--config", TINY, "--workdir", str(workdir)]
  for o in OVERRIDES:
    args += ["--set", o]
  return train_cli.main(args + list(extra))


def _tree(root: pathlib.Path) -> dict:
  """Every file under `root` with the hash of its bytes (directories as entries too)."""
  return {
    str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
    for p in sorted(root.rglob("*"))
  }


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """(workdir, message, log lines) of the lr=10 run that stopped on a non-finite loss."""
  workdir = tmp_path_factory.mktemp("diverged")
  lines = []
  with pytest.raises(loop.TrainingDivergedError) as e:
    loop.train(_cfg(), workdir, log=lines.append)
  return workdir, str(e.value), lines


def _copy(diverged, tmp_path) -> pathlib.Path:
  dst = tmp_path / "run"
  shutil.copytree(diverged[0], dst)
  return dst


@pytest.mark.slow
def test_nan_stop_names_a_checkpoint_that_resumes_and_trains_on(diverged, tmp_path):
  workdir, message, _ = diverged
  m = GOOD.search(message)
  assert m, message
  good = int(m.group(3))
  assert good >= 2 and int(m.group(2)) == good
  # the newest checkpoint on disk is the one named
  assert checkpointing.existing_steps(workdir)[-1] == good
  run = _copy(diverged, tmp_path)
  lines = []
  with pytest.raises(loop.TrainingDivergedError):
    loop.train(_cfg(), run, log=lines.append)
  assert any(l.startswith("resumed from") and l.endswith(f"(step {good})") for l in lines)
  # step good+1 runs from the named checkpoint's weights: its loss is finite (logged)
  step_line = [l for l in lines if l.startswith(f"step {good + 1:>6d}/")]
  assert step_line, lines
  loss = float(re.search(r"loss (\S+)", step_line[0]).group(1))
  assert math.isfinite(loss)
  # the replayed steps' metrics rows replace the first run's: one row per (step, key)
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], k) for r in rows for k in r if k != "step"]
  assert len(keys) == len(set(keys))
  assert max(r["step"] for r in rows) == good + 1


@pytest.mark.slow
def test_eval_of_a_non_finite_result_exits_nonzero_with_strict_json(
  diverged, tmp_path, monkeypatch, capsys
):
  run = _copy(diverged, tmp_path)
  nan = float("nan")
  monkeypatch.setattr(
    eval_run.perplexity,
    "evaluate_batches",
    lambda *a, **k: {
      "loss": nan,
      "perplexity": nan,
      "bits_per_byte": nan,
      "accuracy": 0.0,
      "tokens": 8.0,
    },
  )
  rc = eval_cli.main(["--workdir", str(run), "--skip", "niah,samples"])
  err = capsys.readouterr().err
  assert rc == 3 and "non-finite held-out loss" in err, err
  step = checkpointing.existing_steps(run)[-1]
  text = (run / "eval" / f"step_{step}" / "metrics.json").read_text()

  def no_constants(c):
    raise ValueError(f"non-standard JSON constant {c}")

  metrics = json.loads(text, parse_constant=no_constants)
  assert metrics["heldout"]["loss"] is None


def _truncate(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _largest(d: pathlib.Path) -> pathlib.Path:
  return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
  "truncated state data file": (lambda s: _truncate(_largest(s / "state" / "d")), "cannot be read"),
  "truncated data-iterator file": (
    lambda s: _truncate(s / "data" / "process_0-of-1.json"),
    "cannot be read",
  ),
  "missing _METADATA": (lambda s: (s / "state" / "_METADATA").unlink(), "missing state/_METADATA"),
  "missing state/": (lambda s: shutil.rmtree(s / "state"), "missing state/"),
  "missing config/metadata": (
    lambda s: (s / "config" / "metadata").unlink(),
    "missing config/metadata",
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_one_line_and_untouched(diverged, tmp_path, capsys, damage):
  run = _copy(diverged, tmp_path)
  steps = checkpointing.existing_steps(run)
  newest, previous = steps[-1], steps[-2]
  step_dir = run / "checkpoints" / str(newest)
  harm, what = DAMAGE[damage]
  harm(step_dir)
  before = _tree(run)
  if damage == "missing state/":
    ck = checkpointing.Checkpointer(run, create=False, async_save=False)
    assert ck.latest_step() == previous  # never chosen as the latest
    ck.close()
  rc = _cli(run)
  err = capsys.readouterr().err
  assert rc == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith(f"error: checkpoint {step_dir} is damaged")
  assert what in lines[0] and f"rm -r {step_dir}" in lines[0]
  assert f"resume from step {previous}" in lines[0] and "--skip_damaged" in lines[0]
  assert _tree(run) == before  # every file byte-identical, nothing added or removed


@pytest.mark.slow
def test_skip_damaged_resumes_from_the_previous_and_sets_it_aside(diverged, tmp_path, capsys):
  run = _copy(diverged, tmp_path)
  steps = checkpointing.existing_steps(run)
  newest, previous = steps[-1], steps[-2]
  (run / "checkpoints" / str(newest) / "state" / "_METADATA").unlink()
  damaged = _tree(run / "checkpoints" / str(newest))
  rc = _cli(run, "--skip_damaged")
  out = capsys.readouterr().out
  assert rc == 3  # it trains on from `previous` and diverges again, later
  assert f"resumed from {run / 'checkpoints' / str(previous)} (step {previous})" in out
  moved = run / "checkpoints_set_aside" / str(newest)
  assert f"moved to {moved}" in out
  assert _tree(moved) == damaged  # set aside byte for byte, never deleted
  assert newest in checkpointing.existing_steps(run)  # rewritten by the resumed run


@pytest.mark.slow
def test_resume_from_step_sets_later_checkpoints_aside(diverged, tmp_path, capsys):
  run = _copy(diverged, tmp_path)
  steps = checkpointing.existing_steps(run)
  rc = _cli(run, "--resume_from_step", str(steps[0]))
  out = capsys.readouterr().out
  assert rc == 3 and f"(step {steps[0]})" in out
  assert sorted(int(p.name) for p in (run / "checkpoints_set_aside").iterdir()) == steps[1:]
  rc = _cli(run, "--resume_from_step", "999")
  assert rc == 2 and "--resume_from_step 999: no checkpoint" in capsys.readouterr().err


def test_workdir_that_is_a_file(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("x")
  rc = _cli(f)
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1, err
  assert f"{f} is a file, not a directory" in err
  assert f.read_text() == "x"


def test_read_only_workdir(tmp_path, capsys, monkeypatch):
  ro = tmp_path / "ro"
  ro.mkdir()
  # root ignores permission bits, so the read-only filesystem is simulated at os.access
  real = checkpointing.os.access
  monkeypatch.setattr(
    checkpointing.os, "access", lambda p, mode: False if pathlib.Path(p) == ro else real(p, mode)
  )
  monkeypatch.setattr(checkpointing, "_is_read_only", lambda p: True)
  rc = _cli(ro / "run")
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1, err
  assert f"{ro} is not writable (read-only file system)" in err
  assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_disk_full_during_save(diverged, tmp_path, capsys, monkeypatch):
  run = _copy(diverged, tmp_path)
  steps = checkpointing.existing_steps(run)
  before = {s: _tree(run / "checkpoints" / str(s)) for s in steps[:1]}

  async def full_disk(self, x, directory):
    path = directory / self._filename
    path.write_text(json.dumps(x)[:10])  # a partial write, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
  # resume from the oldest: its next save (step steps[0] + 1) hits the full disk
  rc = _cli(run, "--resume_from_step", str(steps[0]))
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1, err
  failed = steps[0] + 1
  assert f"cannot write checkpoint {run / 'checkpoints' / str(failed)}" in err
  assert "No space left on device" in err
  left = sorted(p.name for p in (run / "checkpoints").iterdir())
  assert left == [str(steps[0])], left  # no half-written step directory
  assert {s: _tree(run / "checkpoints" / str(s)) for s in steps[:1]} == before


def test_two_dimensional_token_file_is_refused(tmp_path):
  p = tmp_path / "tok.npy"
  np.save(p, np.arange(64, dtype=np.uint16).reshape(8, 8))
  with pytest.raises(DataError, match=rf"{re.escape(str(p))} holds a 2-D array .* must be 1-D"):
    tokens.load_flat(p)


def test_generate_validates_prompt_ids():
  from flax import nnx

  from titans_jax.models import Titans
  from titans_jax.models.generate import generate

  cfg = _cfg().model
  model = nnx.eval_shape(lambda: Titans(cfg, rngs=nnx.Rngs(0)))  # no compute needed
  v = cfg.vocab_size
  with pytest.raises(ValueError, match=rf"span \[1, {v}\], outside \[0, vocab_size={v}\)"):
    generate(model, np.array([[1, v]]), 2)
  with pytest.raises(ValueError, match=r"span \[-5, 1\]"):
    generate(model, np.array([[-5, 1]]), 2)
  with pytest.raises(ValueError, match="must be integers, got dtype float"):
    generate(model, np.array([[1.0, 2.5]]), 2)


def test_non_dividing_mesh_dimensions_are_reported_once(tmp_path):
  import jax

  if jax.device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of conftest.py")
  cfg = config_lib.apply_overrides(
    _cfg(), ["mesh.data=2", "mesh.fsdp=1", "mesh.tensor=4", "train.batch_size=3"]
  )
  su = sharded.setup_for(cfg)  # abstract state only: nothing is compiled here
  notice = su.replication_notice((3, cfg.data.seq_len))
  assert notice.startswith("mesh: ") and "\n" not in notice
  # 2 attention heads cannot split over tensor=4: replicated, with its cost in MiB
  assert re.search(
    r"heads=2 does not divide mesh tensor=4: [\d.]+ MiB of train state is "
    r"replicated along tensor instead of split \(\+[\d.]+ MiB per device",
    notice,
  )
  assert "train.batch_size=3 does not divide mesh data=2: the batch is replicated" in notice
  assert sharded.setup_for(_cfg()).replication_notice((8, 128)) is None  # data=8 divides 8


def test_metrics_rows_of_replayed_steps_are_replaced(tmp_path):
  rows = [{"step": s, "train/loss": float(s)} for s in range(1, 7)]
  (tmp_path / "metrics.jsonl").write_text(
    "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "tra'
  )  # torn by a kill
  w = MetricsWriter(tmp_path, resume_step=4)
  w.write(5, {"loss": 0.5})
  w.close()
  got = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
  assert got[-1]["train/loss"] == 0.5
