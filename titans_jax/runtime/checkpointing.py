"""orbax checkpoints: train state + grain iterator state + the run's config, async, keep-N.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. The config item lets a
resumed run (or eval.py) refuse a checkpoint written for another model before touching
anything, and lets eval.py rebuild the model without the original config file.

Faults: a step directory missing one of its parts is *damaged*; it is never chosen as
"latest", never deleted, and reported in one line (`CheckpointDamagedError`, which
step, what is wrong, how to remove it). An operating-system error while writing
(read-only, no space) becomes a one-line `StorageError` and the half-written step
directory of that save is removed.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from titans_jax import config as config_lib


class CheckpointMismatchError(config_lib.ConfigError):
  """A checkpoint was written for a different model config."""


class CheckpointDamagedError(RuntimeError):
  """A checkpoint is incomplete or unreadable; the message is one line with the fix."""


class StorageError(RuntimeError):
  """The filesystem refused a write (not a directory, read-only, no space, ...)."""


#: Files and directories every complete checkpoint has (relative to its step directory).
REQUIRED_PARTS = ("state", "state/_METADATA", "config/metadata")


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).expanduser().absolute() / "checkpoints"


def step_dirs(workdir: str | pathlib.Path) -> dict[int, pathlib.Path]:
  """Every `<step>` directory under `checkpoints/`, complete or not, by step."""
  d = checkpoint_dir(workdir)
  if not d.is_dir():
    return {}
  return {
    int(p.name): p
    for p in sorted(d.iterdir(), key=lambda p: p.name)
    if p.is_dir() and p.name.isdigit()
  }


def missing_part(step_dir: pathlib.Path) -> Optional[str]:
  """What a checkpoint directory lacks ("missing state/_METADATA"), or None."""
  for part in REQUIRED_PARTS:
    if not (step_dir / part).exists():
      return f"missing {part}" + ("/" if "/" not in part else "")
  return None


def existing_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of complete checkpoints under `workdir`, without creating anything."""
  return [s for s, p in step_dirs(workdir).items() if missing_part(p) is None]


def damaged_message(step_dir: pathlib.Path, what: str, previous: Optional[int]) -> str:
  """The one line that says which checkpoint, what is wrong and what to do."""
  fix = (
    f"to resume from step {previous} instead, remove it (rm -r {step_dir}) or pass "
    f"--skip_damaged (it is then moved aside, not deleted)"
    if previous is not None
    else f"no earlier complete checkpoint; remove it (rm -r {step_dir}) to start afresh"
  )
  return f"checkpoint {step_dir} is damaged ({what}); nothing was changed; {fix}"


def describe_error(exc: BaseException) -> str:
  """One line for an exception: the innermost OSError's cause and path if there is one,
  else the first line of its message."""
  seen, e = set(), exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      where = f": {e.filename}" if e.filename else ""
      return f"{os.strerror(e.errno)}{where}"
    e = e.__cause__ or e.__context__
  first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
  return first if len(first) <= 240 else first[:237] + "..."


def check_writable(workdir: pathlib.Path) -> None:
  """Raises StorageError when `workdir` cannot hold a run: a file is in the way, or its
  nearest existing ancestor is not writable (read-only filesystem or permissions).
  Writes nothing."""
  for p in (workdir, *workdir.parents):
    if p.exists():
      if not p.is_dir():
        raise StorageError(f"--workdir {workdir}: {p} is a file, not a directory")
      if not os.access(p, os.W_OK | os.X_OK):
        ro = _is_read_only(p)
        raise StorageError(
          f"--workdir {workdir}: {p} is not writable" + (" (read-only file system)" if ro else "")
        )
      return


def _is_read_only(p: pathlib.Path) -> bool:
  try:
    return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
  except OSError:
    return False


class Checkpointer:
  """A thin CheckpointManager wrapper owning the item names and the config check."""

  def __init__(
    self,
    workdir: str | pathlib.Path,
    *,
    keep: int = 3,
    async_save: bool = True,
    create: bool = True,
  ):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=async_save
    )
    self._saving: Optional[int] = None  # the step of an unfinished save
    self._failed = False  # a save failed and was reported
    try:
      self._mngr = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise StorageError(f"cannot use {self.directory}: {describe_error(e)}") from e

  def latest_step(self) -> Optional[int]:
    """The newest *complete* checkpoint (orbax's own would pick a damaged one)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    return existing_steps(self.directory.parent)

  def _damaged(self, step: int, exc: BaseException) -> CheckpointDamagedError:
    earlier = [s for s in self.all_steps() if s < step]
    return CheckpointDamagedError(
      damaged_message(
        self.directory / str(step),
        f"cannot be read: {describe_error(exc)}",
        earlier[-1] if earlier else None,
      )
    )

  def saved_config(self, step: Optional[int] = None) -> dict:
    """The config dict stored with checkpoint `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:  # any read failure means the checkpoint is damaged
      raise self._damaged(step, e) from e
    return out["config"]

  def check_compatible(self, cfg: config_lib.Config, step: Optional[int] = None) -> None:
    """Raises CheckpointMismatchError naming the model fields that differ."""
    step = self.latest_step() if step is None else step
    saved = config_lib.comparable_model_dict(self.saved_config(step).get("model", {}))
    now = config_lib.comparable_model_dict(cfg.model)
    diff = config_lib.diff_dicts(saved, now)
    if diff:
      details = ", ".join(
        f"model.{k}: checkpoint={_get(saved, k)!r} vs config={_get(now, k)!r}" for k in diff[:8]
      )
      raise CheckpointMismatchError(
        f"checkpoint {self.directory / str(step)} was written for a different model "
        f"config ({details}). Use another --workdir, or the config it was trained with."
      )

  def save(
    self,
    step: int,
    state: Any,
    data_iter: Optional[grain.DatasetIterator],
    cfg: config_lib.Config,
    *,
    force: bool = True,
  ) -> bool:
    items = {
      "state": ocp.args.StandardSave(state),
      "config": ocp.args.JsonSave(config_lib.to_dict(cfg)),
    }
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.wait()  # a failed earlier (async) save is reported as that step's, not this one's
    self._saving = step
    try:
      return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:
      raise self._storage_error(e) from e

  def restore(
    self, step: int, abstract_state: Any, data_iter: Optional[grain.DatasetIterator] = None
  ) -> Any:
    """The state of checkpoint `step`, shaped (and sharded) like `abstract_state`;
    `data_iter` (if given) is rewound in place to where that run's iterator was."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # any read failure means the checkpoint is damaged
      raise self._damaged(step, e) from e
    return out["state"]

  def set_aside(self, steps: list[int]) -> list[pathlib.Path]:
    """Moves the step directories `steps` to `<workdir>/checkpoints_set_aside/` (never
    deletes them), so that this run can write those steps again; returns the new paths.
    Call on one process; the others `reload()` after it."""
    moved = []
    target_root = self.directory.parent / "checkpoints_set_aside"
    for step in steps:
      src = self.directory / str(step)
      target_root.mkdir(exist_ok=True)
      dst, n = target_root / str(step), 1
      while dst.exists():
        dst, n = target_root / f"{step}.{n}", n + 1
      shutil.move(str(src), str(dst))
      moved.append(dst)
    self.reload()
    return moved

  def reload(self) -> None:
    """Re-reads the step directories (after another process set some aside)."""
    self._mngr.reload()

  def _storage_error(self, exc: BaseException) -> BaseException:
    """A failed save: remove its half-written step directory, name the path and cause.
    Errors that are not the filesystem's come back unchanged."""
    step, self._saving = self._saving, None
    self._failed = True
    cause = describe_error(exc)
    if step is not None:
      try:  # the save's other writer threads may still be running: let them end first
        self._mngr.wait_until_finished()
      except Exception:
        pass
      for _ in range(50):  # (a straggling writer can recreate a directory once)
        partial = [p for p in self.directory.glob(f"{step}.orbax-checkpoint-tmp*")]
        final = self.directory / str(step)
        if final.is_dir() and missing_part(final) is not None:
          partial.append(final)
        if not partial:
          break
        for p in partial:
          shutil.rmtree(p, ignore_errors=True)
        time.sleep(0.05)
    if not _is_os_error(exc):
      return exc
    where = self.directory / str(step) if step is not None else self.directory
    return StorageError(
      f"cannot write checkpoint {where}: {cause} (the partial "
      f"checkpoint was removed; earlier checkpoints are intact)"
    )

  def wait(self) -> None:
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # an async save failed
      if self._failed:  # already reported (and cleaned up) once
        return
      raise self._storage_error(e) from e
    self._saving = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._mngr.close()


class _DropOrbaxErrorLogs(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def quiet_orbax_error_logs() -> None:
  """Drops orbax's own ERROR log records (each with a traceback, ~130 lines for one full
  disk): every failed save or restore reaches the caller as an exception, which train.py
  turns into one `error:` line (and which keeps its traceback when it is not an OS error)."""
  log = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxErrorLogs) for f in log.filters):
    log.addFilter(_DropOrbaxErrorLogs())


def _is_os_error(exc: BaseException) -> bool:
  seen, e = set(), exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return True
    e = e.__cause__ or e.__context__
  return False


def _get(d: Any, dotted: str) -> Any:
  for k in dotted.split("."):
    if not isinstance(d, dict) or k not in d:
      return "<absent>"
    d = d[k]
  return d


def read_saved_config_json(workdir: str | pathlib.Path) -> Optional[dict]:
  """The `config.json` written next to the checkpoints, if any (no orbax needed)."""
  p = pathlib.Path(workdir) / "config.json"
  return json.loads(p.read_text()) if p.exists() else None
