"""End to end: a tiny MAG model trains on generated passkey data; loss falls, checkpoints
appear, a resumed run retraces the uninterrupted loss trajectory to 1e-6, SIGTERM saves,
eval.py reads the checkpoint, and bad input stops without touching checkpoints.

The runs share one compiled train step (cached per graphdef / train config), so the
module costs about one compilation plus ~100 tiny steps.
"""

import dataclasses
import json
import os
import pathlib
import signal
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # train.py, eval.py
import eval as eval_cli  # noqa: E402
import train as train_cli  # noqa: E402
from titans_jax import config as config_lib
from titans_jax.data.text import DataError
from titans_jax.runtime import checkpointing
from titans_jax.training import loop, sharded

pytestmark = pytest.mark.slow  # end-to-end / multi-device: excluded from `-m "not slow"`

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 24


def _cfg(**train_overrides):
  cfg = config_lib.load_config(ROOT / "configs" / "tiny.py")
  cfg = config_lib.apply_overrides(
    cfg,
    [
      f"train.steps={STEPS}",
      "train.checkpoint_every=8",
      "train.log_every=4",
      "train.warmup_steps=3",
      "train.lr=0.01",
      "train.async_checkpoint=true",
    ],
  )
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_overrides))


def _snapshot(workdir: pathlib.Path) -> dict:
  """Every file under the checkpoints (and config.json) with its size and mtime."""
  out = {}
  for p in sorted(workdir.rglob("*")):
    if p.is_file() and ("checkpoints" in p.parts or p.name == "config.json"):
      st = p.stat()
      out[str(p.relative_to(workdir))] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  lines = []
  result = loop.train(_cfg(), workdir, log=lines.append)
  return workdir, result, lines


def test_loss_falls_checkpoints_and_metrics(base_run):
  workdir, result, lines = base_run
  assert result.status == "done" and result.final_step == STEPS
  assert sorted(result.losses) == list(range(1, STEPS + 1))
  losses = np.array([result.losses[s] for s in range(1, STEPS + 1)])
  assert np.all(np.isfinite(losses))
  assert losses[-4:].mean() < losses[:4].mean() - 1.0, losses  # clearly falls
  assert checkpointing.existing_steps(workdir) == [16, 24]  # keep_checkpoints=2
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("train/bits_per_byte" in r for r in rows)
  assert any("eval/loss" in r for r in rows)
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  final = json.loads((workdir / "eval_final.json").read_text())
  assert final["step"] == STEPS and np.isfinite(final["bits_per_byte"])
  assert any("tok/s" in l and "ETA" in l and "bits/byte" in l for l in lines)


def test_resume_equals_uninterrupted(base_run, tmp_path):
  _, full, _ = base_run
  first = loop.train(_cfg(), tmp_path, stop_after_step=10, log=lambda s: None)
  assert first.status == "stopped" and first.final_step == 10
  assert 10 in checkpointing.existing_steps(tmp_path)
  second = loop.train(_cfg(), tmp_path, log=lambda s: None)
  assert second.start_step == 10 and second.final_step == STEPS
  resumed = {**first.losses, **second.losses}
  assert sorted(resumed) == list(range(1, STEPS + 1))
  np.testing.assert_allclose(
    [resumed[s] for s in range(1, STEPS + 1)],
    [full.losses[s] for s in range(1, STEPS + 1)],
    rtol=0,
    atol=1e-6,
  )
  np.testing.assert_allclose(second.eval["loss"], full.eval["loss"], rtol=0, atol=1e-6)


def test_sigterm_saves_before_exit(tmp_path):
  sent = []

  def log(line):
    if line.startswith("step") and not sent:
      sent.append(line)
      os.kill(os.getpid(), signal.SIGTERM)

  handler_before = signal.getsignal(signal.SIGTERM)
  result = loop.train(_cfg(), tmp_path, log=log)
  assert sent and result.status == "preempted"
  assert result.final_step < STEPS
  assert checkpointing.existing_steps(tmp_path)[-1] == result.final_step
  assert signal.getsignal(signal.SIGTERM) == handler_before  # our handler is uninstalled
  # and the preempted run resumes to the end
  rest = loop.train(_cfg(), tmp_path, log=lambda s: None)
  assert rest.start_step == result.final_step and rest.final_step == STEPS


def test_eval_reads_the_checkpoint(base_run, capsys):
  workdir, result, _ = base_run
  rc = eval_cli.main(
    [
      "--workdir",
      str(workdir),
      "--set",
      "eval.niah_lengths=128",
      "--eval.niah_depths=0,1",
      "--eval.niah_samples=2",
      "--eval.sample_tokens=4",
    ]
  )
  assert rc == 0, capsys.readouterr().err
  out = workdir / "eval" / f"step_{STEPS}"
  metrics = json.loads((out / "metrics.json").read_text())
  # same params, same held-out batches -> the loss the training run reported
  np.testing.assert_allclose(metrics["heldout"]["loss"], result.eval["loss"], atol=1e-5)
  grid = json.loads((out / "niah_passkey.json").read_text())
  assert grid["lengths"] == [128] and grid["depths"] == [0.0, 1.0]
  assert all(0.0 <= a <= 1.0 for row in grid["accuracy"] for a in row)
  assert (out / "niah_passkey.png").stat().st_size > 1000
  assert "| depth" in (out / "niah_passkey.md").read_text()
  assert (out / "samples.txt").read_text().startswith("The pass")
  # --config with the same model is accepted; a different model is refused
  rc = eval_cli.main(
    [
      "--config",
      str(ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(workdir),
      "--skip",
      "niah,samples,ppl",
    ]
  )
  assert rc == 0
  rc = eval_cli.main(
    [
      "--config",
      str(ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(workdir),
      "--model.dim=48",
      "--skip",
      "niah,samples",
    ]
  )
  assert rc == 2 and "model.dim" in capsys.readouterr().err


def test_bad_input_never_touches_checkpoints(base_run, tmp_path, capsys):
  workdir, _, _ = base_run
  before = _snapshot(workdir)
  assert before

  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"model\.dim: checkpoint=32"):
    loop.train(config_lib.apply_overrides(_cfg(), ["model.dim=48"]), workdir)

  missing = tmp_path / "no_such_corpus"
  with pytest.raises(DataError, match="does not exist: .*no_such_corpus"):
    loop.train(
      config_lib.apply_overrides(
        _cfg(), ["data.kind=text", f"data.paths={missing}", "data.seq_len=128"]
      ),
      workdir,
    )

  empty = tmp_path / "empty_text"
  empty.mkdir()
  with pytest.raises(DataError, match="no non-empty files.*empty_text"):
    loop.train(
      config_lib.apply_overrides(_cfg(), ["data.kind=text", f"data.paths={empty}"]), workdir
    )

  with pytest.raises(SystemExit) as e:
    train_cli.main(
      [
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        "--set",
        "train.stepz=3",
      ]
    )
  assert e.value.code == 2
  assert "unknown config key 'train.stepz'" in capsys.readouterr().err

  rc = train_cli.main(
    [
      "--config",
      str(ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(workdir),
      "--model.num_layers=3",
    ]
  )
  assert rc == 2 and "model.num_layers" in capsys.readouterr().err

  assert _snapshot(workdir) == before


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  first = loop.train(_cfg(), tmp_path, stop_after_step=8, log=lambda s: None)
  assert first.final_step == 8
  before = _snapshot(tmp_path)
  # Step 9 goes non-finite through its batch (NaN loss weights), not through a changed
  # train config (lr=inf), so the run reuses the module's compiled step instead of
  # compiling another; the step-level guard against an overflowing lr with finite
  # gradients is tested in test_train_step.py.
  put_batch = sharded.ShardedSetup.put_batch

  def poisoned(self, batch):
    return put_batch(self, {**batch, "weights": np.full_like(batch["weights"], np.nan)})

  monkeypatch.setattr(sharded.ShardedSetup, "put_batch", poisoned)
  with pytest.raises(
    loop.TrainingDivergedError,
    match=r"non-finite .* step 9.*checkpoints/8 \(step 8\) gives a finite loss and is intact",
  ):
    loop.train(_cfg(), tmp_path, log=lambda s: None)
  monkeypatch.undo()
  assert checkpointing.existing_steps(tmp_path) == [8]
  assert {k: v for k, v in _snapshot(tmp_path).items() if k.startswith("checkpoints")} == {
    k: v for k, v in before.items() if k.startswith("checkpoints")
  }


def test_dry_run_compiles_without_training(tmp_path, capsys):
  rc = train_cli.main(
    [
      "--config",
      str(ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(tmp_path / "never"),
      "--dry_run",
      f"--train.steps={STEPS}",
      "--train.checkpoint_every=8",
      "--train.log_every=4",
      "--train.warmup_steps=3",
      "--train.lr=0.01",
      "--mesh.data=2",
      "--mesh.fsdp=2",
      "--mesh.tensor=-1",
      "--model.num_layers=1",
    ]
  )  # one layer: a smaller compile, same checks
  out = capsys.readouterr().out
  assert rc == 0 and "params:" in out
  # compiled for the configured (2, 2, 2) mesh, sizes per device
  assert "mesh_fsdp: 2" in out and "mesh_tensor: 2" in out
  assert "state_per_device_bytes:" in out and "peak_estimate_bytes:" in out
  assert not (tmp_path / "never").exists()
