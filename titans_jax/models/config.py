"""TitansConfig: the frozen model config shared by every variant, with named presets.

The five variants differ only in the sequence mixer of their blocks (see
`titans_jax.models.blocks`); everything else — embedding, pre-norm residual blocks,
SwiGLU feed-forward, RoPE, final norm and head — is shared, so that comparing two
variants at one preset changes nothing but the mixer.

Presets (`TitansConfig.preset(name, variant=..., **overrides)`):
  tiny  — a 2-layer, 64-wide model that trains a step in seconds on a laptop CPU.
  170m, 340m, 400m, 760m — the paper's scales (Titans §5.1). Width, depth and heads are
  fixed per scale; the SwiGLU hidden width is solved per variant so that the total
  parameter count matches the name (the memory's projections and initial fast weights
  cost parameters that the attention-only baseline spends on its feed-forward).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax

from titans_jax.fieldcheck import check_types
from titans_jax.layers.attention import IMPLS as ATTN_IMPLS
from titans_jax.memory import params as memory_params
from titans_jax.memory.config import MemoryConfig

VARIANTS = ("mac", "mag", "mal", "lmm", "swa")
MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_nothing")
DTYPES = ("float32", "bfloat16", "float16", "float64")  # float64 needs jax_enable_x64

# name -> (dim, num_layers, heads, target parameter count)
_SCALES = {
  "170m": (768, 12, 12, 170e6),
  "340m": (1024, 24, 16, 340e6),
  "400m": (1024, 28, 16, 400e6),
  "760m": (1536, 24, 16, 760e6),
}
_FFN_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class TitansConfig:
  """Configuration of a Titans language model (docs/spec.md §2: the model family).

  The memory of the memory layers is resolved here, from one source: `memory=None`
  means the paper's memory (`default_memory()`) built from `dim`, `dtype`,
  `param_dtype` and the shortcuts `memory_heads` / `memory_chunk`; an explicit
  `memory` must agree with `dim`, and a shortcut given next to it must agree with
  it (an error names both otherwise). `memory_config` is the resolved MemoryConfig.

  Attributes:
    variant: sequence mixer of the memory layers: "mac" | "mag" | "mal" | "lmm" |
      "swa" (docs/spec.md §2).
    vocab_size: number of token ids (256 for byte-level data).
    dim: model width D.
    num_layers: number of residual blocks.
    heads: attention heads; the head width is dim // heads (even, for RoPE).
    ffn_hidden: SwiGLU hidden width; None = 8/3·dim rounded up to a multiple of 64.
    window: sliding-window size W of the attention (swa, mag, mal): query t sees keys
      t−W+1 … t plus the persistent tokens.
    segment_len: MAC segment length S (attention is within [P ‖ h_i ‖ S_i]); a
      multiple of the memory chunk size so that each segment's update is whole chunks.
    num_persistent: N_p learned persistent-memory tokens per layer (0 = none).
    memory: MemoryConfig of every memory layer; None = default_memory(): the paper's
      memory with pre_norm off (the block's norm already normalises its input).
    memory_heads: heads of the default memory (None = 1); must equal memory.heads
      when memory is given.
    memory_chunk: chunk size of the default memory (None = 4); must equal
      memory.chunk_size when memory is given.
    mal_residual: MAL only — the memory's output also joins the residual stream
      (o = SWA(y) + y, with y = M([P ‖ h])): the memory is a residual layer of its own
      and the attention reads it, as in the hybrid stacks the paper likens MAL to.
      False is the spec's o = SWA(y), where the memory reaches the stream only
      through the attention's weight on the query's own position — on MQAR beyond the
      window that recalled at 3 of 7 initialisations, this at every one measured
      (docs/memory.md §6).
    mac_retrieval_residual: MAC only — the segment's retrieval h_i = M*_{i−1}(q(S_i))
      also joins the residual stream (o_i = W_o·(y_i ⊗ M(y_i)) + h_i), besides being
      the attention's context. False is the paper's form, where h reaches the stream
      only through the attention; on MQAR beyond the window that form stayed at SWA's
      level in every run, this one recalls (docs/memory.md §6).
    mac_segment_remat: MAC only — rematerialise each segment of the segment scan in
      the backward pass: the scan keeps the carried memory state per segment and the
      backward recomputes the segment (retrieval, attention, memory block) from it,
      instead of keeping every intermediate of every segment (among them the memory's
      per-chunk fast weights, stacked once per segment). Does not change the result.
      Costs one more forward of each segment (on a TPU the splash forward kernel runs
      again in the backward); saves memory (170m at 4K on a v5e: temporaries 4.79 →
      4.19 GiB) and, on the CPU, time (the train step 1.6–1.8× faster).
    memory_layers: indices of the layers that carry a memory (mac/mag/mal; lmm needs
      all); None = every layer. Layers without a memory use the variant's attention:
      MAC's segment attention over [P ‖ S_i], SWA for mag/mal.
    dtype: compute dtype of the activations ("float32", "bfloat16", "float16"; "float64"
      needs jax_enable_x64).
    param_dtype: dtype of the parameters.
    remat: rematerialisation policy of each scanned block in the backward pass:
      "none", "full" (save nothing), "dots" (save matmul outputs), "dots_no_batch"
      (save matmuls without batch dims), "save_nothing" (= full). The two matmul
      policies also keep MAC's per-segment memory state and output, so the layer's
      rerun skips the segment scan (with `mac_segment_remat`).
    scan_layers: stack identical consecutive blocks and run them with lax.scan (off:
      each layer inlined). The initial weights of a seed are the same either way.
    attn_impl: attention kernel (titans_jax.layers.attention): "auto", "xla",
      "dot_product", "cudnn" or "splash".
    rope_base: RoPE base (> 0).
    tie_embeddings: share the input embedding with the output head.
    norm_eps: epsilon of the RMSNorms (> 0).
  """

  variant: str = "mac"
  vocab_size: int = 256
  dim: int = 64
  num_layers: int = 2
  heads: int = 4
  ffn_hidden: Optional[int] = None
  window: int = 16
  segment_len: int = 16
  num_persistent: int = 4
  memory: Optional[MemoryConfig] = None
  memory_heads: Optional[int] = None
  memory_chunk: Optional[int] = None
  memory_layers: Optional[tuple[int, ...]] = None
  mal_residual: bool = True
  mac_retrieval_residual: bool = True
  mac_segment_remat: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  attn_impl: str = "auto"
  rope_base: float = 10000.0
  tie_embeddings: bool = False
  norm_eps: float = 1e-6

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f"TitansConfig: {msg}")

    if self.memory_layers is not None and isinstance(self.memory_layers, list):
      object.__setattr__(self, "memory_layers", tuple(self.memory_layers))
    check_types(self, "TitansConfig")
    if self.variant not in VARIANTS:
      bad(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
    for name in ("vocab_size", "dim", "num_layers", "heads"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v > 0):
        bad(f"{name} must be a positive int, got {v!r}")
    if self.dim % self.heads:
      bad(f"dim={self.dim} is not divisible by heads={self.heads}")
    if (self.dim // self.heads) % 2:
      bad(f"head width dim/heads={self.dim // self.heads} must be even for RoPE")
    if self.ffn_hidden is not None and not (
      isinstance(self.ffn_hidden, int) and self.ffn_hidden > 0
    ):
      bad(f"ffn_hidden must be a positive int or None, got {self.ffn_hidden!r}")
    if not (isinstance(self.window, int) and self.window > 0):
      bad(f"window must be a positive int, got {self.window!r}")
    if not (isinstance(self.segment_len, int) and self.segment_len > 0):
      bad(f"segment_len must be a positive int, got {self.segment_len!r}")
    if not (isinstance(self.num_persistent, int) and self.num_persistent >= 0):
      bad(f"num_persistent must be an int >= 0, got {self.num_persistent!r}")
    if self.dtype not in DTYPES:
      bad(f"dtype={self.dtype!r} is not one of {DTYPES}")
    if self.param_dtype not in DTYPES:
      bad(f"param_dtype={self.param_dtype!r} is not one of {DTYPES}")
    if self.remat not in REMAT_POLICIES:
      bad(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
    if self.attn_impl not in ATTN_IMPLS:
      bad(f"attn_impl={self.attn_impl!r} is not one of {ATTN_IMPLS}")
    if not self.rope_base > 0:
      bad(f"rope_base must be > 0, got {self.rope_base!r}")
    if not self.norm_eps > 0:
      bad(f"norm_eps must be > 0, got {self.norm_eps!r}")
    for name in ("memory_heads", "memory_chunk"):
      v = getattr(self, name)
      if v is not None and v <= 0:
        bad(f"{name} must be a positive int or None, got {v!r}")
    if self.memory is not None:
      if self.memory.dim != self.dim:
        bad(f"memory.dim={self.memory.dim} != dim={self.dim}")
      # One source of truth: a shortcut next to an explicit memory must agree with it.
      for name, field in (("memory_heads", "heads"), ("memory_chunk", "chunk_size")):
        v = getattr(self, name)
        if v is not None and v != getattr(self.memory, field):
          bad(
            f"{name}={v} disagrees with memory.{field}="
            f"{getattr(self.memory, field)}: the shortcut only shapes the default "
            f"memory; set memory.{field} (model.memory.{field} on the command line)"
          )
    if self.memory_layers is not None:
      ml = self.memory_layers
      if any((not isinstance(i, int)) or i < 0 or i >= self.num_layers for i in ml):
        bad(f"memory_layers={ml} must be layer indices in [0, {self.num_layers})")
      if len(set(ml)) != len(ml):
        bad(f"memory_layers={ml} has duplicates")
      if self.variant == "lmm" and set(ml) != set(range(self.num_layers)):
        bad(
          "variant 'lmm' uses the memory as the only mixer: memory_layers must "
          "be None or every layer"
        )
    if self.variant in MEMORY_VARIANTS:
      mcfg = self.memory_config
      if mcfg.dim != self.dim:
        bad(f"memory.dim={mcfg.dim} != dim={self.dim}")
      if self.variant == "mac" and self.segment_len % mcfg.chunk_size:
        bad(
          f"segment_len={self.segment_len} is not a multiple of the memory "
          f"chunk size {mcfg.chunk_size} (MAC updates the memory with whole "
          "segments)"
        )
      if (
        self.variant == "mac"
        and mcfg.commit_every is not None
        and self.segment_len % mcfg.commit_every
      ):
        bad(
          f"segment_len={self.segment_len} is not a multiple of the memory's "
          f"commit_every={mcfg.commit_every}"
        )

  # ---- derived -------------------------------------------------------------------
  @property
  def head_dim(self) -> int:
    return self.dim // self.heads

  @property
  def hidden(self) -> int:
    if self.ffn_hidden is not None:
      return self.ffn_hidden
    return _round_up(int(8 * self.dim / 3), _FFN_MULTIPLE)

  def default_memory(self) -> MemoryConfig:
    heads = 1 if self.memory_heads is None else self.memory_heads
    chunk = 4 if self.memory_chunk is None else self.memory_chunk
    return MemoryConfig.paper(
      self.dim,
      heads=heads,
      chunk_size=chunk,
      pre_norm=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      inner_dtype="float64" if self.dtype == "float64" else "float32",
    )

  @property
  def memory_config(self) -> MemoryConfig:
    return self.memory if self.memory is not None else self.default_memory()

  def has_memory(self, layer: int) -> bool:
    if self.variant not in MEMORY_VARIANTS:
      return False
    return self.memory_layers is None or layer in self.memory_layers

  def layer_kind(self, layer: int) -> str:
    """The block kind of one layer: the variant's mixer, or its memory-less form."""
    if self.has_memory(layer):
      return self.variant
    return "seg" if self.variant == "mac" else "swa"

  def layer_runs(self) -> tuple[tuple[str, int], ...]:
    """Maximal runs of consecutive layers of one kind: ((kind, count), ...)."""
    runs: list[list] = []
    for i in range(self.num_layers):
      k = self.layer_kind(i)
      if self.scan_layers and runs and runs[-1][0] == k:
        runs[-1][1] += 1
      else:
        runs.append([k, 1])
    return tuple((k, n) for k, n in runs)

  def replace(self, **changes) -> TitansConfig:
    return dataclasses.replace(self, **changes)

  # ---- presets -------------------------------------------------------------------
  @classmethod
  def preset(cls, name: str, variant: str = "mac", **overrides) -> TitansConfig:
    """A named configuration: "tiny", "170m", "340m", "400m" or "760m".

    At the paper scales the SwiGLU width is solved (unless `ffn_hidden` is given)
    so that the parameter count of `variant` is close to the name.
    """
    if name == "tiny":
      kw = dict(
        variant=variant,
        vocab_size=256,
        dim=64,
        num_layers=2,
        heads=4,
        ffn_hidden=128,
        window=16,
        segment_len=16,
        num_persistent=4,
        memory_heads=2,
        memory_chunk=4,
      )
      return cls(**_with_overrides(kw, overrides))
    if name not in _SCALES:
      raise ValueError(f"unknown preset {name!r}; expected 'tiny' or one of {tuple(_SCALES)}")
    dim, layers, heads, target = _SCALES[name]
    kw = dict(
      variant=variant,
      vocab_size=32000,
      dim=dim,
      num_layers=layers,
      heads=heads,
      window=512,
      segment_len=512,
      num_persistent=16,
      memory_heads=heads,
      memory_chunk=16,
      dtype="bfloat16",
      param_dtype="float32",
      remat="dots_no_batch",
    )  # "dots" also saves every matmul in the memory scan (docs/memory.md §7)
    kw = _with_overrides(kw, overrides)
    if "ffn_hidden" not in overrides:
      probe = cls(**{**kw, "ffn_hidden": _FFN_MULTIPLE})
      per_unit = 3 * probe.dim * probe.num_layers  # SwiGLU: 3·D·F per layer
      rest = param_count_formula(probe) - per_unit * _FFN_MULTIPLE
      hidden = _round_up(max(int((target - rest) / per_unit), _FFN_MULTIPLE), _FFN_MULTIPLE)
      kw["ffn_hidden"] = hidden
    return cls(**kw)

  @staticmethod
  def preset_names() -> tuple[str, ...]:
    return ("tiny",) + tuple(_SCALES)


def _with_overrides(preset_kw: dict, overrides: dict) -> dict:
  """A preset's fields updated by `overrides`; an explicit `memory` replaces the
  preset's default-memory shortcuts (a shortcut given next to it is still checked)."""
  kw = dict(preset_kw)
  if overrides.get("memory") is not None:
    kw.pop("memory_heads", None)
    kw.pop("memory_chunk", None)
  kw.update(overrides)
  return kw


def _round_up(x: int, m: int) -> int:
  return int(math.ceil(x / m) * m)


def memory_param_count(mcfg: MemoryConfig) -> int:
  """Slow parameters of one memory layer, counted abstractly (no allocation)."""
  shapes = jax.eval_shape(lambda: memory_params.init(jax.random.key(0), mcfg))
  return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def param_count_formula(cfg: TitansConfig) -> int:
  """Closed-form parameter count of `Titans(cfg)` (checked against the model in tests)."""
  D, V, F, P = cfg.dim, cfg.vocab_size, cfg.hidden, cfg.num_persistent
  total = V * D * (1 if cfg.tie_embeddings else 2) + D  # embed, head, final norm
  mem = memory_param_count(cfg.memory_config) if cfg.variant in MEMORY_VARIANTS else 0
  for layer in range(cfg.num_layers):
    kind = cfg.layer_kind(layer)
    n = 2 * D + 3 * D * F  # norms, SwiGLU
    if kind != "lmm":
      n += 4 * D * D + P * D  # q k v o, persistent
    if kind in ("mac", "mag"):
      n += 2 * D  # gate norms
    if kind in MEMORY_VARIANTS:
      n += mem
    total += n
  return total
