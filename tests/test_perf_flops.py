"""The analytic FLOP count (titans_jax.perf.flops) against XLA's own count.

XLA's `cost_analysis()` sums, per HLO instruction, 2·M·N·K for a dot and about one FLOP
per output element of every elementwise op and reduction. Two things keep it from being
compared with our count as-is, and the tests work around both:
  * a while loop's body is counted once, whatever its trip count, so `lax.scan` is
    patched to unroll fully and layers are not scanned: no loop is left to miscount;
  * it counts the elementwise work (norms, softmax, GELU's erf, masks, the per-chunk
    masking and concatenation of fast weights, the cross-entropy) that model FLOPs
    leave out (module docstring of titans_jax.perf.flops).
The memory runs its primal path here (`MemoryConfig.impl="primal"`): model FLOPs count
the algorithm as docs/spec.md §1 states it; the default dual path (docs/memory.md) executes
different matmuls for the same result (at this config ~17% more dot FLOPs).
Checks, on the forward+backward of the cross-entropy (a tiny config per variant: D = 128,
1 layer, memory 2 heads of 64 with chunk 16, T = 32):
  1. before XLA's passes (`lower(...)`), the dot instructions' FLOPs equal our matmul
     components × 3 *exactly* — the formulas, the implementation padding of the memory
     buffer, and backward = 2 × forward (every matmul operand is differentiated);
  2. after compilation (`lower(...).compile().cost_analysis()`), dots within 5% (XLA
     rewrites a few tiny dots, e.g. the D×1 θ / gate projections, as multiply + reduce,
     and simplifies others), and the total within [0.9, 1.3]× ours: the excess is the
     elementwise work, 5–20% at these widths, shrinking as 1/D and 1/chunk at real
     sizes (and larger at chunk 4: ~3×, where per-chunk fast-weight bookkeeping is as
     costly as the chunk's matmuls — exactly why it is not "model" FLOPs).
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from titans_jax.models import TitansConfig
from titans_jax.models.config import VARIANTS
from titans_jax.perf import flops as F
from titans_jax.runtime import build
from titans_jax.runtime.steps import FAST_COMPILE

B, T = 2, 32


def _cfg(variant):
  cfg = TitansConfig.preset(
    "tiny",
    variant=variant,
    scan_layers=False,
    remat="none",
    mac_segment_remat=False,  # model FLOPs: nothing recomputed
    dim=128,
    heads=4,
    ffn_hidden=256,
    num_layers=1,
    memory_heads=2,
    memory_chunk=16,
    window=32,
    segment_len=32,
  )
  if variant == "swa":
    return cfg
  # Model FLOPs are the memory's algorithm as docs/spec.md §1 writes it (one gradient per chunk,
  # retrieval through per-chunk weights): that is the primal path's HLO. The default
  # dual path computes the same numbers with a different set of matmuls.
  return cfg.replace(memory=cfg.memory_config.replace(impl="primal"))


def hlo_dot_flops(hlo_text: str) -> int:
  """Σ 2·|out|·|contracted| over the dot instructions executed by an HLO module: the
  ENTRY computation's dots plus, recursively, those of every computation it calls
  (call / fusion / while body — a while here always has trip count 1, see below)."""
  comps: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    head = re.match(r"(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head and not line.startswith(" "):
      current = head.group(2)
      comps[current] = []
      entry = current if head.group(1) else entry
    elif current is not None and line.startswith(" "):
      comps[current].append(line)

  @functools.cache
  def flops(name: str) -> int:
    shapes, total = {}, 0
    for line in comps[name]:
      for callee in re.findall(r"(?:to_apply|calls|body)=%?([\w.\-]+)", line):
        total += flops(callee)
      m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* ([\w-]+)\((.*)", line)
      if not m:
        continue
      out, dims, op, rest = m.groups()
      shapes[out] = [int(d) for d in dims.split(",") if d]
      if op == "dot":
        lhs = shapes[re.match(r"%?([\w.\-]+)", rest).group(1)]
        contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
        k = math.prod(lhs[int(i)] for i in contracted.split(",") if i)
        total += 2 * math.prod(shapes[out]) * k
    return total

  return flops(entry)


def _lowered_grad(cfg, monkeypatch):
  """The jitted gradient of the model's cross-entropy, lowered with every scan unrolled."""
  from titans_jax.runtime.steps import weighted_xent

  monkeypatch.setattr(jax.lax, "scan", functools.partial(jax.lax.scan, unroll=True))
  # Abstract parameters: lowering needs shapes only (no eager initialisation).
  graphdef, params = nnx.split(build.abstract_model(cfg))
  tokens = jnp.zeros((B, T), jnp.int32)

  def loss(p):
    s, w, _ = weighted_xent(nnx.merge(graphdef, p)(tokens), tokens, jnp.ones((B, T)))
    return s / w

  return jax.jit(jax.grad(loss)).lower(params)


def _ours(cfg):
  fwd = F.forward_flops(cfg, B, T, implementation_padding=True)
  return 3 * sum(fwd[k] for k in F.MATMUL_COMPONENTS), 3 * sum(fwd.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_matmuls_exact_and_total_close_before_optimisation(variant, monkeypatch):
  """The HLO jax emits for forward+backward (before XLA's passes): its dots are exactly
  our matmul components × 3, and its cost analysis is our total plus elementwise work."""
  cfg = _cfg(variant)
  lowered = _lowered_grad(cfg, monkeypatch)
  matmul, total = _ours(cfg)
  assert hlo_dot_flops(lowered.as_text(dialect="hlo")) == pytest.approx(matmul, rel=1e-9)
  ratio = lowered.cost_analysis()["flops"] / total
  assert 0.95 <= ratio <= 1.3, ratio


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["swa", "mag"])
def test_count_matches_compiled_cost_analysis(variant, monkeypatch):
  """`jit(f).lower(...).compile().cost_analysis()` of the optimised program."""
  cfg = _cfg(variant)
  compiled = _lowered_grad(cfg, monkeypatch).compile(compiler_options=FAST_COMPILE)
  text = compiled.as_text()
  assert not re.search(r"\swhile\(", text)  # every loop unrolled: counts are whole
  matmul, total = _ours(cfg)
  np.testing.assert_allclose(hlo_dot_flops(text), matmul, rtol=0.05)
  ratio = compiled.cost_analysis()["flops"] / total
  assert 0.9 <= ratio <= 1.3, ratio


def test_matmul_piece_exact():
  """A plain matmul: our formula and XLA agree exactly (2·M·K·N, no elementwise)."""
  M, K, N = 24, 40, 56
  a, b = jnp.ones((M, K)), jnp.ones((K, N))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert compiled.cost_analysis()["flops"] == F.matmul_flops(M, K, N) == 2 * M * K * N
  # The SwiGLU forward of the model is three such matmuls (+ elementwise silu·up).
  from titans_jax.layers.ffn import SwiGLU

  ffn = SwiGLU(K, N, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  g, s = nnx.split(ffn)
  x = jnp.ones((1, M, K))
  text = jax.jit(lambda s, x: nnx.merge(g, s)(x)).lower(s, x).compile().as_text()
  assert hlo_dot_flops(text) == 3 * F.matmul_flops(M, K, N)


def test_swa_attention_and_padding_formulas():
  cfg = TitansConfig.preset("tiny", variant="swa")  # W=16, P=4, D=64
  W, P, D = cfg.window, cfg.num_persistent, cfg.dim
  f = F.forward_flops(cfg, 1, 40)
  # 3 blocks of 16 queries, each against P + 2W keys, QKᵀ and PV, per layer.
  assert f["attention"] == cfg.num_layers * 2 * 2 * D * 3 * W * (P + 2 * W)
  useful = F.forward_flops(cfg, 1, 40, masked_attention=False)["attention"]
  pairs = 40 * P + (40 - W) * W + W * (W + 1) // 2
  assert useful == cfg.num_layers * 2 * 2 * D * pairs
  mcfg = TitansConfig.preset("tiny", variant="lmm").memory_config  # chunk 4
  assert F.memory_tokens(mcfg, 32) == 32
  assert F.memory_tokens(mcfg, 32, implementation_padding=True) == 32  # fresh
  assert F.memory_tokens(mcfg, 32, implementation_padding=True, streamed=True) == 36


def test_step_flops_totals_and_mfu():
  cfg = TitansConfig.preset("tiny", variant="mag")
  s = F.step_flops(cfg, 2, 64)
  parts = sum(s[k] for k in F.COMPONENTS)
  assert s["backward"] == 2 * s["forward"]
  assert math.isclose(parts, 3 * s["forward"])
  assert math.isclose(s["total"], parts + s["optimizer"])
  assert s["per_token"] == s["total"] / 128
  # The memory dominates this tiny MAG model's count; the paper scale is matmul-heavy.
  assert F.model_flops_utilization(1e12, 2.0, 1e12) == 0.5
  assert F.model_flops_utilization(1e12, 2.0, None) is None
  assert F.peak_flops_for("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert F.peak_flops_for("NVIDIA H200", "float32") == F.PEAK_FLOPS["H200"]["fp32"]
  assert F.peak_flops_for("TPU v5 lite") == 197e12
  assert F.peak_flops_for("cpu") is None


def test_170m_count_is_plausible():
  """At the paper's 170M scale the count is ≈ 6·params·tokens (+ attention, memory)."""
  for variant in ("swa", "mag"):
    cfg = TitansConfig.preset("170m", variant=variant)
    s = F.step_flops(cfg, 1, 4096)
    six_nd = 6 * s["params"] * 4096
    assert 0.9 * six_nd < s["total"] < 2.0 * six_nd, (variant, s["total"] / six_nd)


def test_hlo_cost_charges_an_async_slice_once_to_its_consumer():
  """The TPU compiler prefetches tiles of a buffer into VMEM with async slices
  (slice-start / slice-done); like copy-start / copy-done they move nothing the
  consumer is not charged for: bytes = the negate's operand (the tile) + output, not
  the whole 768×3392 buffer per tile."""
  from titans_jax.perf import hlo_cost

  text = """HloModule m, is_scheduled=true

ENTRY %main (p0: bf16[768,3392]) -> bf16[768,848] {
  %p0 = bf16[768,3392]{0,1} parameter(0)
  %slice-start.1 = ((bf16[768,3392]{0,1}), bf16[768,848]{0,1:S(1)}, s32[]{:S(2)}) slice-start(%p0), slice={[0:768], [0:848]}
  %slice-done.1 = bf16[768,848]{0,1:S(1)} slice-done(%slice-start.1)
  ROOT %negate.1 = bf16[768,848]{0,1} negate(%slice-done.1)
}
"""
  tile = 768 * 848 * 2
  assert hlo_cost.analyse(text)["bytes"] == 2 * tile


def test_hlo_cost_charges_nothing_for_concat_bitcast_and_allocate_buffer():
  """The memory-space assignment joins a sliced prefetch's side-by-side slices with a
  ConcatBitcast custom call (no data moves) and allocates a loop's stack with
  AllocateBuffer (uninitialised): only the consumer's read of the joined tile (and its
  output) is charged, not the slices and the join again, nor the allocation."""
  from titans_jax.perf import hlo_cost

  text = """HloModule m, is_scheduled=true

ENTRY %main (p0: f32[256,128]) -> (f32[256,128], f32[64,128]) {
  %p0 = f32[256,128]{1,0} parameter(0)
  %slice-start.1 = ((f32[256,128]{1,0}), f32[128,128]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%p0), slice={[0:128], [0:128]}
  %slice-start.2 = ((f32[256,128]{1,0}), f32[128,128]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%p0), slice={[128:256], [0:128]}
  %slice-done.1 = f32[128,128]{1,0:S(1)} slice-done(%slice-start.1)
  %slice-done.2 = f32[128,128]{1,0:S(1)} slice-done(%slice-start.2)
  %custom-call.1 = f32[256,128]{1,0:S(1)} custom-call(%slice-done.1, %slice-done.2), custom_call_target="ConcatBitcast"
  %custom-call.2 = f32[64,128]{1,0} custom-call(), custom_call_target="AllocateBuffer"
  %negate.1 = f32[256,128]{1,0} negate(%custom-call.1)
  ROOT %tuple.1 = (f32[256,128]{1,0}, f32[64,128]{1,0}) tuple(%negate.1, %custom-call.2)
}
"""
  buffer = 256 * 128 * 4
  assert hlo_cost.analyse(text)["bytes"] == 2 * buffer  # the negate's read and write
