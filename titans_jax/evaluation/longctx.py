"""Long-context suites from the user's own files, scored into the S-NIAH grid format
(`niah.write_grid`: JSON, markdown table, PNG heatmap).

BABILong (https://huggingface.co/datasets/RMT-team/babilong and babilong-1k-samples):
  <root>/<length>/<qa>-00000-of-00001.parquet   (the datasets' own layout), or
  <root>/<length>/<qa>/*.parquet                 (the Hub's parquet conversion), or
  <root>/<length>/<qa>.json / .jsonl             (the same rows as JSON records / lines)
  with columns `input` (the long context), `question`, `target`; <length> is 0k, 1k, …
  Grid: rows = tasks (qa1 … qa5), columns = lengths. Correct when the target word appears
  in the first line of the greedy answer (lower-cased), as BABILong's own scorer does for
  qa1–qa5.

RULER (https://github.com/NVIDIA/RULER, `scripts/data/prepare.py` output):
  JSONL lines {"index", "input", "outputs": [...], "length", "answer_prefix",
  "token_position_answer", …}, e.g. <root>/<seq_len>/data/<task>/validation.jsonl.
  Grid: rows = needle depth (token_position_answer / length, binned), or one row "all"
  without it; columns = the sequence length (a numeric directory in the path, else the
  record's length rounded up to a power of two). Score: RULER's string_match_all, the
  share of `outputs` found in the answer (lower-cased).

Any generator works: `generate(prompts) -> answers`; `titans_generator(lm)` is the
titans_jax one (the lm_eval adapter's cached prefill/decode, greedy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from titans_jax.data.text import DataError
from titans_jax.evaluation import niah

BABILONG_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
_LENGTH_DIR = re.compile(r"^(\d+(?:\.\d+)?)k$")


@dataclasses.dataclass
class Example:
  prompt: str
  answers: list[str]
  length: object  # the grid column (BABILong: "4k"; RULER: 4096)
  row: object  # the grid row (BABILong: "qa1"; RULER: a depth or "all")
  metric: str  # "contains_first_line" or "string_match_all"


def _length_key(label) -> float:
  m = _LENGTH_DIR.match(str(label))
  return float(m.group(1)) * 1000 if m else float(label)


def _read_rows(path: pathlib.Path) -> list[dict]:
  if path.suffix == ".parquet":
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise DataError(f"reading {path} needs pyarrow (pip install pyarrow)") from None
    return pq.read_table(path).to_pylist()
  text = path.read_text(encoding="utf-8")
  if path.suffix == ".json" and text.lstrip().startswith("["):
    return json.loads(text)
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
  return rows


def _need(row: dict, fields: Sequence[str], where: str) -> None:
  missing = [f for f in fields if f not in row]
  if missing:
    raise DataError(f"{where}: no field {missing[0]!r} (have {sorted(row)})")


def babilong_prompt(context: str, question: str) -> str:
  return f"{context.strip()}\nQuestion: {question.strip()}\nAnswer:"


def read_babilong(
  root: str | pathlib.Path,
  tasks: Sequence[str] = BABILONG_TASKS,
  lengths: Optional[Sequence[str]] = None,
  samples: Optional[int] = None,
) -> list[Example]:
  """BABILong examples under `root` (layout in the module docstring), `samples` per
  (task, length) at most (the first ones, in file order)."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"BABILong directory does not exist: {root}")
  dirs = sorted(
    (d for d in root.iterdir() if d.is_dir() and _LENGTH_DIR.match(d.name)),
    key=lambda d: _length_key(d.name),
  )
  if lengths:
    dirs = [d for d in dirs if d.name in set(lengths)]
  out = []
  for d in dirs:
    for task in tasks:
      files = sorted(
        p
        for p in d.glob(f"{task}*")
        if p.is_file()
        and p.suffix in (".parquet", ".json", ".jsonl")
        and re.match(rf"^{task}(\D|$)", p.name)
      )
      if (d / task).is_dir():
        files += sorted(
          p for p in (d / task).iterdir() if p.suffix in (".parquet", ".json", ".jsonl")
        )
      rows = [(f, r) for f in files for r in _read_rows(f)]
      for f, r in rows[:samples] if samples else rows:
        _need(r, ("input", "question", "target"), str(f))
        out.append(
          Example(
            babilong_prompt(r["input"], r["question"]),
            [str(r["target"])],
            d.name,
            task,
            "contains_first_line",
          )
        )
  if not out:
    raise DataError(
      f"no BABILong files for tasks {list(tasks)} under {root} (want "
      "<length>/<qa>-*.parquet, e.g. 1k/qa1-00000-of-00001.parquet)"
    )
  return out


def _ruler_length(path: pathlib.Path, record_length: int) -> int:
  for part in reversed(path.parts[:-1]):
    if part.isdigit():
      return int(part)
  return 1 << max(0, math.ceil(math.log2(max(record_length, 1))))


def read_ruler(
  paths: Sequence[str | pathlib.Path], depth_bins: int = 5, samples: Optional[int] = None
) -> list[Example]:
  """RULER examples from .jsonl files or directories of them; `samples` per file at most."""
  files: list[pathlib.Path] = []
  for p in paths:
    p = pathlib.Path(p).expanduser()
    if p.is_dir():
      files += sorted(p.rglob("*.jsonl"))
    elif p.is_file():
      files.append(p)
    else:
      raise DataError(f"RULER path does not exist: {p}")
  out = []
  for f in files:
    rows = _read_rows(f)
    for n, r in enumerate(rows[:samples] if samples else rows, 1):
      _need(r, ("input", "outputs", "length"), f"{f}:{n}")
      length = _ruler_length(f, int(r["length"]))
      if "token_position_answer" in r and int(r["length"]) > 0:
        depth = min(1.0, int(r["token_position_answer"]) / int(r["length"]))
        row = round(depth * (depth_bins - 1)) / (depth_bins - 1) if depth_bins > 1 else 0.0
      else:
        row = "all"
      out.append(
        Example(
          r["input"] + r.get("answer_prefix", ""),
          [str(o) for o in r["outputs"]],
          length,
          row,
          "string_match_all",
        )
      )
  if not out:
    raise DataError(f"no RULER records in {[str(p) for p in paths]}")
  return out


def score(example: Example, answer: str) -> float:
  if example.metric == "contains_first_line":
    first = answer.strip().split("\n")[0].lower() if answer.strip() else ""
    return float(example.answers[0].strip().lower() in first)
  return float(np.mean([a.lower() in answer.lower() for a in example.answers]))


def grid(
  examples: Sequence[Example], scores: Sequence[float], *, suite: str, task: str, row_axis: str
) -> dict:
  """The niah grid dict: accuracy[row][length] = mean score of that cell (NaN if empty)."""
  lengths = sorted({e.length for e in examples}, key=_length_key)
  rows = sorted({e.row for e in examples}, key=lambda r: (isinstance(r, str), r))
  cells: dict = {}
  for e, s in zip(examples, scores):
    cells.setdefault((e.row, e.length), []).append(s)
  acc = [
    [float(np.mean(cells[(r, L)])) if (r, L) in cells else float("nan") for L in lengths]
    for r in rows
  ]
  counts = [len(v) for v in cells.values()]
  return {
    "suite": suite,
    "task": task,
    "file_prefix": suite.lower(),
    "row_axis": row_axis,
    "metric": examples[0].metric,
    "lengths": lengths,
    "depths": rows,
    "samples": min(counts),
    "accuracy": acc,
    "mean_accuracy": float(np.nanmean(acc)),
  }


def evaluate(
  examples: Sequence[Example],
  generate: Callable[[list[str]], list[str]],
  *,
  suite: str,
  task: str,
  row_axis: str,
  outdir=None,
) -> dict:
  """Generates an answer per example, scores it, and (with `outdir`) writes the grid's
  JSON / markdown / PNG via `niah.write_grid`. Returns the grid (+ "files")."""
  answers = generate([e.prompt for e in examples])
  g = grid(
    examples,
    [score(e, a) for e, a in zip(examples, answers)],
    suite=suite,
    task=task,
    row_axis=row_axis,
  )
  if outdir is not None:
    g["files"] = niah.write_grid(dict(g), outdir, title=f"{suite} {task}")
  return g


def titans_generator(lm, max_new_tokens: int = 16) -> Callable[[list[str]], list[str]]:
  """Greedy answers (up to a newline) from a `lm_eval_adapter.TitansLM`."""
  from lm_eval.api.instance import Instance

  def generate(prompts: list[str]) -> list[str]:
    reqs = [
      Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": max_new_tokens}), i)
      for i, p in enumerate(prompts)
    ]
    return lm.generate_until(reqs)

  return generate
