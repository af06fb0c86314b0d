"""The training loop: build, resume, step, log, evaluate, checkpoint.

`train(cfg, workdir)` is everything `python train.py` does; call it from a notebook too.

Order of operations is chosen so that bad input never touches existing checkpoints:
config validation, data loading and the checkpoint/config compatibility check all
happen before the first byte is written under `workdir`.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from titans_jax import config as config_lib
from titans_jax.data import pipeline
from titans_jax.data.text import DataError
from titans_jax.runtime import checkpointing, perplexity
from titans_jax.runtime import steps as ts
from titans_jax.runtime.metrics import LN2, MetricsWriter, Progress, fmt_duration, strict_json
from titans_jax.training import sharded


class TrainingDivergedError(RuntimeError):
  """The loss or gradient went NaN/Inf; the last good checkpoint is left intact."""


@dataclasses.dataclass
class TrainResult:
  """What a call to `train` did."""

  start_step: int
  final_step: int
  losses: dict[int, float]  # step (1-based, after the update) -> training loss
  eval: Optional[dict[str, float]]
  status: str  # "done", "stopped" (stop_after_step) or "preempted" (SIGTERM)
  wall_s: float


def compile_step(
  cfg: config_lib.Config, mesh: Optional[jax.sharding.Mesh] = None
) -> dict[str, float]:
  """AOT-compiles the train step for `cfg` on its mesh, on abstract inputs.

  No parameter is allocated and no data read: the state and batch are
  ShapeDtypeStructs carrying their shardings. Catches shape errors and, via XLA's
  memory analysis of the partitioned program, configs that do not fit, before any
  step runs. Sizes are per device, in bytes (where XLA reports them).

  Args:
    cfg: the experiment config; `cfg.mesh` gives the mesh over all devices.
    mesh: compile for this mesh instead (e.g. from an AOT topology).
  """
  config_lib.validate(cfg)
  su = sharded.setup_for(cfg, mesh)
  B, T = cfg.train.batch_size, cfg.data.seq_len
  compiled = su.step.lower(su.abstract, su.abstract_batch(B, T)).compile()
  mesh = su.mesh
  out = {
    "params": float(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(su.abstract.params))),
    "devices": float(mesh.size),
  }
  for ax in mesh.axis_names:
    out[f"mesh_{ax}"] = float(mesh.shape[ax])
  out["state_per_device_bytes"] = float(_bytes_per_device(su.abstract))
  mem = ts.compiled_memory(compiled)
  out.update({k: float(v) for k, v in mem.items() if k != "compiled_peak_bytes"})
  if "compiled_peak_bytes" in mem:  # donated state: outputs alias the arguments
    out["peak_estimate_bytes"] = float(mem["compiled_peak_bytes"])
  return out


def _bytes_per_device(abstract) -> int:
  """Bytes of one device's shards of an abstract (sharded) pytree."""
  total = 0
  for x in jax.tree.leaves(abstract):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
  return total


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (it then saves and exits cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def prepare(
  cfg: config_lib.Config,
  workdir: str | pathlib.Path,
  *,
  resume_from_step: Optional[int] = None,
  skip_damaged: bool = False,
):
  """Validates config, workdir, data and existing checkpoints without writing anything.

  Args:
    resume_from_step: resume from this checkpoint (later ones are then set aside).
    skip_damaged: pass over damaged newest checkpoints (else they stop the run).

  Returns:
    (corpus, complete checkpoint steps to try, newest first; the first one's config
    was read and matches)

  Raises:
    ConfigError / DataError / CheckpointMismatchError / CheckpointDamagedError /
    StorageError naming the problem.
  """
  config_lib.validate(cfg)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  checkpointing.check_writable(workdir)
  corpus = pipeline.load_corpus(cfg.data, cfg.model.vocab_size)
  if corpus.vocab_size > cfg.model.vocab_size:
    raise config_lib.ConfigError(
      f"data.kind={cfg.data.kind!r} needs model.vocab_size >= {corpus.vocab_size}, "
      f"got {cfg.model.vocab_size}"
    )
  dirs = checkpointing.step_dirs(workdir)
  complete = [s for s, p in dirs.items() if checkpointing.missing_part(p) is None]
  newest = lambda below: max((s for s in complete if s < below), default=None)
  if resume_from_step is not None:
    if resume_from_step not in dirs:
      raise config_lib.ConfigError(
        f"--resume_from_step {resume_from_step}: no checkpoint "
        f"{checkpointing.checkpoint_dir(workdir) / str(resume_from_step)}; complete "
        f"checkpoints: {complete or 'none'}"
      )
    what = checkpointing.missing_part(dirs[resume_from_step])
    if what is not None:
      raise checkpointing.CheckpointDamagedError(
        checkpointing.damaged_message(dirs[resume_from_step], what, newest(resume_from_step))
      )
    candidates = [resume_from_step]
  else:
    candidates = sorted(complete, reverse=True)
    top = max(dirs, default=None)
    if top is not None and top not in complete and not skip_damaged:
      raise checkpointing.CheckpointDamagedError(
        checkpointing.damaged_message(dirs[top], checkpointing.missing_part(dirs[top]), newest(top))
      )
  if not candidates:
    return corpus, []
  # Read-only manager: checking the saved config must not create or rewrite anything.
  ck = checkpointing.Checkpointer(workdir, create=False, async_save=False)
  try:
    while True:
      try:
        ck.check_compatible(cfg, candidates[0])
        break
      except checkpointing.CheckpointDamagedError:
        if not skip_damaged or resume_from_step is not None or len(candidates) == 1:
          raise
        candidates = candidates[1:]
  finally:
    ck.close()
  if candidates[0] > cfg.train.steps:
    raise config_lib.ConfigError(
      f"{checkpointing.checkpoint_dir(workdir)} already holds step {candidates[0]}, beyond "
      f"train.steps={cfg.train.steps}"
    )
  return corpus, candidates


def train(
  cfg: config_lib.Config,
  workdir: str | pathlib.Path,
  *,
  stop_after_step: Optional[int] = None,
  log: Callable[[str], None] = print,
  mesh: Optional[jax.sharding.Mesh] = None,
  resume_from_step: Optional[int] = None,
  skip_damaged: bool = False,
) -> TrainResult:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint if there is one.

  A damaged newest checkpoint stops the run with a one-line CheckpointDamagedError
  unless `skip_damaged` (resume from the newest readable one) or `resume_from_step`
  names the checkpoint to resume from; the step directories after the one resumed from
  are then moved to `<workdir>/checkpoints_set_aside/`, never deleted.

  Args:
    cfg: the experiment config.
    workdir: where checkpoints, TensorBoard events, metrics.jsonl and config.json go.
    stop_after_step: stop (with a checkpoint) after this step, as if preempted; the
      schedule still spans `cfg.train.steps`, so a later call continues identically.
    log: where progress lines go (process 0 only).
    mesh: train on this mesh instead of `cfg.mesh` over all devices.

  Raises:
    TrainingDivergedError: the loss / gradient became NaN or Inf.
    CheckpointDamagedError / StorageError: see above; one line each.
  """
  t_wall = time.time()
  workdir = pathlib.Path(workdir).expanduser().absolute()
  corpus, candidates = prepare(
    cfg, workdir, resume_from_step=resume_from_step, skip_damaged=skip_damaged
  )
  tcfg, dcfg = cfg.train, cfg.data
  pid, pcount = jax.process_index(), jax.process_count()
  if pid != 0:  # logs and metrics from process 0 only
    log = lambda line: None

  # The state is born sharded on the config's mesh (or restored straight into it).
  su = sharded.setup_for(cfg, mesh)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(su.abstract.params))
  data_iter = iter(
    pipeline.train_dataset(
      dcfg, corpus, tcfg.batch_size, seed=dcfg.shuffle_seed, process_index=pid, process_count=pcount
    )
  )

  ck = checkpointing.Checkpointer(
    workdir, keep=tcfg.keep_checkpoints, async_save=tcfg.async_checkpoint
  )
  start, state = 0, None
  for i, step in enumerate(candidates):
    try:
      state = ck.restore(step, su.abstract, data_iter)
    except checkpointing.CheckpointDamagedError as e:
      if not skip_damaged or resume_from_step is not None or i + 1 == len(candidates):
        ck.close()
        raise
      log(f"skipping: {e}")
      continue
    start = step
    log(f"resumed from {ck.directory / str(start)} (step {start})")
    break
  if state is None:
    state = su.init()
  later = [s for s in checkpointing.step_dirs(workdir) if s > start]
  if later:  # only reached on request (skip_damaged / resume_from_step)
    if pid == 0:
      for s, moved in zip(later, ck.set_aside(later)):
        log(
          f"set aside checkpoint step {s} (newer than the step resumed from): moved to "
          f"{moved}, not deleted"
        )
    if pcount > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("titans_jax: checkpoints set aside")
      ck.reload()
  try:
    if pid == 0:
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / "config.json").write_text(config_lib.to_json(cfg))
    writer = MetricsWriter(workdir, enabled=pid == 0, resume_step=start)
  except OSError as e:
    ck.close()
    raise checkpointing.StorageError(
      f"cannot write to --workdir {workdir}: {checkpointing.describe_error(e)}"
    ) from e
  mesh_desc = ",".join(f"{a}={n}" for a, n in su.mesh.shape.items())
  log(
    f"{cfg.name}: {cfg.model.variant} model, {n_params / 1e6:.2f}M params, "
    f"{tcfg.steps} steps of {tcfg.batch_size}x{dcfg.seq_len} tokens, data={dcfg.kind}, "
    f"mesh ({mesh_desc}) over {pcount} process(es), workdir={workdir}"
  )

  notice = su.replication_notice((tcfg.batch_size, dcfg.seq_len))
  if notice:
    log(notice)
  step_fn = su.step
  eval_step = su.eval_step
  eval_data = None

  def run_eval(state) -> Optional[dict[str, float]]:
    nonlocal eval_data
    if eval_data is None:
      try:
        eval_data = pipeline.eval_batches(
          dcfg,
          corpus,
          cfg.eval.batch_size,
          tcfg.eval_batches,
          process_index=pid,
          process_count=pcount,
        )
      except DataError as e:  # e.g. data.eval_fraction=0: train anyway, say why
        log(f"held-out evaluation skipped: {e}")
        eval_data = []
    if not eval_data:
      return None
    return perplexity.evaluate_batches(
      eval_step, state.params, state.rest, eval_data, byte_level=corpus.byte_level, put=su.put_batch
    )

  losses: dict[int, float] = {}
  progress = Progress(tcfg.steps, start)
  tokens_per_step = tcfg.batch_size * dcfg.seq_len
  status = "done"
  pending = None  # (step, metrics) of the last dispatched step, read one step later
  last_eval = None

  def diverged(what: str) -> TrainingDivergedError:
    ck.wait()
    good = ck.latest_step()
    where = (
      f"the newest checkpoint {ck.directory / str(good)} (step {good}) gives a "
      "finite loss and is intact"
      if good is not None
      else "no checkpoint had been written yet"
    )
    return TrainingDivergedError(
      f"{what}; stopped without saving; {where}. Try a lower train.lr, more "
      "train.warmup_steps or model.dtype=float32."
    )

  def verify(step: int, state, batch) -> None:
    """The state about to be saved must itself give a finite loss (on the batch it was
    just trained on): a finite update can still produce weights whose loss is NaN, and
    such a checkpoint could not be resumed."""
    s_ce, s_w, _ = (float(x) for x in jax.device_get(eval_step(state.params, state.rest, batch)))
    loss = s_ce / max(s_w, 1.0)
    if not math.isfinite(loss):
      raise diverged(f"the weights after step {step} give a non-finite loss ({loss}) on its batch")

  def check(step: int, metrics) -> dict[str, float]:
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not m["finite"]:
      raise diverged(
        f"non-finite loss/gradient at step {step} (loss={m['loss']}, grad_norm={m['grad_norm']})"
      )
    losses[step] = m["loss"]
    if step % tcfg.log_every == 0 or step == tcfg.steps or step == start + 1:
      line, tps = progress.line(
        step,
        m["loss"],
        step * tokens_per_step,
        m["lr"],
        byte_level=corpus.byte_level,
        grad_norm=m["grad_norm"],
      )
      log(line)
      scalars = {k: m[k] for k in ("loss", "grad_norm", "lr", "accuracy")}
      scalars["bits_per_byte" if corpus.byte_level else "bits_per_token"] = m["loss"] / LN2
      if math.isfinite(tps):
        scalars["tokens_per_s"] = tps
      writer.write(step, scalars)
    return m

  try:
    with _Preemption() as preempt:
      for step in range(start + 1, tcfg.steps + 1):
        batch = su.put_batch(next(data_iter))
        state, metrics = step_fn(state, batch)
        if pending is not None:
          check(*pending)
        pending = (step, metrics)
        stop_here = stop_after_step is not None and step >= stop_after_step
        save_here = (
          step % tcfg.checkpoint_every == 0 or step == tcfg.steps or stop_here or preempt.requested
        )
        eval_here = tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.steps
        if save_here or eval_here:
          check(*pending)  # never checkpoint / evaluate a state from a non-finite step
          pending = None
        if eval_here:
          ev = run_eval(state)
          if ev is not None:
            writer.write(step, ev, prefix="eval")
            log(f"eval @ {step}: " + perplexity.format_metrics(ev))
        if save_here:
          verify(step, state, batch)
          ck.save(step, state, data_iter, cfg)
        if preempt.requested:
          status = "preempted"
          log(f"SIGTERM: saved checkpoint at step {step}; exiting")
          break
        if stop_here:
          status = "stopped"
          break
      if pending is not None:
        check(*pending)
      final_step = int(jax.device_get(state.step))
      if status == "done" and final_step == tcfg.steps:
        last_eval = run_eval(state)
      if last_eval is not None:
        writer.write(final_step, last_eval, prefix="eval")
        log(f"held-out eval @ {final_step}: " + perplexity.format_metrics(last_eval))
        if pid == 0:
          (workdir / "eval_final.json").write_text(strict_json({"step": final_step, **last_eval}))
  finally:
    ck.close()
    writer.close()
  wall = time.time() - t_wall
  log(f"finished at step {final_step} ({status}) in {fmt_duration(wall)}")
  return TrainResult(start, final_step, losses, last_eval, status, wall)
