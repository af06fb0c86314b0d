"""S-NIAH accuracy grid over context lengths × needle depths, written as JSON, a markdown
table and a PNG heatmap.

An example counts as correct when greedy decoding after the question reproduces the
whole answer. With teacher forcing, "every answer byte is the argmax given the true
prefix" is exactly "greedy decoding emits the answer", so one forward pass per batch
scores it (no autoregressive loop).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from titans_jax.data import synthetic

EVAL_SEED = 7_000_003  # disjoint from the training streams (seeded by data.shuffle_seed)


def make_predict(graphdef):
  """Jitted `(params, rest, inputs_BxT) -> argmax ids B×T`."""

  def predict(params, rest, inputs_BxT):
    model = nnx.merge(graphdef, params, rest)
    return jnp.argmax(model(inputs_BxT), axis=-1).astype(jnp.int32)

  return jax.jit(predict)


def niah_cell_detail(
  predict,
  params,
  rest,
  task: str,
  length: int,
  depth: float,
  samples: int,
  batch_size: int,
  seed: int = EVAL_SEED,
) -> tuple[float, list[float]]:
  """Exact-match accuracy of `samples` examples at one (length, depth), and the
  accuracy of each answer byte given the true prefix (index 0 = the byte predicted at
  the end of the question; an answer shorter than the longest counts only for the
  bytes it has). The per-byte figure says *where* a miss is: a wrong first byte with
  the rest right is a retrieval that fails to start; errors spread over the answer are
  a needle held only in part."""
  # A per-cell stream that is the same in every process (no Python hash randomisation).
  cell = [seed, synthetic.NIAH_TASKS.index(task), length, int(round(depth * 1e6))]
  examples = [
    synthetic.niah_example(np.random.default_rng(cell + [i]), task, length, depth)
    for i in range(samples)
  ]
  correct = 0
  byte_right, byte_seen = [], []
  for start in range(0, samples, batch_size):
    chunk = examples[start : start + batch_size]
    n = len(chunk)
    pad = batch_size - n  # keep one shape per length (one compilation)
    chunk = chunk + [chunk[-1]] * pad
    tokens = np.stack([e["tokens"] for e in chunk])
    weights = np.stack([e["weights"] for e in chunk])
    pred = np.asarray(predict(params, rest, jnp.asarray(tokens[:, :-1])))
    hit = pred == tokens[:, 1:]
    ok = np.all(hit | (weights == 0), axis=1)
    correct += int(ok[:n].sum())
    for row in range(n):
      answer = np.flatnonzero(weights[row])  # the answer is the contiguous tail
      for i, pos in enumerate(answer):
        if i == len(byte_seen):
          byte_right.append(0)
          byte_seen.append(0)
        byte_right[i] += int(hit[row, pos])
        byte_seen[i] += 1
  return correct / samples, [r / s for r, s in zip(byte_right, byte_seen)]


def niah_cell(*args, **kwargs) -> float:
  """Exact-match accuracy of one (length, depth) cell: `niah_cell_detail`'s first value
  (same arguments)."""
  return niah_cell_detail(*args, **kwargs)[0]


def niah_grid(
  predict,
  params,
  rest,
  *,
  task: str,
  lengths: Sequence[int],
  depths: Sequence[float],
  samples: int,
  batch_size: int,
) -> dict:
  """{"task", "lengths", "depths", "samples", "accuracy": [depth][length],
  "byte_accuracy": [depth][length][answer byte]} (`niah_cell_detail`)."""
  cells = [
    [niah_cell_detail(predict, params, rest, task, L, d, samples, batch_size) for L in lengths]
    for d in depths
  ]
  acc = [[c[0] for c in row] for row in cells]
  return {
    "task": task,
    "lengths": list(lengths),
    "depths": list(depths),
    "samples": samples,
    "accuracy": acc,
    "mean_accuracy": float(np.mean(acc)) if acc else float("nan"),
    "byte_accuracy": [[c[1] for c in row] for row in cells],
  }


def _row_name(d) -> str:
  """Depths print as 0.25; other row labels (BABILong's qa tasks) as they are."""
  return f"{d:.2f}" if isinstance(d, (int, float)) else str(d)


def to_markdown(grid: dict) -> str:
  rows_axis = grid.get("row_axis", "depth")
  head = f"| {rows_axis} \\ length | " + " | ".join(str(L) for L in grid["lengths"]) + " |"
  sep = "|---|" + "---|" * len(grid["lengths"])
  rows = [
    f"| {_row_name(d)} | " + " | ".join(f"{100 * a:.0f}%" for a in row) + " |"
    for d, row in zip(grid["depths"], grid["accuracy"])
  ]
  title = (
    f"{grid.get('suite', 'S-NIAH')} ({grid['task']}) {grid.get('metric', 'exact-match')} "
    f"accuracy, {grid['samples']} samples per cell; mean "
    f"{100 * grid['mean_accuracy']:.1f}%"
  )
  return "\n".join([title, "", head, sep, *rows]) + "\n"


def write_grid(grid: dict, outdir: str | pathlib.Path, title: str = "") -> dict[str, str]:
  """Writes niah_<task>.{json,md,png} under `outdir`; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  outdir = pathlib.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  stem = outdir / f"{grid.get('file_prefix', 'niah')}_{grid['task']}"
  paths = {"json": f"{stem}.json", "markdown": f"{stem}.md", "png": f"{stem}.png"}
  pathlib.Path(paths["json"]).write_text(json.dumps(grid, indent=2))
  pathlib.Path(paths["markdown"]).write_text(to_markdown(grid))
  acc = np.asarray(grid["accuracy"], np.float64)
  fig, ax = plt.subplots(
    figsize=(1.2 + 1.1 * len(grid["lengths"]), 1.0 + 0.6 * len(grid["depths"]))
  )
  im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
  ax.set_xticks(range(len(grid["lengths"])), [str(L) for L in grid["lengths"]])
  ax.set_yticks(range(len(grid["depths"])), [_row_name(d) for d in grid["depths"]])
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel(grid.get("row_axis", "needle depth"))
  for i in range(acc.shape[0]):
    for j in range(acc.shape[1]):
      ax.text(j, i, f"{100 * acc[i, j]:.0f}", ha="center", va="center", fontsize=8)
  ax.set_title(title or f"S-NIAH {grid['task']} accuracy")
  fig.colorbar(im, ax=ax, fraction=0.05)
  fig.tight_layout()
  fig.savefig(paths["png"], dpi=100)
  plt.close(fig)
  return paths
