"""The recall recipe at the CPU size of benchmarks/recall.py (issue 14): a 2-layer MAG,
width 32, attention window 8, on MQAR with 4 key–value pairs and 8 queries in 64 tokens
(vocabulary 32: values are one of 16, chance 6 %). Most queries sit further back than
the window, so the attention cannot see their key; only the neural memory can answer.

What it takes (benchmarks/RESULTS.md §5): the paper preset's inner-loop defaults
(docs/memory.md §6) and ~500 outer steps — the loss sits near ln 16 for the first ~200
steps, then falls as the memory's read path is learned. The same model at 300 steps
(the size's old budget) stays near SWA. 1000 steps here, as in the benchmark.

  python train.py --config configs/recall_mqar_mag.py --workdir runs/recall_mqar_mag
  python train.py --config configs/recall_mqar_mag.py --model.variant=mal   # any variant

The same recipe trains MAL to the same recall (99.8 / 100 / 100 % beyond the window,
seeds 0–2) with its memory's residual (`model.mal_residual`, on by default), and MAC to
97.7 / 99.1 / 85.5 % (seed 2: 100 % with 2000 steps) with its retrieval residual (`model.mac_retrieval_residual`, on by
default; the paper's form stays at SWA's level: RESULTS §5).
"""

import dataclasses
import pathlib

from titans_jax.config import Config, load_config


def get_config() -> Config:
  # configs/recall_mqar.py (the tiny lmm recipe) with the CPU size's shape and budget
  tiny = load_config(pathlib.Path(__file__).with_name("recall_mqar.py"))
  return dataclasses.replace(
    tiny,
    name="recall_mqar_mag",
    model=dataclasses.replace(
      tiny.model, variant="mag", vocab_size=32, num_layers=2, window=8, segment_len=8
    ),
    data=dataclasses.replace(tiny.data, seq_len=64, mqar_pairs=4, mqar_queries=8),
    train=dataclasses.replace(
      tiny.train, steps=1000, lr=5e-3, warmup_steps=20, log_every=50, checkpoint_every=1000
    ),
  )
