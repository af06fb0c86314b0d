"""Data: text discovery and split, token files, synthetic tasks, grain pipelines."""

import pathlib

import numpy as np
import pytest

from titans_jax.config import DataConfig
from titans_jax.data import pipeline, synthetic, text, tokens
from titans_jax.data.text import DataError


def _write_corpus(root: pathlib.Path, n_files: int = 20, size: int = 3000) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for i in range(n_files):
    sub = root / f"pkg{i % 3}"
    sub.mkdir(parents=True, exist_ok=True)
    body = "".join(chr(c) for c in rng.integers(97, 123, size=size))
    (sub / f"mod{i}.py").write_text(f"# file {i}\n{body}\n")
  (root / "notes.txt").write_text("not a .py file")
  return root


# ---------------------------------------------------------------- text


def test_stdlib_is_found_without_site_packages():
  files = text.find_text_files([])
  assert len(files) > 100
  assert all("site-packages" not in f.parts for f in files)
  assert any(f.name == "os.py" for f in files)


def test_missing_path_is_named(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(DataError, match="does not exist: .*nope"):
    text.find_text_files([missing])


def test_empty_directory_is_named(tmp_path):
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  (empty / "zero.py").write_text("")  # empty files do not count
  with pytest.raises(DataError, match="no non-empty files.*empty_dir"):
    text.find_text_files([empty])


def test_split_is_deterministic_disjoint_and_nonempty(tmp_path):
  files = text.find_text_files([_write_corpus(tmp_path)])
  assert len(files) == 20 and all(f.suffix == ".py" for f in files)
  a = text.split_files(files, 0.2, seed=0)
  b = text.split_files(list(reversed(files)), 0.2, seed=0)
  assert sorted(a[0]) == sorted(b[0]) and sorted(a[1]) == sorted(b[1])
  assert a[1] and a[0] and not set(a[0]) & set(a[1])
  assert set(a[0]) | set(a[1]) == set(files)
  c = text.split_files(files, 0.2, seed=1)
  assert sorted(c[1]) != sorted(a[1])


def test_encode_decode_roundtrip():
  s = "def f(x):\n    return 'ünïcode' + x\n"
  assert text.decode(text.encode(s)) == s


# ---------------------------------------------------------------- pipelines


def test_text_batches_shift_and_resume(tmp_path):
  cfg = DataConfig(
    kind="text", paths=(str(_write_corpus(tmp_path)),), seq_len=32, eval_fraction=0.2
  )
  corpus = pipeline.load_corpus(cfg, 256)
  assert corpus.byte_level and corpus.train.dtype == np.uint8
  ds = pipeline.train_dataset(cfg, corpus, 4, seed=3)
  it = iter(ds)
  b0 = next(it)
  assert b0["inputs"].shape == (4, 32) and b0["inputs"].dtype == np.int32
  np.testing.assert_array_equal(b0["inputs"][:, 1:], b0["targets"][:, :-1])
  # every window is a real slice of the training stream
  stream = corpus.train.astype(np.int32)
  row = b0["inputs"][0]
  starts = np.flatnonzero(stream[:-32] == row[0])
  assert any(np.array_equal(stream[s : s + 32], row) for s in starts)

  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(3)]
  it2 = iter(pipeline.train_dataset(cfg, corpus, 4, seed=3))
  it2.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(it2)["inputs"], want)
  # another seed gives another order
  other = next(iter(pipeline.train_dataset(cfg, corpus, 4, seed=4)))["inputs"]
  assert not np.array_equal(other, b0["inputs"])


def test_process_shards_are_disjoint(tmp_path):
  cfg = DataConfig(
    kind="text", paths=(str(_write_corpus(tmp_path)),), seq_len=64, eval_fraction=0.0
  )
  corpus = pipeline.load_corpus(cfg, 256)
  n_windows = (len(corpus.train) - 1) // 64
  rows = []
  for p in range(2):
    it = iter(pipeline.train_dataset(cfg, corpus, 8, seed=0, process_index=p, process_count=2))
    batch = next(it)
    assert batch["inputs"].shape == (4, 64)  # global 8 over 2 processes
    rows.append({r.tobytes() for r in batch["inputs"]})
  assert not rows[0] & rows[1]
  assert n_windows >= 8
  with pytest.raises(DataError, match="not divisible"):
    pipeline.train_dataset(cfg, corpus, 7, seed=0, process_count=2)


def test_eval_batches_fixed(tmp_path):
  cfg = DataConfig(
    kind="text", paths=(str(_write_corpus(tmp_path)),), seq_len=32, eval_fraction=0.2
  )
  corpus = pipeline.load_corpus(cfg, 256)
  a = pipeline.eval_batches(cfg, corpus, 4, 3)
  b = pipeline.eval_batches(cfg, corpus, 4, 3)
  assert len(a) == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  held = corpus.held_out.astype(np.int32)
  np.testing.assert_array_equal(a[0]["inputs"][0], held[:32])


def test_flat_token_files(tmp_path):
  toks = np.arange(5000, dtype=np.uint16) % 1000
  np.save(tmp_path / "t.npy", toks)
  toks.astype("<u2").tofile(tmp_path / "t.bin")
  for name in ("t.npy", "t.bin"):
    cfg = DataConfig(kind="tokens", paths=(str(tmp_path / name),), seq_len=16, eval_fraction=0.1)
    corpus = pipeline.load_corpus(cfg, 1000)
    assert len(corpus.train) == 4500 and len(corpus.held_out) == 500
    batch = next(iter(pipeline.train_dataset(cfg, corpus, 2, seed=0)))
    np.testing.assert_array_equal((batch["inputs"] + 1) % 1000, batch["targets"])
  with pytest.raises(DataError, match="vocab_size=500"):
    pipeline.load_corpus(DataConfig(kind="tokens", paths=(str(tmp_path / "t.npy"),)), 500)
  with pytest.raises(DataError, match="does not exist.*missing.bin"):
    pipeline.load_corpus(DataConfig(kind="tokens", paths=(str(tmp_path / "missing.bin"),)), 10)
  with pytest.raises(DataError, match="needs data.paths"):
    pipeline.load_corpus(DataConfig(kind="tokens"), 10)


def test_array_record_documents_are_packed(tmp_path):
  docs = [np.full((n,), i + 1, np.int32) for i, n in enumerate([5, 17, 9, 30, 3, 12, 40, 8])]
  tokens.write_array_record(tmp_path / "docs.array_record", docs, token_dtype="uint16")
  cfg = DataConfig(
    kind="tokens",
    paths=(str(tmp_path / "docs.array_record"),),
    seq_len=10,
    eval_fraction=0.25,
    separator=0,
  )
  corpus = pipeline.load_corpus(cfg, 100)
  assert corpus.records
  it = iter(pipeline.train_dataset(cfg, corpus, 2, seed=0))
  seen = []
  for _ in range(6):
    b = next(it)
    assert b["inputs"].shape == (2, 10)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    seen.append(b["inputs"])
  seen = np.concatenate(seen)
  held_ids = {7, 8}  # the last 25% of records are held out
  assert not held_ids & set(np.unique(seen).tolist())
  assert {1, 2, 3, 4, 5, 6} <= set(np.unique(seen).tolist())
  ev = pipeline.eval_batches(cfg, corpus, 1, 0)
  assert ev and set(np.unique(np.concatenate([e["inputs"] for e in ev]))) <= {0, 7, 8}


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("task", synthetic.NIAH_TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_example(task, depth):
  L = 400
  ex = synthetic.niah_example(np.random.default_rng(1), task, L, depth)
  toks, w = ex["tokens"], ex["weights"]
  assert toks.shape == (L + 1,) and w.shape == (L,)
  s = text.decode(toks)
  n_ans = int(w.sum())
  answer = s[-n_ans:]
  assert np.all(w[L - n_ans :] == 1) and w[: L - n_ans].sum() == 0
  needle_at = s.find(answer)  # first occurrence is inside the needle
  assert needle_at < len(s) - n_ans
  frac = needle_at / (L + 1)
  if depth == 0.0:
    assert frac < 0.2
  if depth == 1.0:
    assert frac > 0.4
  # same (seed, index) -> same example
  again = synthetic.niah_example(np.random.default_rng(1), task, L, depth)
  np.testing.assert_array_equal(again["tokens"], toks)


def test_niah_too_short():
  with pytest.raises(ValueError, match="shorter than"):
    synthetic.niah_example(np.random.default_rng(0), "passkey", 40, 0.5)


def test_mqar_targets_are_the_paired_values():
  ex = synthetic.mqar_example(np.random.default_rng(0), 127, 8, 6, 64)
  toks, w = ex["tokens"], ex["weights"]
  pairs = dict(zip(toks[0:16:2].tolist(), toks[1:16:2].tolist()))
  assert len(pairs) == 8 and all(k < 32 <= v for k, v in pairs.items())
  pos = np.flatnonzero(w)
  assert len(pos) == 6
  for p in pos:  # input at p is a key; the target (token p+1) is its value
    assert pairs[int(toks[p])] == int(toks[p + 1])


def test_synthetic_pipeline_is_deterministic():
  cfg = DataConfig(kind="mqar", seq_len=64, mqar_pairs=4, mqar_queries=4)
  corpus = pipeline.load_corpus(cfg, 32)
  a = next(iter(pipeline.train_dataset(cfg, corpus, 3, seed=5)))
  b = next(iter(pipeline.train_dataset(cfg, corpus, 3, seed=5)))
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert a["weights"].sum() == 12
  ev = pipeline.eval_batches(cfg, corpus, 3, 2)
  assert not np.array_equal(ev[0]["inputs"], a["inputs"])  # held-out stream differs


def test_no_held_out_data_is_explained(tmp_path):
  cfg = DataConfig(
    kind="text", paths=(str(_write_corpus(tmp_path)),), seq_len=32, eval_fraction=0.0
  )
  corpus = pipeline.load_corpus(cfg, 256)
  with pytest.raises(DataError, match="held-out data has 0 tokens.*eval_fraction"):
    pipeline.eval_batches(cfg, corpus, 4, 2)
