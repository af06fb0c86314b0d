"""Titans: token embedding → stacked blocks → RMSNorm → vocabulary head.

Consecutive layers of one kind form a *run*, stored as one stacked block (parameters
with a leading layer axis, built by nnx.vmap) and executed with lax.scan, so a run of L
layers compiles one block, not L copies; each scan step is wrapped in jax.checkpoint
with the config's remat policy.

    model = Titans(TitansConfig.preset("tiny", variant="mag"), rngs=nnx.Rngs(0))
    logits_BTV = model(tokens_BT)
    logits_BTV, cache = model.prefill(tokens_BT)       # + the decode cache
    logits_BV, cache = model.decode_step(token_B, cache)

Axis legend: B batch, T tokens, D model width, V vocabulary, L layers in a run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from titans_jax.layers.basic import Embed, Linear, RMSNorm
from titans_jax.models.blocks import MAC_SEGMENT_SAVED_NAME, Block, capturing
from titans_jax.models.config import TitansConfig
from titans_jax.sharding import constrain
from titans_jax.sharding.rules import ACT_BTD, ACT_BTV

# Logical names of the residual stream and the logits (rules: titans_jax.sharding.RULES).

_cp = jax.checkpoint_policies
# The matmul policies also keep MAC's per-segment carries and outputs (a memory state and
# a B×S×D output a segment, `blocks.MAC_SEGMENT_SAVED_NAME`): the layer's rerun in the
# backward then skips the segment scan, which the scan's own backward reruns a segment at
# a time anyway (170m MAC, 2 layers, one v5e chip: bytes accessed −7 %, docs/memory.md §7).
_KEEP_MAC_SEGMENTS = _cp.save_only_these_names(MAC_SEGMENT_SAVED_NAME)
_POLICIES = {
  "full": None,
  "save_nothing": None,
  "dots": _cp.save_from_both_policies(_cp.dots_saveable, _KEEP_MAC_SEGMENTS),
  "dots_no_batch": _cp.save_from_both_policies(
    _cp.dots_with_no_batch_dims_saveable, _KEEP_MAC_SEGMENTS
  ),
}


def _stacked_blocks(cfg: TitansConfig, kind: str, count: int, rngs: nnx.Rngs) -> Block:
  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(r: nnx.Rngs) -> Block:
    return Block(cfg, kind, rngs=r)

  return make(rngs)


def _layer_runs(cfg: TitansConfig, rngs: nnx.Rngs) -> list[Block]:
  """The stacked blocks of `cfg.layer_runs()`. Unscanned layers are cut from the scanned
  build (each a stack of one), so a seed gives the same weights either way and
  `scan_layers` only decides how the layers run."""
  runs = cfg.replace(scan_layers=True).layer_runs()
  scanned = [_stacked_blocks(cfg, kind, count, rngs) for kind, count in runs]
  if cfg.scan_layers:
    return scanned
  singles = []
  for block, (_, count) in zip(scanned, runs):
    graphdef, state = nnx.split(block)
    singles += [
      nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i : i + 1], state)) for i in range(count)
    ]
  return singles


class Titans(nnx.Module):
  """A Titans language model (variant from `cfg.variant`): tokens B×T → logits B×T×V."""

  def __init__(self, cfg: TitansConfig, *, rngs: nnx.Rngs):
    if "float64" in (cfg.dtype, cfg.param_dtype) and not jax.config.jax_enable_x64:
      raise ValueError(
        f"TitansConfig dtype={cfg.dtype!r} param_dtype={cfg.param_dtype!r}: float64 needs "
        "64-bit JAX; call jax.config.update('jax_enable_x64', True) first (or build and "
        "run the model inside `with jax.enable_x64(True):`)"
      )
    self.cfg = cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.dim, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.runs = nnx.List(_layer_runs(cfg, rngs))
    self.final_norm = RMSNorm(cfg.dim, param_dtype=pdt, eps=cfg.norm_eps)
    if not cfg.tie_embeddings:
      self.head = Linear(
        (cfg.dim, cfg.vocab_size),
        ("embed", "vocab"),
        "BTD,DV->BTV",
        cfg.dim,
        dtype=dt,
        param_dtype=pdt,
        rngs=rngs,
      )

  # ------------------------------------------------------------------ pieces ---
  def _logits(self, x_BTD):
    x_BTD = self.final_norm(x_BTD)
    if self.cfg.tie_embeddings:
      return constrain(self.embed.attend(x_BTD), ACT_BTV)
    return constrain(self.head(x_BTD), ACT_BTV)

  def _scan_run(self, stack: Block, x_BTD, want_cache: bool):
    graphdef, state = nnx.split(stack)
    record = capturing(stack)

    def body(x, layer_state):
      block = nnx.merge(graphdef, layer_state)
      if not record:
        x, cache = block(x, want_cache)
        return constrain(x, ACT_BTD), cache
      # What a block sows inside the scan cannot leave it as a side effect: it is
      # captured here and leaves as a scan output (stacked over the run's layers).
      (x, cache), sown = nnx.capture(block, nnx.Intermediate)(x, want_cache)
      return constrain(x, ACT_BTD), (cache, sown)

    if self.cfg.remat != "none":
      body = jax.checkpoint(body, policy=_POLICIES[self.cfg.remat], prevent_cse=True)
    x_BTD, out = lax.scan(body, x_BTD, state)
    if not record:
      return x_BTD, out
    cache, sown = out
    for name, var in nnx.to_flat_state(sown):
      for value in var.get_value():  # sow's default: a tuple of calls
        stack.sow(nnx.Intermediate, "/".join(map(str, name)), value)
    return x_BTD, cache

  # ----------------------------------------------------------------- forward ---
  def __call__(self, tokens_BT: jax.Array) -> jax.Array:
    """Logits B×T×V (in cfg.dtype) for tokens B×T starting at position 0."""
    x = constrain(self.embed(tokens_BT), ACT_BTD)
    for stack in self.runs:
      x, _ = self._scan_run(stack, x, False)
    return self._logits(x)

  def prefill(self, tokens_BT: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """Full forward that also returns the decode cache after the last token:
    {'pos': T, 'layers': [per run: the blocks' caches stacked over its layers]}.

    Per layer the cache holds the window's K/V ring buffer (W slots), the persistent
    tokens' K/V, the memory state, and for MAC the current segment's K/V (of x and
    of the retrieved h), the retrieval stream's conv context and the fast weights
    the segment retrieves from.
    """
    x = self.embed(tokens_BT)
    caches = []
    for stack in self.runs:
      x, cache = self._scan_run(stack, x, True)
      caches.append(cache)
    pos = jnp.asarray(tokens_BT.shape[1], jnp.int32)
    return self._logits(x), {"pos": pos, "layers": caches}

  def decode_step(self, token_B: jax.Array, cache: dict[str, Any]):
    """Logits B×V of the next token after `token_B` (at position cache['pos'])."""
    pos = cache["pos"]
    x = self.embed(token_B[:, None])
    new_layers = []
    for stack, layer_cache in zip(self.runs, cache["layers"]):
      graphdef, state = nnx.split(stack)

      def body(x, inputs):
        layer_state, c = inputs
        return nnx.merge(graphdef, layer_state).decode(x, c, pos)

      x, new_cache = lax.scan(body, x, (state, layer_cache))
      new_layers.append(new_cache)
    return self._logits(x)[:, 0], {"pos": pos + 1, "layers": new_layers}
