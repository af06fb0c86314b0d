"""Data: byte-level text, pre-tokenised token arrays, synthetic long-context tasks, grain pipelines."""

from titans_jax.data.pipeline import Corpus, WindowSource, eval_batches, load_corpus, train_dataset
from titans_jax.data.synthetic import NIAH_TASKS, mqar_example, niah_example
from titans_jax.data.text import BYTE_VOCAB, DataError, decode, encode, find_text_files, stdlib_dir

__all__ = [
  "BYTE_VOCAB",
  "Corpus",
  "DataError",
  "NIAH_TASKS",
  "WindowSource",
  "decode",
  "encode",
  "eval_batches",
  "find_text_files",
  "load_corpus",
  "mqar_example",
  "niah_example",
  "stdlib_dir",
  "train_dataset",
]
