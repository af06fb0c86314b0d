"""Paper-scale preset: Titans (340m, MAC by default) on your own pre-tokenised data.

The paper's recipe (§5.1): AdamW, lr 4e-4, weight decay 0.1, warmup + cosine decay,
sequences of 4K tokens, batches of 0.5M tokens (128 x 4096), 15B tokens = 30000 steps,
bf16 compute, vocabulary 32K (Llama 2 tokenizer).

Point it at your data (a flat .bin/.npy of token ids, or ArrayRecord documents):
  python train.py --config configs/paper_340m.py --workdir runs/340m \
      --set data.paths=/data/train.bin --set data.eval_paths=/data/val.bin
Pick the variant with --set model.variant=mag (mac, mag, mal, lmm, swa).
"""

from titans_jax.config import Config, DataConfig, EvalConfig, TrainConfig
from titans_jax.models import TitansConfig
from titans_jax.sharding import MeshConfig


def get_config() -> Config:
  model = TitansConfig.preset("340m", variant="mac", vocab_size=32000, dtype="bfloat16")
  return Config(
    name="paper_340m",
    model=model,
    data=DataConfig(
      kind="tokens", paths=(), token_dtype="uint16", seq_len=4096, eval_fraction=0.001
    ),
    train=TrainConfig(
      steps=30000,
      batch_size=128,
      grad_accum_steps=1,
      lr=4e-4,
      min_lr_ratio=0.1,
      warmup_steps=2000,
      weight_decay=0.1,
      grad_clip=1.0,
      log_every=50,
      eval_every=2000,
      eval_batches=64,
      checkpoint_every=1000,
      keep_checkpoints=3,
    ),
    eval=EvalConfig(
      batches=256,
      batch_size=8,
      niah_task="passkey",
      niah_lengths=(),  # the S-NIAH grid is byte-level: off for 32K-token models
      niah_depths=(0.0, 0.25, 0.5, 0.75, 1.0),
      niah_samples=16,
      prompt="The",
      sample_tokens=64,
    ),
    # FSDP over every device (params / Adam moments sharded along `embed`, batch
    # split); e.g. --mesh.fsdp=8 --mesh.tensor=-1 to add tensor parallelism.
    # Check the per-device memory first: --dry_run (docs/sharding.md).
    mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
  )
