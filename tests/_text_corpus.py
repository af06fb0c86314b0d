"""Shared by test_prepare.py and test_lm_eval.py: a small local text corpus, a BPE
tokenizer trained on it with `tokenizers` (no download), the corpus prepared into token
shards, and the tiny config trained a few steps on them — built once per pytest process.
"""

import atexit
import dataclasses
import functools
import json
import pathlib
import random
import shutil
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = (
  "the cat sat on a mat and the dog ran to the big red house with a small green "
  "tree near the river where old men fish in the morning"
).split()
VOCAB = 300
SEQ_LEN = 32
STEPS = 6
PROMPT = "the cat sat on the"


def write_corpus(root: pathlib.Path, docs: int = 12, lines: int = 20) -> pathlib.Path:
  rng = random.Random(0)
  root.mkdir(parents=True, exist_ok=True)
  for i in range(docs):
    (root / f"doc{i:02d}.txt").write_text(
      "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines)) + "\n"
    )
  with open(root / "extra.jsonl", "w") as f:
    for _ in range(docs):
      f.write(
        json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(30)), "id": rng.random()})
        + "\n"
      )
  return root


def train_bpe(corpus: pathlib.Path, out: pathlib.Path, vocab_size: int = VOCAB) -> pathlib.Path:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train([str(p) for p in sorted(corpus.glob("*.txt"))], trainer)
  tok.save(str(out))
  return out


def token_config(data_dir: pathlib.Path, vocab_size: int = VOCAB):
  from titans_jax import config as config_lib

  cfg = config_lib.load_config(ROOT / "configs" / "tiny.py")
  data = dataclasses.replace(
    cfg.data,
    kind="tokens",
    paths=(str(data_dir / "train_00000.bin"),),
    eval_paths=(str(data_dir / "held_out_00000.bin"),),
    seq_len=SEQ_LEN,
    token_dtype="uint16",
    separator=-1,
  )
  train = dataclasses.replace(
    cfg.train,
    steps=STEPS,
    batch_size=4,
    warmup_steps=2,
    checkpoint_every=STEPS,
    log_every=STEPS,
    eval_batches=1,
    async_checkpoint=False,
  )
  ev = dataclasses.replace(
    cfg.eval,
    batches=1,
    batch_size=2,
    niah_lengths=(),
    niah_depths=(),
    niah_samples=0,
    prompt=PROMPT,
    sample_tokens=5,
  )
  return dataclasses.replace(
    cfg,
    name="tiny_bpe",
    data=data,
    train=train,
    eval=ev,
    model=dataclasses.replace(cfg.model, vocab_size=vocab_size),
  )


@functools.lru_cache(maxsize=1)
def trained_run() -> dict:
  """{"root", "tokenizer", "data", "workdir", "cfg", "meta", "result"} of one run."""
  from titans_jax.data import prepare
  from titans_jax.training import loop

  root = pathlib.Path(tempfile.mkdtemp(prefix="titans_text_"))
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  corpus = write_corpus(root / "corpus")
  tok = train_bpe(corpus, root / "tok.json")
  meta = prepare.prepare(
    [str(corpus)], str(tok), str(root / "data"), eval_fraction=0.25, workers=1, progress=False
  )
  cfg = token_config(root / "data")
  result = loop.train(cfg, root / "run", log=lambda s: None)
  return {
    "root": root,
    "tokenizer": tok,
    "data": root / "data",
    "workdir": root / "run",
    "cfg": cfg,
    "meta": meta,
    "result": result,
  }
