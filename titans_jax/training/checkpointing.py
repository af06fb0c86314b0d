"""orbax checkpoints: train state + grain iterator state + the run's config, async, keep-N.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. The config item lets a
resumed run (or eval.py) refuse a checkpoint written for another model before touching
anything, and lets eval.py rebuild the model without the original config file.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from titans_jax.training import config as config_lib


class CheckpointMismatchError(config_lib.ConfigError):
  """A checkpoint was written for a different model config."""


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).expanduser().absolute() / "checkpoints"


def existing_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of finished checkpoints under `workdir`, without creating anything."""
  d = checkpoint_dir(workdir)
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "state").exists())


class Checkpointer:
  """A thin CheckpointManager wrapper owning the item names and the config check."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True,
               create: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def saved_config(self, step: Optional[int] = None) -> dict:
    """The config dict stored with checkpoint `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    out = self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out["config"]

  def check_compatible(self, cfg: config_lib.Config, step: Optional[int] = None) -> None:
    """Raises CheckpointMismatchError naming the model fields that differ."""
    step = self.latest_step() if step is None else step
    saved = config_lib.comparable_model_dict(self.saved_config(step).get("model", {}))
    now = config_lib.comparable_model_dict(cfg.model)
    diff = config_lib.diff_dicts(saved, now)
    if diff:
      details = ", ".join(f"model.{k}: checkpoint={_get(saved, k)!r} vs config={_get(now, k)!r}"
                          for k in diff[:8])
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} was written for a different model "
          f"config ({details}). Use another --workdir, or the config it was trained with.")

  def save(self, step: int, state: Any, data_iter: Optional[grain.DatasetIterator],
           cfg: config_lib.Config, *, force: bool = True) -> bool:
    items = {"state": ocp.args.StandardSave(state),
             "config": ocp.args.JsonSave(config_lib.to_dict(cfg))}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any,
              data_iter: Optional[grain.DatasetIterator] = None) -> Any:
    """The state of checkpoint `step`, shaped (and sharded) like `abstract_state`;
    `data_iter` (if given) is rewound in place to where that run's iterator was."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    return out["state"]

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


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
