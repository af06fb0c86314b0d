"""Training: the sharded train state, the loop (`train`). The experiment configs are
`titans_jax.config`."""

from titans_jax.runtime.build import build_model
from titans_jax.training.loop import TrainingDivergedError, TrainResult, train

__all__ = [
  "TrainResult",
  "TrainingDivergedError",
  "build_model",
  "train",
]
