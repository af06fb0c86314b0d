"""Per-layer statistics of a model's forward pass: `diagnostics(model, tokens)`.

The blocks sow them (`Block._mixer_stats`) only while `nnx.capture(model,
nnx.Intermediate)` records, so the normal forward is unchanged. This module runs that
capture (jitted) and lays the sown values out per layer:

    layers = diagnostics(model, tokens_BT)
    layers[i]["gate_mean"]        # T: mean σ(RMSNorm(m)) at each position (MAG, MAC)

Each entry has `layer` (index) and `kind` (the block's mixer) and, where the mixer has
them, per-position arrays (T) averaged over the batch: attention_norm ‖y_t‖,
memory_norm ‖m_t‖, gate_mean / gate_std / gate_min / gate_max over the features,
for swa/mag/mal attention_self (the attention weight on the query's own position) and
attention_persistent (its total weight on the persistent tokens), memory_loss (the
memory's inner loss of token t at its weights before the token's chunk
is applied) and memory_theta (θ_t), averaged over the memory's heads.
"""

from __future__ import annotations

import jax
from flax import nnx

from titans_jax.models.model import Titans


def _captured(model: Titans, tokens_BT: jax.Array):
  return nnx.capture(model, nnx.Intermediate)(tokens_BT)


_captured_jit = nnx.jit(_captured)


def diagnostics(model: Titans, tokens_BT: jax.Array, *, jit: bool = True) -> list[dict]:
  """One dict per layer, in layer order (module docstring). `jit=False` runs eagerly."""
  if tokens_BT.ndim != 2:
    raise ValueError(f"tokens must be B×T (rank 2), got shape {tokens_BT.shape}")
  _, sown = (_captured_jit if jit else _captured)(model, tokens_BT)
  layers = []
  for r, (kind, count) in enumerate(model.cfg.layer_runs()):
    run = (
      {
        path[-1]: var.get_value()[0]  # one sow per run: L×T
        for path, var in nnx.to_flat_state(sown["runs"][r])
      }
      if r in sown.get("runs", {})
      else {}
    )
    for i in range(count):
      layers.append(
        {"layer": len(layers), "kind": kind, **{name: value[i] for name, value in run.items()}}
      )
  return layers
