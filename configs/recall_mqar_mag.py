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
"""

from titans_jax.memory import MemoryConfig
from titans_jax.models import TitansConfig
from titans_jax.training.config import Config, DataConfig, EvalConfig, TrainConfig


def get_config() -> Config:
  memory = MemoryConfig.paper(32, heads=1, chunk_size=4, pre_norm=False)
  model = TitansConfig.preset(
    "tiny",
    variant="mag",
    vocab_size=32,
    dim=32,
    num_layers=2,
    heads=2,
    ffn_hidden=64,
    window=8,
    segment_len=8,
    num_persistent=2,
    memory=memory,
    memory_heads=1,
    memory_chunk=4,
    dtype="float32",
  )
  return Config(
    name="recall_mqar_mag",
    model=model,
    data=DataConfig(kind="mqar", seq_len=64, mqar_pairs=4, mqar_queries=8),
    train=TrainConfig(
      steps=1000,
      batch_size=16,
      lr=5e-3,
      warmup_steps=20,
      weight_decay=0.0,
      log_every=50,
      eval_batches=4,
      checkpoint_every=1000,
      keep_checkpoints=1,
    ),
    eval=EvalConfig(batches=4, batch_size=16, niah_lengths=(), prompt="", sample_tokens=0),
  )
