"""Training: typed configs, the sharded train state, the loop (`train`)."""

from titans_jax.runtime.build import build_model
from titans_jax.training.config import (
  Config,
  ConfigError,
  DataConfig,
  EvalConfig,
  TrainConfig,
  apply_overrides,
  load_config,
)
from titans_jax.training.loop import TrainingDivergedError, TrainResult, train

__all__ = [
  "Config",
  "ConfigError",
  "DataConfig",
  "EvalConfig",
  "TrainConfig",
  "TrainResult",
  "TrainingDivergedError",
  "apply_overrides",
  "build_model",
  "load_config",
  "train",
]
