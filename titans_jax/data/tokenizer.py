"""Text ↔ token ids through a local tokenizer file: a Hugging Face `tokenizers` JSON, a
SentencePiece `.model`, or the byte-level identity (ids = UTF-8 bytes) of text models.

    tok = load("tokenizer.json")          # or "spm.model", or BYTE
    ids = tok.encode("Hello")             # list[int], no special tokens added
    tok.decode(ids) == "Hello"

Nothing is downloaded: the libraries are only given files.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Sequence
from typing import Optional

from titans_jax.data.text import BYTE_VOCAB, DataError

BYTE = "bytes"  # the tokenizer "path" of byte-level models
# Special tokens taken as the end-of-document separator when present (first match).
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]", "<|end_of_text|>")


def file_sha256(path: str | pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class Tokenizer:
  """The interface every backend implements (see module docstring)."""

  kind: str = ""
  path: str = ""
  vocab_size: int = 0
  eos_id: Optional[int] = None

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError


class ByteTokenizer(Tokenizer):
  kind, path, vocab_size = "bytes", BYTE, BYTE_VOCAB

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(t) for t in ids if 0 <= int(t) < 256).decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
  kind = "hf"

  def __init__(self, path: str):
    from tokenizers import Tokenizer as _Tok

    self.path = path
    self._tok = _Tok.from_file(path)
    self._tok.no_truncation()  # documents are never cut
    self._tok.no_padding()
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.eos_id = next((i for n in EOS_NAMES if (i := self._tok.token_to_id(n)) is not None), None)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, path: str):
    import sentencepiece as spm

    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    eos = self._sp.eos_id()
    self.eos_id = eos if eos >= 0 else None

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


def load(path: str | pathlib.Path) -> Tokenizer:
  """A tokenizer from a local file: `.json` → HF tokenizers, `.model` → SentencePiece,
  the string "bytes" → byte-level.

  Raises:
    DataError: the file is missing or is neither format.
  """
  if str(path) == BYTE:
    return ByteTokenizer()
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise DataError(f"tokenizer file does not exist: {p}")
  try:
    if p.suffix == ".json":
      return HFTokenizer(str(p))
    if p.suffix == ".model":
      return SentencePieceTokenizer(str(p))
  except ImportError as e:
    raise DataError(
      f"reading tokenizer {p} needs the `text` extra (pip install -e '.[text]'): {e}"
    ) from None
  except Exception as e:  # the libraries raise their own types on corrupt files
    raise DataError(
      f"cannot read tokenizer {p}: {str(e).splitlines()[0] if str(e) else e!r}"
    ) from None
  raise DataError(
    f"unknown tokenizer format (want a tokenizers .json or a SentencePiece .model): {p}"
  )


def from_metadata(meta: dict) -> Tokenizer:
  """The tokenizer named in a prepare meta.json, checked to be the same file (sha256).

  Raises:
    DataError: the file is gone or has changed since the tokens were written.
  """
  path, want = meta["tokenizer"]["path"], meta["tokenizer"].get("sha256")
  if not pathlib.Path(path).is_file():
    raise DataError(
      f"tokenizer file does not exist: {path} (named by the data's meta.json; "
      "pass --tokenizer FILE)"
    )
  if want and file_sha256(path) != want:
    raise DataError(
      f"tokenizer {path} has changed since the tokens were written (sha256 "
      f"{file_sha256(path)[:12]}… != {want[:12]}… in meta.json); pass --tokenizer"
    )
  return load(path)
