"""grain input pipelines: deterministic, shuffled, per-process sharded, checkpointable.

Every pipeline yields dict batches of numpy arrays (B = per-process batch, T = seq_len):
  inputs  int32[B, T]    tokens fed to the model
  targets int32[B, T]    next tokens
  weights float32[B, T]  1 where the target counts toward the loss / score

Packing: documents (text files, token documents, ArrayRecord records) are concatenated
with a separator and cut into fixed windows of T + 1 tokens (no padding, no waste).
Flat streams are random-access `grain.MapDataset`s, so the iterator state is one index
and a resumed run sees exactly the batches an uninterrupted one would. ArrayRecord
documents are packed by `grain.experimental.ConcatThenSplitIterDataset`.

Multi-host: process p of P reads only windows p, p + P, p + 2P, … of the shuffled
stream (synthetic kinds: examples p, p + P, …) and yields its B = global_batch / P
rows, so every global batch holds the same examples for any P (ArrayRecord documents
are split between processes before packing, so there the split depends on P). The
trainer assembles the global batch with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import grain
import numpy as np

from titans_jax.data import synthetic, text
from titans_jax.data import tokens as token_files
from titans_jax.data.text import DataError


class WindowSource(grain.sources.RandomAccessDataSource):
  """Window i of a flat token stream: `stream[i*T : i*T + T + 1]` (T + 1 tokens)."""

  def __init__(self, stream: np.ndarray, seq_len: int):
    self._stream = stream
    self._seq_len = seq_len
    self._n = (len(stream) - 1) // seq_len

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> np.ndarray:
    start = int(index) * self._seq_len
    return np.asarray(self._stream[start : start + self._seq_len + 1], dtype=np.int32)

  def __repr__(self) -> str:  # grain puts this in its debug output / checkpoints
    return f"WindowSource(n={self._n}, seq_len={self._seq_len})"


def _to_example(window: np.ndarray) -> dict[str, np.ndarray]:
  return {
    "inputs": window[:-1],
    "targets": window[1:],
    "weights": np.ones((window.shape[0] - 1,), np.float32),
  }


def _synthetic_to_example(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  t = ex["tokens"]
  return {"inputs": t[:-1], "targets": t[1:], "weights": ex["weights"]}


@dataclasses.dataclass
class Corpus:
  """Train and held-out token streams (flat arrays) or record sources, plus metadata."""

  train: Any
  held_out: Any
  vocab_size: int
  byte_level: bool
  records: bool = False


def load_corpus(data_cfg, vocab_size: int) -> Corpus:
  """Reads / memory-maps the data named by a DataConfig (synthetic kinds: no files).

  Raises:
    DataError: a path is missing, a directory has no text, a token id exceeds
      `vocab_size`, or the data is too short for one sequence.
  """
  d = data_cfg
  if d.kind == "text":
    train, held = text.load_text_corpus(
      d.paths, d.extensions, d.eval_paths, d.eval_fraction, d.split_seed, d.separator
    )
    corpus = Corpus(train, held, text.BYTE_VOCAB, byte_level=True)
  elif d.kind == "tokens":
    if not d.paths:
      raise DataError(
        "data.kind='tokens' needs data.paths (.npy, .bin or .array_record "
        "files), e.g. --set data.paths=/data/train.bin"
      )
    token_files.check_metadata(d.paths, vocab_size, d.token_dtype)  # prepare's meta.json
    is_rec = [token_files.is_record_path(p) for p in d.paths]
    if any(is_rec) and not all(is_rec):
      raise DataError(f"data.paths mixes ArrayRecord and flat token files: {list(d.paths)}")
    if all(is_rec):
      src = token_files.record_source(d.paths)
      if d.eval_paths:
        held = token_files.record_source(d.eval_paths)
        corpus = Corpus(src, held, vocab_size, byte_level=False, records=True)
      else:
        n_eval = int(round(len(src) * d.eval_fraction)) if d.eval_fraction > 0 else 0
        n_eval = min(max(n_eval, 1 if d.eval_fraction > 0 and len(src) > 1 else 0), len(src) - 1)
        base = grain.MapDataset.source(src)
        corpus = Corpus(
          base[: len(src) - n_eval],
          base[len(src) - n_eval :],
          vocab_size,
          byte_level=False,
          records=True,
        )
    else:
      stream = token_files.concat_flat(d.paths, d.token_dtype)
      token_files.check_vocab(stream, vocab_size, ", ".join(d.paths))
      if d.eval_paths:
        held = token_files.concat_flat(d.eval_paths, d.token_dtype)
        token_files.check_vocab(held, vocab_size, ", ".join(d.eval_paths))
        train = stream
      else:
        n_eval = int(len(stream) * d.eval_fraction)
        train, held = stream[: len(stream) - n_eval], stream[len(stream) - n_eval :]
      corpus = Corpus(train, held, vocab_size, byte_level=False)
  elif d.kind in ("niah", "mqar"):
    corpus = Corpus(
      None, None, vocab_size if d.kind == "mqar" else text.BYTE_VOCAB, byte_level=d.kind == "niah"
    )
  else:
    raise DataError(f"unknown data.kind {d.kind!r}")
  if not corpus.records and corpus.train is not None and len(corpus.train) < d.seq_len + 1:
    raise DataError(
      f"training data has {len(corpus.train)} tokens, fewer than one "
      f"sequence of data.seq_len + 1 = {d.seq_len + 1}"
    )
  return corpus


def _per_process_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise DataError(
      f"train.batch_size={global_batch} is not divisible by the {process_count} processes"
    )
  return global_batch // process_count


def _synthetic_dataset(data_cfg, vocab_size: int, seed: int) -> grain.MapDataset:
  d = data_cfg
  ds = grain.MapDataset.range(1 << 40)
  if d.kind == "niah":

    def make(i):
      rng = synthetic.example_rng(seed, int(i))
      return synthetic.niah_example(rng, d.niah_task, d.seq_len, float(rng.random()))
  else:

    def make(i):
      return synthetic.mqar_example(
        synthetic.example_rng(seed, int(i)), d.seq_len, d.mqar_pairs, d.mqar_queries, vocab_size
      )

  return ds.map(make).map(_synthetic_to_example)


def _vocab_guard(vocab_size: int):
  def check(batch):
    hi = int(batch["inputs"].max(initial=0))
    hi = max(hi, int(batch["targets"].max(initial=0)))
    if hi >= vocab_size:
      raise DataError(f"token id {hi} in the data is >= model.vocab_size={vocab_size}")
    return batch

  return check


def _record_stream(ds: grain.MapDataset, data_cfg, seed: Optional[int], repeat: bool):
  """Decoded ArrayRecord documents (+ separator), packed into T + 1 windows."""
  d = data_cfg
  sep = d.separator

  def decode(rec):
    doc = token_files.decode_record(rec, d.token_dtype)
    if sep >= 0:
      doc = np.concatenate([doc, np.asarray([sep], np.int32)])
    return {"tokens": doc}

  if seed is not None:
    ds = ds.shuffle(seed)
  if repeat:
    ds = ds.repeat()
  it = ds.map(decode).to_iter_dataset()
  it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={"tokens": d.seq_len + 1})
  return it.map(lambda ex: _to_example(np.asarray(ex["tokens"], np.int32)))


def train_dataset(
  data_cfg,
  corpus: Corpus,
  global_batch: int,
  *,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """The infinite, shuffled, per-process training stream of batches.

  Args:
    data_cfg: a DataConfig.
    corpus: from `load_corpus`.
    global_batch: sequences per step over all processes.
    seed: shuffle seed (fixes the order of every epoch).
    process_index, process_count: this process's shard of the data.
  """
  d = data_cfg
  batch = _per_process_batch(global_batch, process_count)
  if d.kind in ("niah", "mqar"):
    ds = _synthetic_dataset(d, corpus.vocab_size, seed)
    ds = ds[process_index::process_count].batch(batch, drop_remainder=True)
    return ds.to_iter_dataset()
  if corpus.records:
    base = corpus.train
    if not isinstance(base, grain.MapDataset):
      base = grain.MapDataset.source(base)
    base = base[process_index::process_count]
    it = _record_stream(base, d, seed, repeat=True)
    return it.batch(batch, drop_remainder=True).map(_vocab_guard(corpus.vocab_size))
  ds = grain.MapDataset.source(WindowSource(corpus.train, d.seq_len))
  if len(ds) // process_count < batch:
    raise DataError(
      f"training data holds {len(ds) // process_count} sequences of "
      f"{d.seq_len} tokens per process, fewer than one batch of {batch}"
    )
  # Shuffle the one global stream, then take every P-th window: global batch b is the
  # same set of windows whatever the number of processes (P = 1: the plain stream).
  ds = ds.repeat().shuffle(seed)[process_index::process_count]
  ds = ds.map(_to_example).batch(batch, drop_remainder=True)
  return ds.to_iter_dataset()


def eval_batches(
  data_cfg,
  corpus: Corpus,
  batch_size: int,
  max_batches: int,
  *,
  seed: int = 1_000_003,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """Held-out batches in a fixed order (the same on every call); 0 = all of them.

  Synthetic kinds draw from a seed disjoint from training's. The last partial batch is
  dropped so every batch has the same shape (one compilation).
  """
  d = data_cfg
  if d.kind in ("niah", "mqar"):
    n = max_batches if max_batches > 0 else 16
    ds = _synthetic_dataset(d, corpus.vocab_size, seed)[process_index::process_count]
  elif corpus.records:
    base = corpus.held_out
    if not isinstance(base, grain.MapDataset):
      base = grain.MapDataset.source(base)
    it = _record_stream(base[process_index::process_count], d, None, repeat=False)
    it = it.batch(batch_size, drop_remainder=True)
    out = []
    for b in it:
      out.append(b)
      if max_batches and len(out) >= max_batches:
        break
    return out
  else:
    held = corpus.held_out
    if held is None or len(held) < d.seq_len + 1:
      raise DataError(
        f"held-out data has {0 if held is None else len(held)} tokens, "
        f"fewer than one sequence of {d.seq_len + 1}; raise "
        "data.eval_fraction or name data.eval_paths"
      )
    ds = grain.MapDataset.source(WindowSource(held, d.seq_len)).map(_to_example)
    ds = ds[process_index::process_count]
    n = len(ds) // batch_size
    if n == 0:  # fewer windows than a batch: one smaller batch
      batch_size, n = len(ds), 1
    n = min(n, max_batches) if max_batches > 0 else n
  ds = ds.batch(batch_size, drop_remainder=True)
  return [ds[i] for i in range(min(n, len(ds)))]
