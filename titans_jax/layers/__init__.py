"""Layers shared by every Titans variant: norms, RoPE, SwiGLU, attention kernels."""

from titans_jax.layers.attention import (
  AttentionProjections,
  decode_window_attention,
  masked_attention,
  segment_attention,
  sliding_window_attention,
)
from titans_jax.layers.basic import Embed, Linear, RMSNorm, param
from titans_jax.layers.ffn import SwiGLU
from titans_jax.layers.rope import apply_rope

__all__ = [
  "AttentionProjections",
  "Embed",
  "Linear",
  "RMSNorm",
  "SwiGLU",
  "apply_rope",
  "decode_window_attention",
  "masked_attention",
  "param",
  "segment_attention",
  "sliding_window_attention",
]
