"""Synthetic S-NIAH training: a small MAG model learns passkey retrieval (the paper's
S-NIAH-PK) from generated haystacks of 512 bytes, then eval.py scores the
length × depth grid, including lengths beyond the training length.

  python train.py --config configs/niah.py --workdir runs/niah
  python eval.py --workdir runs/niah --set eval.niah_task=passkey
"""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.models import TitansConfig


def get_config() -> Config:
  model = TitansConfig.preset(
    "tiny",
    variant="mag",
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
    name="niah",
    model=model,
    data=DataConfig(kind="niah", niah_task="passkey", seq_len=512),
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
    eval=EvalConfig(
      batches=8,
      batch_size=16,
      niah_task="passkey",
      niah_lengths=(256, 512, 1024, 2048),
      niah_depths=(0.0, 0.25, 0.5, 0.75, 1.0),
      niah_samples=16,
      prompt="The pass key is 12345. Remember it. What is the pass key? The pass key is ",
      sample_tokens=8,
    ),
  )
