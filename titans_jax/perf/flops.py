"""Analytic FLOP count of one training step of a Titans model, and MFU.

A multiply-add is 2 FLOPs; a matmul of an M×K by a K×N matrix costs 2·M·K·N. Sizes:
B batch, T sequence length, D model width, V vocabulary, H attention heads of width
K_h = D/H, F SwiGLU hidden width, P persistent tokens, W window, S MAC segment length;
memory: H_m heads of width d, chunk size c, MLP widths d_0 = d, d_1 … d_{L−1} = d·e,
d_L = d (depth L), so one token through the memory MLP costs
    m_fwd = 2·Σ_i d_i·d_{i+1}                         (e.g. depth 2: 4·d·h, h = d·e)
and there are N_w = Σ_i d_i·d_{i+1} (+ d for the residual-norm γ) fast weights per head.

Forward, per component (`forward_flops`; every term is per layer and summed over layers
unless it is the head):

  unembed         2·B·T·D·V. The embedding is a gather: 0 FLOPs.
  qkvo_proj       attention projections: 4·(2·B·T·D·D) (q, k, v, o) for swa/mag/mal; mac
                  adds k, v of the retrieved h (2·2·B·T·D·D); lmm has none.
  persistent_kv   k, v of the P persistent tokens: 2·2·P·D·D (computed once, batch 1; in
                  MAL from the memory's output, so per batch row: 2·2·B·P·D·D).
  attention       QKᵀ and PV, 2·2·B·H·K_h per (query, key) pair *as executed*: the sliding
                  window is computed over ⌈T/W⌉ blocks of W queries, each against
                  P + 2W keys (its own and the previous block, masked to the window), so
                  2·2·B·⌈T/W⌉·W·(P+2W)·D; a MAC segment of L tokens has L queries against
                  P + 2L keys ([P ‖ h ‖ x], causal mask). With `masked_attention=False` only
                  the unmasked pairs are counted (query t sees P + min(t+1, W) keys).
  ffn             SwiGLU: 3·(2·B·T·D·F).
  memory_proj     the memory's projections over its T_m input tokens (T_m = T + P for
                  mag/mal, T for lmm, T for mac): q, k, v 3·2·B·T_m·D·H_m·d; θ and the
                  per-head output gate 2·B·T_m·D·H_m each; the output projection
                  2·B·T_m·H_m·d·D; α, η from the chunk means 2·B·(T_m/c)·D·H_m per gate.
                  MAC also reads the memory at every segment start (h = M*(q(x)) with
                  fixed weights): q (+ k and v, whose last tokens carry the conv context),
                  the gate and the output projection over T tokens again.
  memory_conv     the causal depthwise conv after q, k, v: 3·2·k_conv·B·T_m·H_m·d
                  (elementwise multiply-adds; likewise for MAC's segment-start read).
  memory_inner_fwd   M_{W̄}(k_t) for every token, at the chunk's gradient point W̄:
                  B·H_m·T_m·m_fwd.
  memory_inner_bwd   ∇_W ℓ per chunk (one backward through the MLP per token, summed over
                  the chunk): the weight gradients 2·d_i·d_{i+1} for every layer and the
                  activation gradients 2·d_i·d_{i+1} for every layer but the first (the
                  keys are not differentiated by the inner loop):
                  B·H_m·T_m·(m_fwd + m_fwd − 2·d_0·d_1).
  memory_scans    momentum S_j = η_j·S_{j−1} + u_j (2 FLOPs per fast weight and order) and
                  forgetting W_j = (1−α_j)·W_{j−1} + S_j (2 FLOPs per fast weight), once per
                  chunk: B·H_m·(T_m/c)·N_w·(2·orders + 2). (The parallel associative scan
                  over the chunks of a commit block does up to ~2× the sequential work;
                  the sequential count is the algorithm's.) Newton–Schulz, when on, adds
                  5·(2·m·m·n + 2·m³ + 2·m²·n) per matrix update (m ≤ n its sides) and chunk.
  memory_retrieval   y_t = M_{W_r(t)}(q_t): B·H_m·T_m·m_fwd, plus MAC's segment-start read
                  of T tokens, B·H_m·T·m_fwd.

By default the memory terms count T_m/c chunks of the tokens actually given
(`⌈T_m/c⌉`); `implementation_padding=True` counts the buffer the current
`titans_jax.memory.core.apply` really runs — it aligns the call to whole scan blocks,
⌈T_m/b⌉·b tokens for blocks of b, and a call that continues a state (MAC's segments)
carries one block more for the earlier tokens of its first block, ⌈(b−1+T_m)/b⌉·b —
plus the final-token retrieval.
That is what XLA executes (and what the tests compare with); the default is what the
model *needs* and what MFU should be computed from.

Backward: 2× the forward for every term above (a matmul's backward is two matmuls of
its size: the gradient w.r.t. each operand). This holds for the memory too: the outer
backward differentiates through the inner forward *and* the inner backward (second-
order terms), each again at twice its forward cost. Rematerialisation (remat="full",
or "dots" for non-matmul ops) recomputes forward work in the backward pass; following
PaLM's definition of *model* FLOPs it is not counted, so MFU does not reward recompute.

Optimizer: AdamW + global-norm clipping + the step's finiteness checks, ~20 FLOPs per
parameter (an estimate of the elementwise work; negligible next to the matmuls).

Not counted (elementwise, O(B·T·D) or O(B·T·V)): norms, RoPE, softmax, activations,
gates, residual adds, the cross-entropy. XLA's cost analysis does count them (one FLOP
per element and op), which is why it comes out higher at tiny widths; see
tests/test_perf_flops.py for the comparison and its tolerance.

MFU (PaLM, Chowdhery et al. 2022, App. B):
    MFU = (model FLOPs per step / step time) / peak dense FLOP/s of the device(s).
"""

from __future__ import annotations

from typing import Optional

from titans_jax.memory import core as memory_core
from titans_jax.memory.config import MemoryConfig
from titans_jax.models.config import MEMORY_VARIANTS, TitansConfig, param_count_formula

COMPONENTS = (
  "unembed",
  "qkvo_proj",
  "persistent_kv",
  "attention",
  "ffn",
  "memory_proj",
  "memory_conv",
  "memory_inner_fwd",
  "memory_inner_bwd",
  "memory_scans",
  "memory_retrieval",
)
MATMUL_COMPONENTS = tuple(c for c in COMPONENTS if c not in ("memory_conv", "memory_scans"))
OPTIMIZER_FLOPS_PER_PARAM = 20
BACKWARD_FACTOR = 2

# Peak dense (no structured sparsity) FLOP/s per chip, from the vendors' spec sheets:
#   NVIDIA H100 Tensor Core GPU datasheet (SXM5 and PCIe columns; the sheet's tensor
#     figures are "with sparsity", halved here), NVIDIA H200 product page / datasheet
#     (H200 SXM: same tensor throughput as H100 SXM), NVIDIA A100 datasheet (SXM,
#     dense column), Google Cloud TPU docs "TPU v4", "TPU v5e", "TPU v5p" (peak bf16
#     compute per chip).
# "fp32" is the peak a float32 model gets at JAX's default matmul precision: TF32
# tensor cores on A100/H100/H200 (XLA's default for f32 dots on Ampere+), one bf16
# pass on TPU (so = bf16). "fp32_simt" is the plain FP32 (non-tensor) peak.
PEAK_FLOPS = {
  "H100 SXM": {"bf16": 989.4e12, "fp32": 494.7e12, "fp32_simt": 66.9e12},
  "H100 PCIe": {"bf16": 756.5e12, "fp32": 378.0e12, "fp32_simt": 51.2e12},
  "H200": {"bf16": 989.4e12, "fp32": 494.7e12, "fp32_simt": 66.9e12},
  "A100": {"bf16": 312e12, "fp32": 156e12, "fp32_simt": 19.5e12},
  "TPU v4": {"bf16": 275e12, "fp32": 275e12},
  "TPU v5e": {"bf16": 197e12, "fp32": 197e12},
  "TPU v5p": {"bf16": 459e12, "fp32": 459e12},
}

# device_kind substrings (lower case) -> PEAK_FLOPS key, most specific first.
_DEVICE_KINDS = (
  ("h200", "H200"),
  ("h100 pcie", "H100 PCIe"),
  ("h100", "H100 SXM"),
  ("a100", "A100"),
  ("tpu v5 lite", "TPU v5e"),
  ("tpu v5e", "TPU v5e"),
  ("tpu v5p", "TPU v5p"),
  ("tpu v5", "TPU v5p"),
  ("tpu v4", "TPU v4"),
)


def matmul_flops(m: int, k: int, n: int, batch: int = 1) -> int:
  """FLOPs of `batch` products of an m×k and a k×n matrix: 2·batch·m·k·n."""
  return 2 * batch * m * k * n


# ------------------------------------------------------------------------ memory ---


def _mlp_dims(mcfg: MemoryConfig) -> tuple[int, ...]:
  d, h = mcfg.head_dim, mcfg.hidden_dim
  return (d,) + (h,) * (mcfg.depth - 1) + (d,)


def mlp_forward_flops_per_token(mcfg: MemoryConfig) -> int:
  """m_fwd = 2·Σ d_i·d_{i+1}: one token through one head's memory MLP."""
  dims = _mlp_dims(mcfg)
  return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def mlp_backward_flops_per_token(mcfg: MemoryConfig) -> int:
  """The inner gradient ∇_W: weight gradients of every layer + activation gradients of
  every layer but the first (the input k_t is not differentiated by the inner loop)."""
  dims = _mlp_dims(mcfg)
  return 2 * mlp_forward_flops_per_token(mcfg) - 2 * dims[0] * dims[1]


def memory_tokens(
  mcfg: MemoryConfig, T: int, implementation_padding: bool = False, streamed: bool = False
) -> int:
  """Tokens one `memory.apply` call on T tokens runs its chunk-wise work over.
  `streamed`: the call continues a state (MAC's segments), so its buffer has room for
  a block's worth of earlier tokens; a fresh call (`state=None`) starts at a block."""
  C = mcfg.chunk_size
  if not implementation_padding:
    return -(-T // C) * C
  return memory_core.buffer_tokens(mcfg, T, fresh=not streamed)  # the buffer, as run


def memory_apply_flops(
  mcfg: MemoryConfig,
  batch: int,
  tokens: int,
  implementation_padding: bool = False,
  streamed: bool = False,
) -> dict[str, int]:
  """Forward FLOPs of one `memory.apply` (store + retrieve) on batch×tokens×D."""
  B, T, D, Hm, d, C = batch, tokens, mcfg.dim, mcfg.heads, mcfg.head_dim, mcfg.chunk_size
  L = memory_tokens(mcfg, T, implementation_padding, streamed)
  G = L // C
  inner = Hm * d
  proj = 3 * matmul_flops(B * T, D, inner)  # q, k, v
  proj += matmul_flops(B * T, D, Hm)  # θ
  conv = 3 * 2 * mcfg.qkv_conv * B * T * inner  # depthwise causal conv
  if mcfg.has_gate:
    proj += matmul_flops(B * T, D, Hm)
  if mcfg.has_out_proj:
    proj += matmul_flops(B * T, inner, D)
  n_gates = int(mcfg.forget) + mcfg.num_momentum_states
  if mcfg.learned_momentum_combine:
    n_gates += mcfg.num_combine_weights
  if mcfg.per_parameter_lr_modulation:
    n_gates += len(mcfg.fast_weight_names())
  proj += n_gates * matmul_flops(B * G, D, Hm)  # α, η, … from chunk means
  if mcfg.attn_pool_chunks:
    proj += matmul_flops(B * L, D, D)

  m_fwd = mlp_forward_flops_per_token(mcfg)
  n_w = mcfg.num_fast_weights_per_head()
  scans = B * Hm * G * n_w * (2 * mcfg.num_momentum_states + 2)
  if mcfg.spectral_norm_surprises:
    for name, shape in mcfg.fast_weight_shapes().items():
      if len(shape) == 2:
        m, n = sorted(shape)
        scans += B * Hm * G * 5 * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
  retrieval = B * Hm * L * m_fwd
  if implementation_padding:
    retrieval += B * Hm * m_fwd  # the last token, final W
  return {
    "memory_proj": proj,
    "memory_conv": conv,
    "memory_inner_fwd": B * Hm * L * m_fwd,
    "memory_inner_bwd": B * Hm * L * mlp_backward_flops_per_token(mcfg),
    "memory_scans": scans,
    "memory_retrieval": retrieval,
  }


def memory_retrieve_flops(mcfg: MemoryConfig, batch: int, tokens: int) -> dict[str, int]:
  """Forward FLOPs of `memory.retrieve` (MAC's h = M*(q(x)), fixed weights)."""
  B, T, D, Hm, d = batch, tokens, mcfg.dim, mcfg.heads, mcfg.head_dim
  inner = Hm * d
  # q always; k and v too when a conv carries their last tokens as context.
  streams = 3 if mcfg.qkv_conv > 1 else 1
  proj = streams * matmul_flops(B * T, D, inner)
  conv = streams * 2 * mcfg.qkv_conv * B * T * inner
  if mcfg.has_gate:
    proj += matmul_flops(B * T, D, Hm)
  if mcfg.has_out_proj:
    proj += matmul_flops(B * T, inner, D)
  return {
    "memory_proj": proj,
    "memory_conv": conv,
    "memory_retrieval": B * Hm * T * mlp_forward_flops_per_token(mcfg),
  }


# ------------------------------------------------------------------------- model ---


def _window_pairs(T: int, W: int, P: int, masked: bool) -> int:
  """(query, key) pairs of sliding-window attention over T queries."""
  if masked:
    return -(-T // W) * W * (P + 2 * W)
  full = max(0, T - W)  # queries seeing W keys
  head = min(T, W)
  return T * P + full * W + head * (head + 1) // 2


def _segment_pairs(L: int, P: int, with_memory: bool, masked: bool) -> int:
  groups = 2 if with_memory else 1
  if masked:
    return L * (P + groups * L)
  return L * P + groups * L * (L + 1) // 2


def _add(acc: dict, part: dict, times: int = 1):
  for k, v in part.items():
    acc[k] = acc.get(k, 0) + times * v


def forward_flops(
  cfg: TitansConfig,
  batch: int,
  seq: int,
  *,
  masked_attention: bool = True,
  implementation_padding: bool = False,
) -> dict[str, int]:
  """Forward-pass FLOPs of `Titans(cfg)` on batch×seq tokens, by component (see the
  module docstring for each formula)."""
  B, T, D, V, F = batch, seq, cfg.dim, cfg.vocab_size, cfg.hidden
  P, W, S = cfg.num_persistent, cfg.window, cfg.segment_len
  out = {k: 0 for k in COMPONENTS}
  out["unembed"] = matmul_flops(B * T, D, V)
  mcfg = cfg.memory_config if cfg.variant in MEMORY_VARIANTS else None
  for layer in range(cfg.num_layers):
    kind = cfg.layer_kind(layer)
    Pl = P if kind != "lmm" else 0
    out["ffn"] += 3 * matmul_flops(B * T, D, F)
    if kind != "lmm":
      out["qkvo_proj"] += 4 * matmul_flops(B * T, D, D)
    if kind in ("swa", "mag"):
      out["persistent_kv"] += 2 * matmul_flops(Pl, D, D)
      out["attention"] += 2 * 2 * B * D * _window_pairs(T, W, Pl, masked_attention)
    if kind == "mal":
      out["persistent_kv"] += 2 * matmul_flops(B * Pl, D, D)
      out["attention"] += 2 * 2 * B * D * _window_pairs(T, W, Pl, masked_attention)
    if kind in ("mag", "mal"):
      _add(out, memory_apply_flops(mcfg, B, T + Pl, implementation_padding))
    if kind == "lmm":
      _add(out, memory_apply_flops(mcfg, B, T, implementation_padding))
    if kind in ("mac", "seg"):
      mem = kind == "mac"
      out["persistent_kv"] += 2 * matmul_flops(Pl, D, D)
      n, r = divmod(T, S)
      for L, count in ((S, n), (r, 1)):
        if not L or not count:
          continue
        pairs = _segment_pairs(L, Pl, mem, masked_attention)
        out["attention"] += count * 2 * 2 * B * D * pairs
        if mem:
          out["qkvo_proj"] += count * 2 * matmul_flops(B * L, D, D)  # k, v of h
          _add(out, memory_retrieve_flops(mcfg, B, L), count)
          _add(out, memory_apply_flops(mcfg, B, L, implementation_padding, streamed=True), count)
  return out


def step_flops(
  cfg: TitansConfig,
  batch: int,
  seq: int,
  *,
  masked_attention: bool = True,
  implementation_padding: bool = False,
  optimizer_flops_per_param: int = OPTIMIZER_FLOPS_PER_PARAM,
) -> dict[str, float]:
  """FLOPs of one training step (forward + backward + optimizer) on batch×seq tokens.

  Returns a dict with, per component of `COMPONENTS`, its forward+backward FLOPs
  (3× its forward), and the totals "forward", "backward" (= 2× forward), "optimizer",
  "total", "per_token" (total / (batch·seq)) and "params".
  """
  fwd = forward_flops(
    cfg,
    batch,
    seq,
    masked_attention=masked_attention,
    implementation_padding=implementation_padding,
  )
  n_params = param_count_formula(cfg)
  out: dict[str, float] = {k: float((1 + BACKWARD_FACTOR) * v) for k, v in fwd.items()}
  f = float(sum(fwd.values()))
  out["forward"] = f
  out["backward"] = BACKWARD_FACTOR * f
  out["optimizer"] = float(optimizer_flops_per_param * n_params)
  out["total"] = out["forward"] + out["backward"] + out["optimizer"]
  out["per_token"] = out["total"] / (batch * seq)
  out["params"] = float(n_params)
  return out


# --------------------------------------------------------------------------- MFU ---


def peak_flops_for(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
  """Peak dense FLOP/s of one chip of `device_kind` (jax Device.device_kind) for a
  model computing in `dtype`, or None if the device is not in `PEAK_FLOPS` (CPUs)."""
  kind = device_kind.lower()
  key = "bf16" if dtype in ("bfloat16", "bf16", "float16", "fp16") else "fp32"
  for sub, name in _DEVICE_KINDS:
    if sub in kind:
      return PEAK_FLOPS[name][key]
  return None


def model_flops_utilization(
  flops_per_step: float, step_seconds: float, peak_flops: Optional[float]
) -> Optional[float]:
  """MFU = flops_per_step / step_seconds / peak_flops; None when the peak is unknown."""
  if not peak_flops or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / peak_flops


def format_flops(x: float) -> str:
  for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {unit}FLOP"
  return f"{x:.3g} FLOP"


__all__ = [
  "COMPONENTS",
  "PEAK_FLOPS",
  "forward_flops",
  "step_flops",
  "memory_apply_flops",
  "memory_retrieve_flops",
  "matmul_flops",
  "model_flops_utilization",
  "peak_flops_for",
  "format_flops",
  "mlp_forward_flops_per_token",
  "mlp_backward_flops_per_token",
]
