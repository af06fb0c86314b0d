"""Training: typed configs, optimizer, train state / step, checkpointing, metrics, loop."""
from titans_jax.training.config import (Config, ConfigError, DataConfig, EvalConfig, TrainConfig,
                                        apply_overrides, load_config)
from titans_jax.training.loop import TrainingDivergedError, TrainResult, build_model, train

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "TrainConfig",
           "TrainResult", "TrainingDivergedError", "apply_overrides", "build_model",
           "load_config", "train"]
