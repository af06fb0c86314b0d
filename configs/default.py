"""The default run of `python train.py`: a small MAG model, byte-level, on the Python
standard library's own source (found through sysconfig; nothing to download).

Sized to finish in about 10 minutes on a 2-core CPU (see docs/training.md for the
measured wall time and held-out bits/byte).
"""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.models import TitansConfig


def get_config() -> Config:
  # MAG on layer 1 (layer 0 is plain SWA), 4 memory heads of width 32: the memory's
  # per-token cost grows with its head width, and this keeps a 2-core CPU near 2k tok/s.
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
    memory_layers=(1,),
    dtype="float32",
  )  # bf16 is slower than f32 on most CPUs; use bfloat16 on GPU/TPU
  return Config(
    name="default",
    model=model,
    data=DataConfig(kind="text", paths=(), seq_len=256, eval_fraction=0.02),
    # A higher peak lr than the paper's 4e-4 (a 0.6M-parameter model, a few hundred
    # steps); 3e-3 diverged (NaN at step 40, caught by the guard), 1e-3 is stable.
    train=TrainConfig(
      steps=240,
      batch_size=8,
      lr=1e-3,
      warmup_steps=30,
      weight_decay=0.1,
      log_every=20,
      eval_batches=16,
      checkpoint_every=100,
      keep_checkpoints=2,
    ),
    eval=EvalConfig(
      batches=16,
      batch_size=16,
      niah_lengths=(256, 512, 1024),
      niah_depths=(0.0, 0.25, 0.5, 0.75, 1.0),
      niah_samples=8,
      prompt="def ",
      sample_tokens=200,
    ),
  )
