"""The smallest recall recipe that learns on a 2-core CPU (issue 14, benchmarks/recall.py
size "tiny"): a one-layer memory-only model (lmm, width 32) on MQAR with 2 key–value
pairs in 32 tokens. There is no attention at all, so every correct value was recalled
by the neural memory; SWA with a 4-token window, same width and depth, stays at
~29 % beyond its window (chance 12.5 %).

Measured (2026-11-30, shared 2-core CPU, benchmarks/recall.py `train_variant`, seed 0):
91 % held-out accuracy beyond the window after 150 steps, 71 % after 120.

  python train.py --config configs/recall_mqar.py --workdir runs/recall_mqar
"""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.memory import MemoryConfig
from titans_jax.models import TitansConfig


def get_config() -> Config:
  memory = MemoryConfig.paper(32, heads=1, chunk_size=4, pre_norm=False)
  model = TitansConfig.preset(
    "tiny",
    variant="lmm",
    vocab_size=16,
    dim=32,
    num_layers=1,
    heads=2,
    ffn_hidden=64,
    window=4,
    segment_len=4,
    num_persistent=2,
    memory=memory,
    memory_heads=1,
    memory_chunk=4,
    dtype="float32",
  )
  return Config(
    name="recall_mqar",
    model=model,
    data=DataConfig(kind="mqar", seq_len=32, mqar_pairs=2, mqar_queries=4),
    # a high peak lr for a 20k-parameter model; no weight decay (a few hundred steps)
    train=TrainConfig(
      steps=150,
      batch_size=16,
      lr=1e-2,
      warmup_steps=10,
      weight_decay=0.0,
      log_every=10,
      eval_batches=4,
      checkpoint_every=150,
      keep_checkpoints=1,
    ),
    eval=EvalConfig(batches=4, batch_size=16, niah_lengths=(), prompt="", sample_tokens=0),
  )
