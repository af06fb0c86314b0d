"""Performance measurement: analytic FLOP counts and model FLOPs utilisation (MFU)."""
from titans_jax.perf.flops import (PEAK_FLOPS, forward_flops, model_flops_utilization,
                                   peak_flops_for, step_flops)

__all__ = ["PEAK_FLOPS", "forward_flops", "model_flops_utilization", "peak_flops_for",
           "step_flops"]
