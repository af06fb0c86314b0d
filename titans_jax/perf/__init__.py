"""Performance measurement: analytic FLOP counts and model FLOPs utilisation (MFU) and
per-op profiles (`perf.profile`). (Training-step timing is `benchmarks/timing.py`.)"""

from titans_jax.perf.flops import (
  PEAK_FLOPS,
  forward_flops,
  model_flops_utilization,
  peak_flops_for,
  step_flops,
)
from titans_jax.perf.profile import format_profile, profile_steps

__all__ = [
  "PEAK_FLOPS",
  "format_profile",
  "forward_flops",
  "model_flops_utilization",
  "peak_flops_for",
  "profile_steps",
  "step_flops",
]
