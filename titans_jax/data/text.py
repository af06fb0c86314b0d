"""Byte-level text corpora: file discovery, a deterministic held-out split, packing.

Every byte is a token (vocabulary 256). Documents are packed end to end into one flat
uint8 stream (with an optional separator byte between files); fixed-length windows of
that stream are the training sequences (see `pipeline.py`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Sequence

import numpy as np

BYTE_VOCAB = 256


class DataError(ValueError):
  """Input data is missing or unusable; the message names the path."""


def stdlib_dir() -> pathlib.Path:
  """The Python standard library's source directory (present on every machine)."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def find_text_files(
  paths: Sequence[str | pathlib.Path], extensions: Sequence[str] = (".py",)
) -> list[pathlib.Path]:
  """Files named directly plus files with `extensions` under named directories.

  Sorted, so the result (and everything derived from it) is the same on every machine
  with the same files. An empty `paths` means the standard library's own source
  (skipping site-packages).

  Raises:
    DataError: a path does not exist, or a directory holds no matching file.
  """
  if not paths:
    paths = [stdlib_dir()]
  files: list[pathlib.Path] = []
  for p in paths:
    p = pathlib.Path(p).expanduser()
    if not p.exists():
      raise DataError(f"data path does not exist: {p}")
    if p.is_file():
      files.append(p)
      continue
    found = []
    for root, dirs, names in os.walk(p):
      dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)  # prune site-packages
      for n in names:
        f = pathlib.Path(root) / n
        if f.suffix in tuple(extensions) and f.is_file() and f.stat().st_size > 0:
          found.append(f)
    if not found:
      raise DataError(
        f"data directory has no non-empty files with extensions {tuple(extensions)}: {p}"
      )
    files.extend(sorted(found))
  return files


def is_held_out(path: pathlib.Path, fraction: float, seed: int) -> bool:
  """Deterministic per-file split: a hash of the file *name and parent* picks held-out."""
  key = f"{seed}:{path.parent.name}/{path.name}".encode()
  h = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
  return (h % 1_000_000) < fraction * 1_000_000


def split_files(
  files: Sequence[pathlib.Path], fraction: float, seed: int
) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(train, held_out) file lists; at least one file on each side when possible."""
  held = [f for f in files if is_held_out(f, fraction, seed)]
  train = [f for f in files if not is_held_out(f, fraction, seed)]
  if fraction > 0 and not held and len(files) > 1:
    held, train = [train[-1]], train[:-1]
  if not train and held:
    train, held = held, []
  return train, held


def read_bytes(files: Sequence[pathlib.Path], separator: int = 0) -> np.ndarray:
  """Concatenates file contents as one uint8 stream, `separator` between files (-1: none)."""
  chunks = []
  sep = b"" if separator < 0 else bytes([separator])
  for f in files:
    chunks.append(f.read_bytes())
    if sep:
      chunks.append(sep)
  return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def load_text_corpus(
  paths: Sequence[str],
  extensions: Sequence[str],
  eval_paths: Sequence[str],
  eval_fraction: float,
  split_seed: int,
  separator: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """(train_bytes, eval_bytes) as flat uint8 arrays.

  With `eval_paths` the held-out data is exactly those files; otherwise a fraction of
  the files of `paths`, chosen by a hash of their names.
  """
  files = find_text_files(paths, extensions)
  if eval_paths:
    train_files, eval_files = files, find_text_files(eval_paths, extensions)
  else:
    train_files, eval_files = split_files(files, eval_fraction, split_seed)
  train = read_bytes(train_files, separator)
  held = read_bytes(eval_files, separator) if eval_files else np.zeros((0,), np.uint8)
  if train.size == 0:
    raise DataError(f"no text found in {list(paths) or [str(stdlib_dir())]}")
  return train, held


def encode(text: str) -> np.ndarray:
  """UTF-8 bytes of `text` as int32 token ids."""
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def decode(tokens: Sequence[int]) -> str:
  """Token ids (bytes) back to text; invalid UTF-8 is replaced, ids >255 dropped."""
  return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")
