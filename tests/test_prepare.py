"""Text → tokens → a trained token model → decoded text: `titans_jax.data.prepare` with a
BPE tokenizer trained here by `tokenizers` (no download), its meta.json held against the
config, and bad input stopping with nothing written. Training on the prepared tokens and
decoding samples is in test_lm_eval.py, which shares that one trained run.
"""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from titans_jax.data import pipeline, prepare  # noqa: E402
from titans_jax.data import tokenizer as tokenizer_lib
from titans_jax.data.text import DataError  # noqa: E402

import _text_corpus as tc  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  c = tc.write_corpus(root / "corpus")
  return c, tc.train_bpe(c, root / "tok.json")


def _split_docs(ids: np.ndarray, sep: int) -> list[list[int]]:
  ends = np.flatnonzero(ids == sep)
  starts = np.concatenate([[0], ends[:-1] + 1])
  return [ids[s:e].tolist() for s, e in zip(starts, ends)]


def test_documents_whole_split_deterministic_workers_agree(corpus, tmp_path):
  src, tok_path = corpus
  a = prepare.prepare(
    [str(src)], str(tok_path), str(tmp_path / "a"), eval_fraction=0.3, workers=1, progress=False
  )
  b = prepare.prepare(
    [str(src)],
    str(tok_path),
    str(tmp_path / "b"),
    eval_fraction=0.3,
    workers=2,
    progress=False,
    shard_tokens=500,
  )
  tok = tokenizer_lib.load(tok_path)
  sep = a["separator"]
  assert sep == tok.eos_id and a["vocab_size"] == tc.VOCAB and a["token_dtype"] == "uint16"
  assert a["tokenizer"]["sha256"] == tokenizer_lib.file_sha256(tok_path)
  # Every document, whole, in file / line order, on the side its hash picks.
  docs = [
    (k, t)
    for k, t in prepare.iter_documents(
      sorted(src.glob("*")), "text", {f: src for f in src.glob("*")}
    )
  ]
  for side, flag in (("train", False), ("held_out", True)):
    ids = np.fromfile(tmp_path / "a" / f"{side}_00000.bin", dtype="<u2").astype(np.int64)
    want = [tok.encode(t) for k, t in docs if prepare.held_out(k, 0.3, 0) == flag]
    assert _split_docs(ids, sep) == want
    assert a[side]["documents"] == len(want) > 0
    assert a[side]["tokens"] == sum(map(len, want)) + len(want)
    # More workers and smaller shards: the same stream.
    shards = [np.fromfile(tmp_path / "b" / f, dtype="<u2") for f in b[side]["files"]]
    assert len(shards) == -(-b[side]["tokens"] // 500)
    np.testing.assert_array_equal(np.concatenate(shards), ids)
  held = a["held_out"]
  assert a["bytes_per_token"] == pytest.approx(held["bytes"] / held["tokens"])
  assert json.loads((tmp_path / "a" / "meta.json").read_text()) == a


def test_bad_input_one_line_error_nothing_written(corpus, tmp_path, capsys):
  src, tok_path = corpus
  out = tmp_path / "out"
  bad_jsonl = tmp_path / "bad.jsonl"
  bad_jsonl.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "a.txt").write_text("")
  cases = [
    ([str(src)], str(tmp_path / "missing.json"), "missing.json"),
    ([str(bad_jsonl)], str(tok_path), f"{bad_jsonl}:2: no field 'text'"),
    ([str(empty)], str(tok_path), str(empty)),
    ([str(empty / "a.txt")], str(tok_path), "no text found"),
    ([str(tmp_path / "nope")], str(tok_path), "nope"),
  ]
  for paths, tok, needle in cases:
    with pytest.raises(DataError, match=None) as e:
      prepare.prepare(paths, tok, str(out), progress=False, workers=1)
    assert needle in str(e.value) and "\n" not in str(e.value), e.value
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert prepare.main([*paths, "--tokenizer", tok, "--out", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not out.exists()


def test_metadata_mismatch_names_both(corpus, tmp_path):
  src, tok_path = corpus
  prepare.prepare(
    [str(src)], str(tok_path), str(tmp_path / "d"), eval_fraction=0.3, workers=1, progress=False
  )
  data = tc.token_config(tmp_path / "d").data
  assert pipeline.load_corpus(data, tc.VOCAB).train.dtype == np.dtype("<u2")
  with pytest.raises(DataError, match=r"model.vocab_size=256 .*vocab_size=300"):
    pipeline.load_corpus(data, 256)
  with pytest.raises(DataError, match=r"data.token_dtype=uint32 .*token_dtype=uint16"):
    pipeline.load_corpus(dataclasses.replace(data, token_dtype="uint32"), tc.VOCAB)


def test_sentencepiece_model(corpus, tmp_path):
  spm = pytest.importorskip("sentencepiece")
  src, _ = corpus
  spm.SentencePieceTrainer.train(
    input=str(src / "doc00.txt"),
    model_prefix=str(tmp_path / "sp"),
    vocab_size=60,
    model_type="bpe",
    eos_id=1,
    bos_id=-1,
    minloglevel=2,
  )
  meta = prepare.prepare(
    [str(src)],
    str(tmp_path / "sp.model"),
    str(tmp_path / "d"),
    eval_fraction=0.3,
    workers=1,
    progress=False,
  )
  tok = tokenizer_lib.load(tmp_path / "sp.model")
  assert meta["tokenizer"]["kind"] == "sentencepiece" and meta["vocab_size"] == 60
  assert meta["separator"] == 1
  ids = np.fromfile(tmp_path / "d" / "train_00000.bin", dtype="<u2").astype(np.int64)
  first = _split_docs(ids, 1)[0]  # doc00.txt, whole
  assert first == tok.encode((src / "doc00.txt").read_text())
  assert tok.decode(first).split() == (src / "doc00.txt").read_text().split()


def test_eval_tokenizer_from_metadata_is_checked(corpus, tmp_path):
  src, tok_path = corpus
  tok_copy = tmp_path / "tok.json"
  tok_copy.write_bytes(tok_path.read_bytes())
  meta = prepare.prepare(
    [str(src)], str(tok_copy), str(tmp_path / "d"), eval_fraction=0.3, workers=1, progress=False
  )
  assert tokenizer_lib.from_metadata(meta).encode("the cat") == tokenizer_lib.load(tok_path).encode(
    "the cat"
  )
  tok_copy.write_text(tok_copy.read_text().replace('"cat"', '"cta"', 1))
  with pytest.raises(DataError, match="has changed since the tokens were written"):
    tokenizer_lib.from_metadata(meta)
  tok_copy.unlink()
  with pytest.raises(DataError, match=f"tokenizer file does not exist: {tok_copy}"):
    tokenizer_lib.from_metadata(meta)
