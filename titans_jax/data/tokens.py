"""Pre-tokenised corpora: flat token memmaps (.npy / .bin) and ArrayRecord documents.

Formats:
  * `.npy`: a 1-D integer array of token ids (memory-mapped, any integer dtype).
  * `.bin`: raw little-endian token ids of `token_dtype` (nanoGPT / MaxText style).
  * `.array_record`: one document per record, each record the raw little-endian bytes
    of its token ids in `token_dtype` (write with `write_array_record`).

Any vocabulary size works; ids are checked against the model's vocabulary lazily (a
sample at load time, every batch in the pipeline). Files written by
`python -m titans_jax.data.prepare` have a `meta.json` beside them (tokenizer, vocabulary
size, dtype); `check_metadata` holds the config to it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np

from titans_jax.data.text import DataError

FLAT_SUFFIXES = (".npy", ".bin")
RECORD_SUFFIXES = (".array_record", ".arrayrecord")


def _check(path: str | pathlib.Path) -> pathlib.Path:
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise DataError(f"token file does not exist: {p}")
  if p.is_dir():
    raise DataError(f"expected a token file, got a directory: {p}")
  if p.stat().st_size == 0:
    raise DataError(f"token file is empty: {p}")
  return p


def load_flat(path: str | pathlib.Path, token_dtype: str = "uint16") -> np.ndarray:
  """A read-only 1-D memmap of token ids from a .npy or .bin file."""
  p = _check(path)
  if p.suffix == ".npy":
    arr = np.load(p, mmap_mode="r")
  elif p.suffix == ".bin":
    arr = np.memmap(p, dtype=np.dtype(token_dtype).newbyteorder("<"), mode="r")
  else:
    raise DataError(f"unsupported flat token file (want .npy or .bin): {p}")
  if arr.ndim != 1:  # flattening would silently join rows (documents) end to end
    raise DataError(
      f"token file {p} holds a {arr.ndim}-D array of shape {arr.shape}; it "
      "must be 1-D (one stream of token ids: save arr.reshape(-1) if the rows "
      "really are consecutive)"
    )
  if not np.issubdtype(arr.dtype, np.integer):
    raise DataError(f"token file {p} holds {arr.dtype}, not integers")
  if arr.size < 2:
    raise DataError(f"token file {p} holds fewer than 2 tokens")
  return arr


def concat_flat(paths: Sequence[str], token_dtype: str) -> np.ndarray:
  """One flat stream from several .npy/.bin files (memmap when there is only one)."""
  arrays = [load_flat(p, token_dtype) for p in paths]
  return arrays[0] if len(arrays) == 1 else np.concatenate([np.asarray(a) for a in arrays])


def check_vocab(tokens: np.ndarray, vocab_size: int, name: str, sample: int = 1 << 20) -> None:
  """Raises DataError if a (sampled) token id falls outside [0, vocab_size)."""
  if tokens.size == 0:
    return
  step = max(1, tokens.size // sample)
  view = np.asarray(tokens[::step])
  lo, hi = int(view.min()), int(view.max())
  if lo < 0 or hi >= vocab_size:
    raise DataError(f"{name}: token ids span [{lo}, {hi}] but model.vocab_size={vocab_size}")


def write_array_record(
  path: str | pathlib.Path, docs: Iterable[np.ndarray], token_dtype: str = "uint16"
) -> None:
  """Writes documents (1-D token arrays) as one ArrayRecord file, one record each."""
  from array_record.python import array_record_module as arm

  writer = arm.ArrayRecordWriter(str(path), "group_size:1")
  dt = np.dtype(token_dtype).newbyteorder("<")
  for doc in docs:
    writer.write(np.asarray(doc, dtype=dt).tobytes())
  writer.close()


def record_source(paths: Sequence[str]):
  """A grain ArrayRecordDataSource over the named files (checked to exist first)."""
  import grain

  checked = [str(_check(p)) for p in paths]
  for p in checked:
    if not p.endswith(RECORD_SUFFIXES):
      raise DataError(f"not an ArrayRecord file (want .array_record): {p}")
  src = grain.sources.ArrayRecordDataSource(checked)
  if len(src) == 0:
    raise DataError(f"ArrayRecord files hold no records: {checked}")
  return src


def decode_record(record: bytes, token_dtype: str) -> np.ndarray:
  return np.frombuffer(record, dtype=np.dtype(token_dtype).newbyteorder("<")).astype(np.int32)


def is_record_path(path: str) -> bool:
  return str(path).endswith(RECORD_SUFFIXES)


META_NAME = "meta.json"  # written by titans_jax.data.prepare next to its shards


def read_metadata(paths: Sequence[str]) -> Optional[dict]:
  """The prepare metadata beside the first of `paths` (None if there is none)."""
  if not paths:
    return None
  meta = pathlib.Path(paths[0]).expanduser().parent / META_NAME
  if not meta.is_file():
    return None
  try:
    return json.loads(meta.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{meta}: not valid JSON ({e.msg})") from None


def check_metadata(paths: Sequence[str], vocab_size: int, token_dtype: str) -> Optional[dict]:
  """Stops on a model vocabulary smaller than the tokenizer's or a dtype other than the
  one the shards were written in (a larger, padded model vocabulary is fine)."""
  meta = read_metadata(paths)
  if meta is None:
    return None
  where = pathlib.Path(paths[0]).expanduser().parent / META_NAME
  if vocab_size < meta["vocab_size"]:
    raise DataError(
      f"model.vocab_size={vocab_size} is smaller than the tokenizer's "
      f"vocab_size={meta['vocab_size']} in {where}"
    )
  if np.dtype(token_dtype) != np.dtype(meta["token_dtype"]):
    raise DataError(
      f"data.token_dtype={token_dtype} but the tokens in {where} are "
      f"token_dtype={meta['token_dtype']}"
    )
  return meta
