"""Multi-query associative recall (Zoology's MQAR): 32 key-value pairs, 32 queries in
256 tokens; loss and accuracy on the recalled values only.

  python train.py --config configs/mqar.py --workdir runs/mqar
"""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.models import TitansConfig


def get_config() -> Config:
  model = TitansConfig.preset(
    "tiny",
    variant="mag",
    vocab_size=256,
    dim=128,
    num_layers=2,
    heads=4,
    ffn_hidden=None,
    window=64,
    num_persistent=4,
    memory_heads=4,
    memory_chunk=16,
  )
  return Config(
    name="mqar",
    model=model,
    data=DataConfig(kind="mqar", seq_len=256, mqar_pairs=32, mqar_queries=32),
    train=TrainConfig(
      steps=2000,
      batch_size=16,
      lr=1e-3,
      warmup_steps=100,
      log_every=50,
      eval_every=500,
      eval_batches=4,
      checkpoint_every=500,
    ),
    # token data: no byte-level NIAH grid, no text prompt
    eval=EvalConfig(batches=8, batch_size=16, niah_lengths=(), prompt="", sample_tokens=0),
  )
