"""MemoryConfig: every knob of the neural long-term memory (docs/spec.md §1), frozen and hashable.

The config is a static argument of `apply` (it changes shapes and control flow), so it
must stay a frozen dataclass of plain Python values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from titans_jax.fieldcheck import check_types

ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu", "identity")
DTYPES = ("float32", "bfloat16", "float16", "float64")

# Inner-loop defaults of `MemoryConfig.paper` (docs/memory.md "Defaults and why").
PAPER_LR_PER_DIM = 16.0  # max_lr ≤ head width / 16: θ ≤ 1/16 of the paper's sum-loss step
# and max_lr · (tokens per commit) ≤ head width / 2: one commit's step is θ times a sum of
# that many per-token gradients of curvature ~2/d (unit keys, far from orthogonal), so
# θ · tokens ≥ d is where the inner loop stops converging (measured: docs/memory.md §6)
PAPER_STEP_PER_DIM = 0.5
PAPER_INIT_LR_BIAS = 0.0  # θ = max_lr / 2 at init, the sigmoid's steepest point
PAPER_INIT_DECAY_BIAS = -6.0  # α = sigmoid(−6) ≈ 0.0025 per chunk at init: retain
# ‖u‖ ≤ head width / 4 per chunk and fast-weight tensor: the MLP memory's curvature grows
# with its own weights, which the outer loop is free to grow, so no bound on θ alone keeps
# the inner loop stable; a chunk whose step diverged went NaN within ~8 chunks and the
# guard then skipped every batch holding such a sequence (docs/memory.md §6). The bound sits
# above the surprises of healthy sequences (d = 32: median 0.55, 99th percentile 8).
PAPER_SURPRISE_PER_DIM = 0.25


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Configuration of one neural long-term memory layer.

  Two presets build the two modes of docs/spec.md §1: `MemoryConfig.paper(...)` (conv + SiLU +
  L2-normalised q/k, exact chunk-wise mini-batch GD) and
  `MemoryConfig.titans_pytorch(...)` (the defaults of titans-pytorch 0.5.5).

  Attributes:
    dim: model width D of the input and output.
    heads: number of memory heads H; each has its own fast weights.
    dim_head: width d of one head; defaults to dim // heads.
    chunk_size: c, tokens sharing one gradient (and one α, η).
    commit_every: tokens per commit block (a multiple of c); the gradient point moves
      to the current fast weights at the end of each block. None: it never moves.
    depth: layers of the memory MLP M_W (1 = a linear d×d memory).
    expansion: hidden width of M_W as a multiple of dim_head.
    activation: nonlinearity of M_W between its layers.
    residual_norm: wrap M_W as LayerNorm_noaffine(mlp(x)) * (γ + 1) + x.
    pre_norm: RMSNorm of the input before store (k, v, θ, gates) and retrieve (q, gate),
      two separate norms as in titans-pytorch.
    qkv_conv: kernel size of the causal depthwise conv after the q/k/v projections
      (0: none).
    qkv_activation: activation after the (conv of the) q/k/v projections, or None.
    qk_l2norm: L2-normalise q and k per head (paper).
    qk_rmsnorm: titans-pytorch's per-head RMSNorm of q and k with learned γ.
    post_rmsnorm: per-head RMSNorm of the retrieved values (titans-pytorch post_rmsnorm).
    gate: per-head sigmoid gate on the retrieved values; None = (heads > 1).
    out_proj: merge heads with an output projection; None = (heads > 1).
    max_lr: θ_t = max_lr · sigmoid(w_θ·x_t + b_θ).
    momentum: the momentum recurrence S_j = η_j S_{j-1} + u_j (off: S_j = u_j).
    momentum_order: the recurrence stacked this many times; the last order is the
      update.
    learned_momentum_combine: a learned softmax mix of the orders is the update.
    learned_combine_include_zeroth: the mix includes the raw surprise u_j.
    forget: the forgetting gate α (off: W_j = W_{j-1} + S_j).
    attn_pool_chunks: pool each chunk with learned attention instead of the mean.
    per_parameter_lr_modulation: a learned per-chunk, per-fast-weight-tensor scale
      of the gradient in (0, max_mem_layer_modulation).
    max_mem_layer_modulation: upper bound of that scale (> 0).
    max_grad_norm: titans-pytorch's soft clamp of each chunk's gradient norm.
    max_surprise_norm: a hard clip of each chunk's surprise, per fast-weight tensor:
      u · min(1, m / ‖u‖) after the soft clamp and the lr modulation. Exact (the
      update unchanged) for every chunk with ‖u‖ ≤ m; it bounds how far one chunk can
      move the fast weights where the inner loop would otherwise diverge (docs/memory.md
      §6, "Inner-loop divergence").
    spectral_norm_surprises: Newton–Schulz orthogonalisation of matrix updates.
    init_lr_bias: if set, the θ gate starts with zero weight and this bias.
    init_momentum_bias: if set, the η gate starts with zero weight and this bias.
    init_decay_bias: if set, the α gate starts with zero weight and this bias.
    dtype: activation dtype.
    param_dtype: dtype of the slow parameters.
    inner_dtype: dtype of the fast weights, the momentum and the inner gradient.
    chunks_per_block: chunks processed together per scan step when commit_every is
      None (None: chosen from the sequence length). Does not change the result.
    recurrence: how the momentum / forgetting recurrences run across the chunks of a
      block: "associative" (jax.lax.associative_scan) or "dense" (the same sums as one
      K×K decay-matrix matmul). Does not change the result beyond rounding.
    remat: rematerialise each commit-block step in the backward pass. None (default):
      on for the dual path (its per-block intermediates cost more to write out than to
      recompute), off for the primal path. Does not change the result.
    scan_remat_every: two-level rematerialisation of the block scan: keep the carried
      (W, S) for the backward only every this many blocks, and recompute the blocks in
      between from there (saved carries: N/n + n instead of N for N blocks). None (or
      1, or n ≥ N): off. Does not change the result (docs/memory.md §7).
    remat_blocks: with `remat`, the scan steps over this many blocks at a time under
      one checkpoint (their step unrolled): the backward keeps the carried (W, S) once
      per group instead of once per block and recomputes each block once, as remat
      per block does. Fewer weight-size carries written and read back; the same
      compute. Does not change the result (docs/memory.md §7).
    saved_carry_dtype: the dtype in which the backward keeps each block's carried
      (W, S) (the per-block checkpoints; turns `remat` on). None (default): the inner
      dtype — exact. A narrower one ("bfloat16") halves those saved carries; the
      forward is unchanged, but the backward recomputes each block from the rounded
      carry, so the gradients are approximate (docs/memory.md §7). Not with
      impl="pallas" (the kernel keeps its own checkpoints) or remat=False.
    impl: how a commit block is computed (docs/memory.md). "primal": per-chunk
      gradients, recurrences over the per-chunk weight tensors and retrieval from K
      materialised weight sets. "dual": the same maths with no per-chunk weights —
      each layer's chunk gradient kept as per-token factors Σ z_i δ_iᵀ, the recurrences
      run on K×(1+O+K) coefficient vectors, retrieval as a masked attention-like
      matmul over the block's tokens; not available with spectral_norm_surprises
      (Newton–Schulz is not linear). "auto" (default): "dual" wherever it is
      available, else "primal". "pallas": the exact mode's whole chunk scan as Pallas
      TPU kernels, W and S kept on-chip across chunks and saved for the backward once
      per segment of at most `scan_remat_every` chunks (None: the kernel picks the
      longest, up to 32, that its VMEM budget allows: `kernel.segment_chunks`;
      `kernel_unsupported` says which configs it takes; off a TPU it runs in the
      Pallas interpreter). Does not change the result beyond rounding.
  """

  dim: int
  heads: int = 1
  dim_head: Optional[int] = None
  chunk_size: int = 1
  commit_every: Optional[int] = None
  # memory network M_W
  depth: int = 2
  expansion: float = 4.0
  activation: str = "gelu"
  residual_norm: bool = True
  # projections
  pre_norm: bool = True
  qkv_conv: int = 0
  qkv_activation: Optional[str] = None
  qk_l2norm: bool = False
  qk_rmsnorm: bool = False
  post_rmsnorm: bool = False
  gate: Optional[bool] = None
  out_proj: Optional[bool] = None
  # inner optimiser
  max_lr: float = 1.0
  momentum: bool = True
  momentum_order: int = 1
  learned_momentum_combine: bool = False
  learned_combine_include_zeroth: bool = False
  forget: bool = True
  attn_pool_chunks: bool = False
  per_parameter_lr_modulation: bool = False
  max_mem_layer_modulation: float = 1.0
  max_grad_norm: Optional[float] = None
  max_surprise_norm: Optional[float] = None
  spectral_norm_surprises: bool = False
  init_lr_bias: Optional[float] = None
  init_momentum_bias: Optional[float] = None
  init_decay_bias: Optional[float] = None
  # numerics and execution
  dtype: str = "float32"
  param_dtype: str = "float32"
  inner_dtype: str = "float32"
  chunks_per_block: Optional[int] = None
  recurrence: str = "associative"
  remat: Optional[bool] = None
  scan_remat_every: Optional[int] = None
  remat_blocks: int = 1
  saved_carry_dtype: Optional[str] = None
  impl: str = "auto"

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f"MemoryConfig: {msg}")

    check_types(self, "MemoryConfig")
    if not (isinstance(self.dim, int) and self.dim > 0):
      bad(f"dim must be a positive int, got {self.dim!r}")
    if not (isinstance(self.heads, int) and self.heads > 0):
      bad(f"heads must be a positive int, got {self.heads!r}")
    if self.dim_head is None:
      if self.dim % self.heads:
        bad(
          f"dim={self.dim} is not divisible by heads={self.heads} "
          "(pass dim_head explicitly for a different head width)"
        )
    elif not (isinstance(self.dim_head, int) and self.dim_head > 0):
      bad(f"dim_head must be a positive int or None, got {self.dim_head!r}")
    if not self.has_out_proj and self.heads * self.head_dim != self.dim:
      bad(
        f"without an output projection heads*dim_head must equal dim "
        f"({self.heads}*{self.head_dim} != {self.dim}); set out_proj=True"
      )
    if not (isinstance(self.chunk_size, int) and self.chunk_size > 0):
      bad(f"chunk_size must be a positive int, got {self.chunk_size!r}")
    if self.commit_every is not None:
      if not isinstance(self.commit_every, int) or self.commit_every <= 0:
        bad(f"commit_every must be a positive int or None, got {self.commit_every!r}")
      if self.commit_every % self.chunk_size:
        bad(f"commit_every={self.commit_every} is not a multiple of chunk_size={self.chunk_size}")
    if not (isinstance(self.depth, int) and self.depth >= 1):
      bad(f"depth must be an int >= 1, got {self.depth!r}")
    if self.expansion <= 0 or int(self.head_dim * self.expansion) < 1:
      bad(f"expansion={self.expansion} gives an empty hidden layer")
    if self.activation not in ACTIVATIONS:
      bad(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
    if self.qkv_activation is not None and self.qkv_activation not in ACTIVATIONS:
      bad(f"qkv_activation {self.qkv_activation!r} is not one of {ACTIVATIONS}")
    if not (isinstance(self.qkv_conv, int) and self.qkv_conv >= 0):
      bad(f"qkv_conv must be an int >= 0 (kernel size), got {self.qkv_conv!r}")
    if not (isinstance(self.momentum_order, int) and self.momentum_order >= 1):
      bad(f"momentum_order must be an int >= 1, got {self.momentum_order!r}")
    if self.learned_momentum_combine:
      if not self.momentum:
        bad("learned_momentum_combine needs momentum=True")
      if self.momentum_order < 2:
        bad("learned_momentum_combine needs momentum_order >= 2")
    if self.learned_combine_include_zeroth and not self.learned_momentum_combine:
      bad("learned_combine_include_zeroth needs learned_momentum_combine=True")
    if self.max_grad_norm is not None and self.max_grad_norm <= 0:
      bad(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
    if self.max_surprise_norm is not None and not self.max_surprise_norm > 0:
      bad(f"max_surprise_norm must be > 0 or None, got {self.max_surprise_norm!r}")
    if self.max_lr <= 0:
      bad(f"max_lr must be > 0, got {self.max_lr!r}")
    if self.max_mem_layer_modulation <= 0:
      bad(f"max_mem_layer_modulation must be > 0, got {self.max_mem_layer_modulation!r}")
    for name in ("dtype", "param_dtype", "inner_dtype"):
      if getattr(self, name) not in DTYPES:
        bad(f"{name}={getattr(self, name)!r} is not one of {DTYPES}")
    if self.recurrence not in ("associative", "dense"):
      bad(f"recurrence must be 'associative' or 'dense', got {self.recurrence!r}")
    if self.impl not in ("auto", "dual", "primal", "pallas"):
      bad(f"impl must be 'auto', 'dual', 'primal' or 'pallas', got {self.impl!r}")
    if self.impl == "pallas" and self.kernel_unsupported() is not None:
      bad(f"impl='pallas': {self.kernel_unsupported()}; use impl='auto'")
    if self.impl == "dual" and self.spectral_norm_surprises:
      bad(
        "impl='dual' cannot express spectral_norm_surprises (Newton–Schulz is not "
        "linear); use impl='auto' or 'primal'"
      )
    if self.scan_remat_every is not None and not (
      isinstance(self.scan_remat_every, int) and self.scan_remat_every > 0
    ):
      bad(f"scan_remat_every must be a positive int or None, got {self.scan_remat_every!r}")
    if not (isinstance(self.remat_blocks, int) and self.remat_blocks > 0):
      bad(f"remat_blocks must be a positive int, got {self.remat_blocks!r}")
    if self.saved_carry_dtype is not None:
      if self.saved_carry_dtype not in DTYPES:
        bad(f"saved_carry_dtype={self.saved_carry_dtype!r} is not one of {DTYPES} or None")
      if self.remat is False:
        bad("saved_carry_dtype needs the per-block checkpoints: remat=False turns them off")
      if self.impl == "pallas":
        bad("saved_carry_dtype: impl='pallas' keeps its own checkpoints (in the inner dtype)")
    if self.chunks_per_block is not None:
      if not (isinstance(self.chunks_per_block, int) and self.chunks_per_block > 0):
        bad(f"chunks_per_block must be a positive int or None, got {self.chunks_per_block!r}")

  # ---- derived sizes -------------------------------------------------------------
  @property
  def head_dim(self) -> int:
    return self.dim_head if self.dim_head is not None else self.dim // self.heads

  @property
  def inner_width(self) -> int:
    return self.heads * self.head_dim

  @property
  def hidden_dim(self) -> int:
    return int(self.head_dim * self.expansion)

  @property
  def has_gate(self) -> bool:
    return self.heads > 1 if self.gate is None else self.gate

  @property
  def has_out_proj(self) -> bool:
    return self.heads > 1 if self.out_proj is None else self.out_proj

  @property
  def num_momentum_states(self) -> int:
    return self.momentum_order if self.momentum else 0

  @property
  def num_combine_weights(self) -> int:
    return self.momentum_order + int(self.learned_combine_include_zeroth)

  @property
  def commit_chunks(self) -> Optional[int]:
    """Chunks per commit block, or None when the gradient point never moves."""
    return None if self.commit_every is None else self.commit_every // self.chunk_size

  def kernel_unsupported(self) -> Optional[str]:
    """Why `impl="pallas"` (the Pallas scan kernel) cannot compute this config; None
    when it can."""
    if self.commit_chunks != 1:
      return "the kernel computes the exact mode only (commit_every = chunk_size)"
    if self.residual_norm:
      return "residual_norm=True (the memory's LayerNorm) is not in the kernel"
    if self.momentum and self.momentum_order > 1:
      return "momentum_order > 1 is not in the kernel"
    for field in ("max_grad_norm", "per_parameter_lr_modulation", "spectral_norm_surprises"):
      if getattr(self, field):
        return f"{field} is not in the kernel"
    return None

  def fast_weight_names(self) -> tuple[str, ...]:
    """Fast-weight tensors in titans-pytorch's `named_parameters` order.

    The per-parameter lr modulation indexes tensors in this order.
    """
    names = tuple(f"w{i}" for i in range(self.depth))
    return (("gamma",) + names) if self.residual_norm else names

  def fast_weight_shapes(self) -> dict[str, tuple[int, ...]]:
    """Shape of each fast-weight tensor for one head."""
    d, hid = self.head_dim, self.hidden_dim
    dims = (d,) + (hid,) * (self.depth - 1) + (d,)
    shapes = {f"w{i}": (dims[i], dims[i + 1]) for i in range(self.depth)}
    if self.residual_norm:
      shapes["gamma"] = (d,)
    return shapes

  def num_fast_weights_per_head(self) -> int:
    return sum(math.prod(s) for s in self.fast_weight_shapes().values())

  def replace(self, **changes) -> MemoryConfig:
    return dataclasses.replace(self, **changes)

  # ---- presets -------------------------------------------------------------------
  @classmethod
  def paper(cls, dim: int, heads: int = 1, chunk_size: int = 16, **overrides) -> MemoryConfig:
    """The paper's memory (§3, §4.4): linear → causal depthwise conv (k=4) → SiLU,
    L2-normalised q/k, momentum and forgetting, exact chunk-wise mini-batch gradient
    descent (`commit_every = chunk_size`), a plain MLP memory of depth 2, and
    normalisation + gating before the output projection.

    Inner-loop defaults (measured, docs/memory.md "Defaults and why"): the loss is a
    mean over the head width d, and θ_t ≤ max_lr = d · min(1 / PAPER_LR_PER_DIM,
    PAPER_STEP_PER_DIM / n) with n the tokens per commit (`commit_every`, else
    `chunk_size`): θ ≤ 1/16 in the paper's sum-over-d units, and θ · n ≤ d / 2, half
    the step where the inner loop diverges; at init θ = max_lr / 2 for every
    token (init_lr_bias 0), α = sigmoid(−6) ≈ 0.0025 per chunk (the memory retains
    what it writes for hundreds of chunks; init_decay_bias −6) and η keeps the
    random init (≈ 0.5). Each chunk's surprise is clipped to norm d / 4 per tensor
    (`max_surprise_norm`): exact below it, it keeps a diverging inner loop finite.
    """
    d = overrides.get("dim_head") or dim // heads
    per_commit = overrides.get("commit_every", chunk_size) or chunk_size
    kw = dict(
      dim=dim,
      heads=heads,
      chunk_size=chunk_size,
      commit_every=chunk_size,
      depth=2,
      expansion=4.0,
      activation="gelu",
      residual_norm=False,
      pre_norm=False,
      qkv_conv=4,
      qkv_activation="silu",
      qk_l2norm=True,
      qk_rmsnorm=False,
      post_rmsnorm=True,
      gate=True,
      out_proj=True,
      max_lr=d * min(1 / PAPER_LR_PER_DIM, PAPER_STEP_PER_DIM / per_commit),
      momentum=True,
      forget=True,
      init_lr_bias=PAPER_INIT_LR_BIAS,
      init_decay_bias=PAPER_INIT_DECAY_BIAS,
      max_surprise_norm=d * PAPER_SURPRISE_PER_DIM,
    )
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def titans_pytorch(
    cls, dim: int, heads: int = 1, chunk_size: int = 1, **overrides
  ) -> MemoryConfig:
    """titans-pytorch 0.5.5 `NeuralMemory(dim, chunk_size, heads=...)` with its defaults:
    RMSNorm → linear (no conv, no activation), MemoryMLP(depth 2, expansion 4) inside
    ResidualNorm, max_lr 1, momentum on, batch_size None (gradient point never moves),
    gate and head-combining projection only when heads > 1.

    Note titans-pytorch's default dim_head is `dim` (not dim // heads); pass
    `dim_head=` to match a module built with its default.
    """
    kw = dict(
      dim=dim,
      heads=heads,
      chunk_size=chunk_size,
      commit_every=None,
      depth=2,
      expansion=4.0,
      activation="gelu",
      residual_norm=True,
      pre_norm=True,
      qkv_conv=0,
      qkv_activation=None,
      qk_l2norm=False,
      qk_rmsnorm=False,
      post_rmsnorm=False,
      gate=None,
      out_proj=None,
      max_lr=1.0,
      momentum=True,
      forget=True,
    )
    kw.update(overrides)
    return cls(**kw)
