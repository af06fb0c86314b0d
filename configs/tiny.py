"""A seconds-scale config for tests and smoke runs: 2-layer 32-wide MAG on synthetic
passkey retrieval (no files needed)."""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.models import TitansConfig


def get_config() -> Config:
  model = TitansConfig.preset(
    "tiny",
    variant="mag",
    dim=32,
    num_layers=2,
    heads=2,
    ffn_hidden=64,
    window=16,
    num_persistent=2,
    memory_heads=1,
    memory_chunk=8,
  )
  return Config(
    name="tiny",
    model=model,
    data=DataConfig(kind="niah", niah_task="passkey", seq_len=128),
    train=TrainConfig(
      steps=40,
      batch_size=8,
      lr=3e-3,
      warmup_steps=4,
      log_every=10,
      eval_batches=2,
      checkpoint_every=20,
      keep_checkpoints=2,
    ),
    eval=EvalConfig(
      batches=2,
      batch_size=8,
      niah_lengths=(128, 192),
      niah_depths=(0.0, 0.5, 1.0),
      niah_samples=2,
      prompt="The pass",
      sample_tokens=8,
    ),
  )
