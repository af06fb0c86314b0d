"""BABILong and RULER readers on small files in their published layouts (written here),
scored into the S-NIAH grid files by a scripted generator (no model needed)."""

import json

import numpy as np
import pytest

from titans_jax.data.text import DataError
from titans_jax.evaluation import longctx


def _babilong_rows(task, n, length):
  # The dataset's columns: input (facts hidden in filler text), question, target.
  places = ["kitchen", "garden", "office", "hallway"]
  return [
    {
      "input": f"Filler {length} {task}. Mary went to the {places[i % 4]}. More filler.",
      "question": "Where is Mary?",
      "target": places[i % 4],
    }
    for i in range(n)
  ]


def _write_babilong(root, pq):
  # 0k: the babilong-1k-samples layout, <length>/<qa>-00000-of-00001.parquet;
  # 1k: the Hub's parquet conversion, <length>/<qa>/0000.parquet; JSON stands in
  # for parquet when pyarrow is absent.
  for length in ("0k", "1k"):
    for task in ("qa1", "qa2"):
      rows = _babilong_rows(task, 4, length)
      d = root / length
      if length == "1k":
        d = d / task
      d.mkdir(parents=True, exist_ok=True)
      name = f"{task}-00000-of-00001" if length == "0k" else "0000"
      if pq is not None:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), d / f"{name}.parquet")
      else:
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / "0k" / "qa10-00000-of-00001.jsonl").write_text("{}\n")  # not qa1: never read


def test_babilong_reader_and_grid(tmp_path):
  try:
    import pyarrow.parquet as pq
  except ImportError:
    pq = None
  _write_babilong(tmp_path / "babilong", pq)
  ex = longctx.read_babilong(tmp_path / "babilong", tasks=("qa1", "qa2"))
  assert len(ex) == 16
  assert {(e.row, e.length) for e in ex} == {(t, L) for t in ("qa1", "qa2") for L in ("0k", "1k")}
  assert ex[0].prompt.endswith("Question: Where is Mary?\nAnswer:")
  assert ex[0].answers == ["kitchen"]

  def generate(prompts):
    # right for the kitchen and garden examples, except qa2 at 1k
    out = []
    for p in prompts:
      place = next(w for w in ("kitchen", "garden", "office", "hallway") if w in p)
      ok = place in ("kitchen", "garden") and "Filler 1k qa2" not in p
      out.append(f" The {place.title() if ok else 'moon'}.\nkitchen garden office hallway")
    return out

  g = longctx.evaluate(
    ex, generate, suite="BABILong", task="qa1-qa2", row_axis="task", outdir=tmp_path / "out"
  )
  assert g["lengths"] == ["0k", "1k"] and g["depths"] == ["qa1", "qa2"]
  np.testing.assert_allclose(g["accuracy"], [[0.5, 0.5], [0.5, 0.0]])
  md = (tmp_path / "out" / "babilong_qa1-qa2.md").read_text()
  assert "| task \\ length | 0k | 1k |" in md and "| qa2 | 50% | 0% |" in md
  assert (
    json.loads((tmp_path / "out" / "babilong_qa1-qa2.json").read_text())["accuracy"]
    == g["accuracy"]
  )
  assert (tmp_path / "out" / "babilong_qa1-qa2.png").stat().st_size > 0
  # the answer counts only in the first line (the second line lists every place)
  assert longctx.score(ex[2], "office\nkitchen") == 1.0
  assert longctx.score(ex[0], "office\nkitchen") == 0.0


def test_ruler_reader_depths_lengths_and_string_match_all(tmp_path):
  for seq_len in (4096, 8192):
    d = tmp_path / "ruler" / str(seq_len) / "data" / "niah_multikey_1"
    d.mkdir(parents=True)
    rows = []
    for i, depth in enumerate((0.0, 0.5, 1.0, 0.5)):
      length = seq_len - 50
      rows.append(
        {
          "index": i,
          "input": f"haystack {seq_len} needle-{i} ...",
          "outputs": [f"{1000 + i}", f"{2000 + i}"],
          "length": length,
          "length_w_model_temp": length + 20,
          "answer_prefix": " The special magic numbers are",
          "token_position_answer": int(depth * length),
        }
      )
    (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ex = longctx.read_ruler([tmp_path / "ruler"])
  assert len(ex) == 8 and {e.length for e in ex} == {4096, 8192}
  assert ex[0].prompt.endswith("needle-0 ... The special magic numbers are")

  def generate(prompts):
    # both numbers at 4096; one of two at 8192 (string_match_all = 0.5)
    out = []
    for p in prompts:
      i = int(p.split("needle-")[1].split()[0])
      out.append(f" {1000 + i} and {2000 + i}." if "haystack 4096" in p else f" {1000 + i}.")
    return out

  g = longctx.evaluate(
    ex, generate, suite="RULER", task="niah_multikey_1", row_axis="depth", outdir=tmp_path / "out"
  )
  assert g["lengths"] == [4096, 8192] and g["depths"] == [0.0, 0.5, 1.0]
  np.testing.assert_allclose(g["accuracy"], [[1.0, 0.5]] * 3)
  assert g["samples"] == 1  # depth 0.5 holds 2 per length, the others 1
  md = (tmp_path / "out" / "ruler_niah_multikey_1.md").read_text()
  assert "| 0.50 | 100% | 50% |" in md


def test_bad_files_name_the_path_and_field(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    longctx.read_babilong(tmp_path / "nope")
  (tmp_path / "b" / "1k").mkdir(parents=True)
  (tmp_path / "b" / "1k" / "qa1.jsonl").write_text(json.dumps({"input": "x", "target": "y"}))
  with pytest.raises(DataError, match=r"qa1.jsonl: no field 'question'"):
    longctx.read_babilong(tmp_path / "b")
  with pytest.raises(DataError, match=r"no BABILong files"):
    longctx.read_babilong(tmp_path / "b", tasks=("qa3",))
  (tmp_path / "r.jsonl").write_text(json.dumps({"input": "x", "length": 3}) + "\n")
  with pytest.raises(DataError, match=r"r.jsonl:1: no field 'outputs'"):
    longctx.read_ruler([tmp_path / "r.jsonl"])
