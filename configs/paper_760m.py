"""Paper-scale preset: Titans (760m, MAC by default) on your own pre-tokenised data.

The paper's recipe (§5.1): AdamW, lr 4e-4, weight decay 0.1, warmup + cosine decay,
sequences of 4K tokens, batches of 0.5M tokens (128 x 4096), 30B tokens = 60000 steps,
bf16 compute, vocabulary 32K (Llama 2 tokenizer): configs/paper_340m.py at the larger
scale and twice the tokens.

Point it at your data (a flat .bin/.npy of token ids, or ArrayRecord documents):
  python train.py --config configs/paper_760m.py --workdir runs/760m \
      --set data.paths=/data/train.bin --set data.eval_paths=/data/val.bin
Pick the variant with --set model.variant=mag (mac, mag, mal, lmm, swa).
"""

import dataclasses
import pathlib

from titans_jax.config import Config, load_config
from titans_jax.models import TitansConfig


def get_config() -> Config:
  base = load_config(pathlib.Path(__file__).with_name("paper_340m.py"))
  model = TitansConfig.preset(
    "760m", variant=base.model.variant, vocab_size=32000, dtype="bfloat16"
  )
  return dataclasses.replace(
    base, name="paper_760m", model=model, train=dataclasses.replace(base.train, steps=60000)
  )
