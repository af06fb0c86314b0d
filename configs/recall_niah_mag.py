"""The S-NIAH recipe at the CPU size of benchmarks/recall.py (issue 14): the MAG of
configs/recall_mqar_mag.py (width 32, 2 layers, window 8 — shorter than the 39-byte
question, so the needle is always beyond it) on the byte-level passkey task at 128
bytes, 2000 steps. Measured with the surprise clip (the paper preset's default;
benchmarks/RESULTS.md §5, seeds 0 / 1 / 2): exact match 100 % at 128 bytes, 96 / 83 / 92 %
at 256 (2× the training length; mean 90 %), 42 / 54 / 75 % at 512; what is missed is the
needle furthest back. SWA of the same size: 0 %. With 3000 steps (`--set train.steps=3000`)
MAG gives 83 / 100 / 83 % at 256 (mean 89 %: more steps only move it between seeds), and
MAL (`--set model.variant=mal`) 100 / 92 / 100 % (86 % mean at 2000 steps).

  python train.py --config configs/recall_niah_mag.py --workdir runs/recall_niah_mag
  python eval.py --workdir runs/recall_niah_mag      # S-NIAH grid at 128 / 256 / 512
"""

import dataclasses
import pathlib

from titans_jax.config import Config, load_config


def get_config() -> Config:
  mqar = load_config(pathlib.Path(__file__).with_name("recall_mqar_mag.py"))
  return dataclasses.replace(
    mqar,
    name="recall_niah_mag",
    model=dataclasses.replace(mqar.model, vocab_size=256),
    data=dataclasses.replace(mqar.data, kind="niah", niah_task="passkey", seq_len=128),
    train=dataclasses.replace(mqar.train, steps=2000, checkpoint_every=1000),
    eval=dataclasses.replace(
      mqar.eval, niah_lengths=(128, 256, 512), niah_depths=(0.0, 0.5, 1.0), niah_samples=8
    ),
  )
