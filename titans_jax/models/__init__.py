"""The Titans model family (docs/spec.md §2): MAC, MAG, MAL, LMM and the SWA baseline."""

from titans_jax.models.config import TitansConfig, param_count_formula
from titans_jax.models.diagnostics import diagnostics
from titans_jax.models.generate import decode_step, generate, prefill
from titans_jax.models.model import Titans

__all__ = [
  "Titans",
  "TitansConfig",
  "decode_step",
  "diagnostics",
  "generate",
  "param_count_formula",
  "prefill",
]
