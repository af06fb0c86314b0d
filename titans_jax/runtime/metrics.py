"""Metric sinks (TensorBoard + JSON lines) and the console progress line.

Only process 0 writes; other processes get a writer whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Optional

LN2 = math.log(2.0)


class MetricsWriter:
  """Scalars to `<workdir>/tb` (TensorBoard event files) and `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True, resume_step: int = 0):
    """`resume_step`: the step a resumed run restarts from; rows (and TensorBoard
    events) of later steps, written by the run that was interrupted, are dropped so that
    the replayed steps replace them instead of appearing twice."""
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter

      workdir = pathlib.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      path = workdir / "metrics.jsonl"
      if path.exists():
        _drop_rows_after(path, resume_step)
      self._tb = SummaryWriter(
        logdir=str(workdir / "tb"), purge_step=resume_step + 1 if resume_step else None
      )
      self._jsonl = open(path, "a")

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v)
      row[f"{prefix}/{k}"] = v
      self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """Rewrites `path` (atomically) without the rows of steps after `step`."""
  lines = path.read_text().splitlines(keepends=True)
  keep = [line for line in lines if _row_step(line) <= step]
  if len(keep) != len(lines):
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


def _row_step(line: str) -> float:
  """A row's step; a torn line (a run killed mid-write) counts as after every step."""
  try:
    return float(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return math.inf


def strict_json(obj) -> str:
  """JSON that strict parsers accept: NaN / ±Inf become null (json.dumps would write
  bare NaN / Infinity)."""

  def clean(x):
    if isinstance(x, float) and not math.isfinite(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return x

  return json.dumps(clean(obj), indent=2, allow_nan=False)


def fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  h, rem = divmod(s, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Tokens/s and ETA over the steps run in this process (excludes compile time)."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.start_step = start_step
    self._t0: Optional[float] = None
    self._s0 = start_step
    self.t_start = time.time()

  def line(
    self,
    step: int,
    loss: float,
    tokens_seen: float,
    lr: float,
    *,
    byte_level: bool,
    grad_norm: float,
  ) -> tuple[str, float]:
    """(progress line, tokens/s); timing starts after the first logged step (compile)."""
    now = time.time()
    if self._t0 is None:
      self._t0, self._s0, self._tok0 = now, step, tokens_seen
      tps, eta = float("nan"), float("nan")
    else:
      dt = max(now - self._t0, 1e-9)
      tps = (tokens_seen - self._tok0) / dt
      per_step = dt / max(step - self._s0, 1)
      eta = per_step * (self.total - step)
    bits = loss / LN2
    unit = "bits/byte" if byte_level else "bits/tok"
    tps_s = "-" if not math.isfinite(tps) else (f"{tps / 1e3:.1f}k" if tps >= 1e3 else f"{tps:.0f}")
    line = (
      f"step {step:>6d}/{self.total} | loss {loss:.4f} | {unit} {bits:.3f} | "
      f"lr {lr:.2e} | gnorm {grad_norm:.2f} | {tps_s} tok/s | "
      f"elapsed {fmt_duration(now - self.t_start)} | ETA {fmt_duration(eta)}"
    )
    return line, tps
