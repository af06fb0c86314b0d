"""Text → token shards for `data.kind=tokens`: tokenise text files, directories and JSONL
with a local tokenizer, in several worker processes, into `.bin` memmap shards plus a
`meta.json` that train.py and eval.py read.

  python -m titans_jax.data.prepare corpus/ extra.jsonl --tokenizer tok.json --out data/tok
  python train.py --config configs/paper_340m.py --set data.kind=tokens \
      --set data.paths=data/tok/train_00000.bin --set data.eval_paths=data/tok/held_out_00000.bin

Every text file is one document; every JSONL line is one document (its `--jsonl_field`).
Documents are written whole (no truncation), each followed by the separator token.
Whether a document is held out is a hash of (split seed, file, line), so the split is the
same on every run and machine, and independent of the number of workers.

Bad input (a missing tokenizer or path, a JSONL line without the field, a corpus with no
text) is a one-line error naming it; nothing is written (output goes to a temporary
directory that is renamed only on success).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

from titans_jax.data import tokenizer as tokenizer_lib
from titans_jax.data.text import DataError, find_text_files

FORMAT = "titans_jax.tokens/1"
META_NAME = "meta.json"
DEFAULT_EXTENSIONS = (".txt", ".md", ".jsonl")
_BATCH_BYTES = 1 << 20  # documents handed to a worker at a time (about this much text)


def held_out(key: str, fraction: float, seed: int) -> bool:
  """Deterministic per-document split from a hash of the seed and the document's key."""
  h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
  return (h % 1_000_000) < fraction * 1_000_000


def iter_documents(
  files: Sequence[pathlib.Path], jsonl_field: str, root_of: dict
) -> Iterator[tuple[str, str]]:
  """(key, text) per document: a whole text file, or one JSONL line's field.

  Raises:
    DataError: a JSONL line is not JSON, not an object, or lacks the (string) field.
  """
  for f in files:
    name = f.relative_to(root_of[f]).as_posix() if root_of.get(f) else f.name
    if f.suffix == ".jsonl":
      with open(f, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
          if not line.strip():
            continue
          try:
            rec = json.loads(line)
          except json.JSONDecodeError as e:
            raise DataError(f"{f}:{n}: not valid JSON ({e.msg})") from None
          if not isinstance(rec, dict) or jsonl_field not in rec:
            raise DataError(f"{f}:{n}: no field {jsonl_field!r} (set --jsonl_field)")
          if not isinstance(rec[jsonl_field], str):
            raise DataError(
              f"{f}:{n}: field {jsonl_field!r} is {type(rec[jsonl_field]).__name__}, not a string"
            )
          yield f"{name}#{n}", rec[jsonl_field]
    else:
      yield name, f.read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------ workers ---
_TOKENIZER: Optional[tokenizer_lib.Tokenizer] = None


def _init_worker(path: str) -> None:
  global _TOKENIZER
  _TOKENIZER = tokenizer_lib.load(path)


def _encode_batch(batch: list[tuple[bool, str]]) -> list[tuple[bool, np.ndarray, int]]:
  ids = _TOKENIZER.encode_batch([t for _, t in batch])
  return [(h, np.asarray(i, np.int64), len(t.encode("utf-8"))) for (h, t), i in zip(batch, ids)]


def _ordered_map(pool, fn, items, depth: int):
  """pool.imap with at most `depth` batches in flight (imap reads its whole input ahead,
  i.e. the whole corpus into memory); results in input order, so the output does not
  depend on the number of workers."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.apply_async(fn, (item,)))
    if len(pending) >= depth:
      yield pending.popleft().get()
  while pending:
    yield pending.popleft().get()


def _jax_started() -> bool:
  """fork is cheap but unsafe once jax's runtime has started threads; spawn then."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True


def _batches(docs, fraction: float, seed: int, counts: dict):
  batch, size = [], 0
  for key, text in docs:
    if not text:
      counts["empty_documents"] += 1
      continue
    batch.append((held_out(key, fraction, seed), text))
    size += len(text)
    if size >= _BATCH_BYTES or len(batch) >= 256:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


class ShardWriter:
  """Appends token ids to `<prefix>_00000.bin`, `_00001.bin`, … of at most `shard_tokens`."""

  def __init__(self, outdir: pathlib.Path, prefix: str, dtype: np.dtype, shard_tokens: int):
    self.outdir, self.prefix, self.dtype, self.shard_tokens = outdir, prefix, dtype, shard_tokens
    self.files: list[str] = []
    self.tokens = self.documents = self.bytes = 0
    self._fh, self._in_shard = None, 0

  def write(self, ids: np.ndarray) -> None:
    while ids.size:
      if self._fh is None or self._in_shard >= self.shard_tokens:
        self._open()
      take = min(ids.size, self.shard_tokens - self._in_shard)
      self._fh.write(ids[:take].astype(self.dtype).tobytes())
      self._in_shard += take
      self.tokens += take
      ids = ids[take:]

  def _open(self) -> None:
    self.close()
    name = f"{self.prefix}_{len(self.files):05d}.bin"
    self.files.append(name)
    self._fh, self._in_shard = open(self.outdir / name, "wb"), 0

  def close(self) -> None:
    if self._fh is not None:
      self._fh.close()
      self._fh = None

  def summary(self) -> dict:
    return {
      "files": self.files,
      "documents": self.documents,
      "tokens": self.tokens,
      "bytes": self.bytes,
    }


def token_dtype_for(vocab_size: int) -> str:
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def resolve_separator(tok: tokenizer_lib.Tokenizer, separator: str) -> int:
  """`auto`: the tokenizer's end-of-text token; `none`: -1; else an id or token string."""
  if separator == "none":
    return -1
  if separator == "auto":
    if tok.eos_id is None:
      raise DataError(
        f"tokenizer {tok.path} has no end-of-text token "
        f"({', '.join(tokenizer_lib.EOS_NAMES)}); pass --separator ID or none"
      )
    return int(tok.eos_id)
  if separator.lstrip("-").isdigit():
    sep = int(separator)
  else:
    ids = tok.encode(separator)
    if len(ids) != 1:
      raise DataError(f"--separator {separator!r} is {len(ids)} tokens, not one")
    sep = ids[0]
  if not 0 <= sep < tok.vocab_size:
    raise DataError(f"--separator {sep} is outside the vocabulary [0, {tok.vocab_size})")
  return sep


def prepare(
  paths: Sequence[str],
  tokenizer: str,
  out: str,
  *,
  jsonl_field: str = "text",
  extensions: Sequence[str] = DEFAULT_EXTENSIONS,
  eval_fraction: float = 0.01,
  split_seed: int = 0,
  separator: str = "auto",
  workers: int = 0,
  shard_tokens: int = 1 << 30,
  overwrite: bool = False,
  progress: bool = True,
) -> dict:
  """Tokenises `paths` into `out`/{train,held_out}_NNNNN.bin + meta.json; returns the meta.

  Raises:
    DataError: missing tokenizer / input, bad JSONL line, empty corpus, `out` not empty.
  """
  if not paths:
    raise DataError("no input paths given")
  if not 0.0 <= eval_fraction < 1.0:
    raise DataError(f"--eval_fraction must be in [0, 1), got {eval_fraction}")
  if shard_tokens < 1:
    raise DataError(f"--shard_tokens must be >= 1, got {shard_tokens}")
  tok = tokenizer_lib.load(tokenizer)
  if isinstance(tok, tokenizer_lib.ByteTokenizer):
    raise DataError("byte-level text needs no preparation: train with data.kind=text")
  sep = resolve_separator(tok, separator)
  files = find_text_files(paths, tuple(extensions))
  root_of = {}
  for p in paths:
    p = pathlib.Path(p).expanduser()
    if p.is_dir():
      for f in files:
        if f.is_relative_to(p):
          root_of.setdefault(f, p)
  outdir = pathlib.Path(out).expanduser().absolute()
  if outdir.exists() and any(outdir.iterdir()) and not overwrite:
    raise DataError(f"output directory is not empty: {outdir} (pass --overwrite)")
  dtype = np.dtype(token_dtype_for(tok.vocab_size)).newbyteorder("<")
  workers = workers or min(8, os.cpu_count() or 1)

  outdir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
  writers = {
    False: ShardWriter(tmp, "train", dtype, shard_tokens),
    True: ShardWriter(tmp, "held_out", dtype, shard_tokens),
  }
  counts = {"empty_documents": 0}
  sep_arr = np.asarray([sep] if sep >= 0 else [], np.int64)
  try:
    from tqdm import tqdm

    # bytes of text; JSONL files also hold keys and other fields, so no total for them
    total = (
      None if any(f.suffix == ".jsonl" for f in files) else sum(f.stat().st_size for f in files)
    )
    bar = tqdm(
      total=total,
      unit="B",
      unit_scale=True,
      desc="tokenising",
      disable=not progress,
      file=sys.stderr,
    )
    batches = _batches(
      iter_documents(files, jsonl_field, root_of), eval_fraction, split_seed, counts
    )
    if workers > 1:
      ctx = multiprocessing.get_context("spawn" if _jax_started() else "fork")
      pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.path,))
      results = _ordered_map(pool, _encode_batch, batches, depth=4 * workers)
    else:
      pool = None
      _init_worker(tok.path)
      results = map(_encode_batch, batches)
    try:
      for result in results:
        for is_held, ids, nbytes in result:
          if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
            raise DataError(
              f"tokenizer {tok.path} produced id {int(ids.max())} outside its "
              f"vocabulary of {tok.vocab_size}"
            )
          w = writers[is_held]
          w.write(np.concatenate([ids, sep_arr]))
          w.documents += 1
          w.bytes += nbytes + (1 if sep >= 0 else 0)  # the separator stands for one byte
          bar.update(nbytes)
    finally:
      if pool is not None:
        pool.terminate()
      bar.close()
    for w in writers.values():
      w.close()
    train, held = writers[False].summary(), writers[True].summary()
    if train["tokens"] == 0:
      raise DataError(f"no text found in {list(paths)} (every document is empty or held out)")
    ref = held if held["tokens"] else train
    meta = {
      "format": FORMAT,
      "tokenizer": {
        "path": str(pathlib.Path(tok.path).absolute()),
        "kind": tok.kind,
        "sha256": tokenizer_lib.file_sha256(tok.path),
      },
      "vocab_size": tok.vocab_size,
      "token_dtype": dtype.name,
      "separator": sep,
      "sources": [str(pathlib.Path(p).expanduser().absolute()) for p in paths],
      "jsonl_field": jsonl_field,
      "eval_fraction": eval_fraction,
      "split_seed": split_seed,
      "train": train,
      "held_out": held,
      "empty_documents": counts["empty_documents"],
      # measured on the held-out documents (train when nothing is held out)
      "bytes_per_token": ref["bytes"] / ref["tokens"],
    }
    (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    if outdir.exists():
      shutil.rmtree(outdir)
    tmp.rename(outdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m titans_jax.data.prepare",
    description="Tokenise text into .bin shards + meta.json (see docs/data.md).",
  )
  p.add_argument("paths", nargs="+", help="text files, directories, .jsonl files")
  p.add_argument(
    "--tokenizer",
    required=True,
    help="a Hugging Face tokenizers .json or a SentencePiece .model file",
  )
  p.add_argument("--out", required=True, help="output directory (must be empty or new)")
  p.add_argument("--jsonl_field", default="text", help="JSONL field holding the text")
  p.add_argument(
    "--extensions",
    default=",".join(DEFAULT_EXTENSIONS),
    help="comma list of suffixes read from directories",
  )
  p.add_argument(
    "--eval_fraction",
    type=float,
    default=0.01,
    help="share of documents held out (by a hash of their name)",
  )
  p.add_argument("--split_seed", type=int, default=0)
  p.add_argument(
    "--separator",
    default="auto",
    help="token after each document: auto (the tokenizer's end-of-text), none, "
    "an id or a one-token string",
  )
  p.add_argument("--workers", type=int, default=0, help="processes (0: min(8, CPUs))")
  p.add_argument("--shard_tokens", type=int, default=1 << 30, help="tokens per .bin shard")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  p.add_argument("--no_progress", action="store_true")
  a = p.parse_args(argv)
  try:
    meta = prepare(
      a.paths,
      a.tokenizer,
      a.out,
      jsonl_field=a.jsonl_field,
      extensions=tuple(e if e.startswith(".") else "." + e for e in a.extensions.split(",") if e),
      eval_fraction=a.eval_fraction,
      split_seed=a.split_seed,
      separator=a.separator,
      workers=a.workers,
      shard_tokens=a.shard_tokens,
      overwrite=a.overwrite,
      progress=not a.no_progress,
    )
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t, h = meta["train"], meta["held_out"]
  print(
    f"wrote {a.out}: train {t['documents']} documents / {t['tokens']:,} tokens in "
    f"{len(t['files'])} shard(s), held-out {h['documents']} / {h['tokens']:,}; "
    f"vocab {meta['vocab_size']}, {meta['token_dtype']}, "
    f"{meta['bytes_per_token']:.3f} bytes/token"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
