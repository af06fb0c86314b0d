"""The exact chunk scan (`commit_every = chunk_size`) as Pallas TPU kernels (`impl="pallas"`,
docs/memory.md §8): the fast weights W and momentum S stay on-chip across the chunks.

The XLA paths (`primal`, `dual`) carry (W, S) through a `lax.scan` whose every step reads
and writes them in HBM, and the backward stores one (W, S) per chunk. Here one kernel
instance owns one (batch row, head) and walks its chunks in order, W and S in VMEM:

  forward  (grid B×H×segments): per chunk j, y_j = M_{W_{j−1}}(q_j), the chunk's
           gradient at W_{j−1}, S_j = η_j S_{j−1} − G_j, W_j = (1 − α_j) W_{j−1} + S_j.
           It writes y and, once per segment of n chunks, (W, S) at the segment start
           — the only weight-size HBM writes (n: `segment_chunks`).
  backward (same grid, segments in reverse): per segment, recompute its n carries from
           the checkpoint into VMEM, then walk them back with `jax.vjp` of one chunk's
           step (second order through the inner gradient included), carrying (dW, dS).

One chunk's step (`_chunk_step`) is written here again, for one head and 2-D tiles, on
purpose: the XLA paths stay the independent reference (tests/test_memory_kernel.py holds
the kernel to them, forward and gradients, in the Pallas interpreter).

What it takes (`MemoryConfig.kernel_unsupported`): the paper's exact mode (commit_every =
chunk_size), an MLP memory of any depth without the residual LayerNorm, momentum of order
≤ 1 (or none), forgetting on or off, the surprise clip (`max_surprise_norm`); not the soft
clamp, lr modulation, learned momentum mix or Newton–Schulz (the XLA paths serve those).

Off a TPU the kernels run in the Pallas interpreter (exact, slow; a one-line notice says
so once). On a mesh they run under `shard_map`, one instance per device's rows and heads
(Mosaic kernels are not partitioned by XLA).

Axis legend: B batch, H heads, T tokens (a multiple of n·C), C chunk size, d head width,
i/o a layer's input/output width, n chunks per segment, 4 gate columns (θ, α, η, valid).
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from titans_jax.memory.config import MemoryConfig
from titans_jax.memory.networks import activation_fn
from titans_jax.memory.ops import clip_scale
from titans_jax.sharding import rules as rules_lib

_log = logging.getLogger(__name__)
_NOTICED: set[str] = set()

GATE_COLUMNS = ("lr", "alpha", "eta", "valid")  # the last axis of the gates array
#: kernel name -> MXU FLOPs of one call (all its (batch row, head) instances), for cost
#: models of compiled programs (XLA cannot see into a kernel; training.aot).
KERNEL_FLOPS: dict[str, float] = {}


def _notice_once(msg: str) -> None:
  if msg not in _NOTICED:
    _NOTICED.add(msg)
    _log.warning(msg)


# ------------------------------------------------------------------ one chunk ---


def _activation(name):
  """`networks.activation_fn`, with the exact GELU written through erf: jax.nn.gelu's
  erfc has no Mosaic lowering (erf has). Same function; rounding differs near −∞."""
  if name == "gelu":
    return lambda x: 0.5 * x * (1.0 + lax.erf(x * (2.0**-0.5)))
  return activation_fn(name)


def _chunk_step(cfg: MemoryConfig, ws, ss, k_Cd, v_Cd, q_Cd, lr_C1, a_11, e_11, valid_11):
  """One chunk for one head: (W_j list, S_j list, y_j C×d) from W_{j−1}, S_{j−1}.
  A chunk with valid = 0 leaves W and S as they are (its y is still read)."""
  act = _activation(cfg.activation)

  def forward(ws, x):
    h = x
    for layer, w in enumerate(ws):
      if layer:
        h = act(h)
      h = jnp.dot(h, w, preferred_element_type=w.dtype)
    return h

  def loss(ws):
    err = forward(ws, k_Cd) - v_Cd
    return jnp.sum(jnp.mean(err * err, axis=-1, keepdims=True) * lr_C1)

  y = forward(ws, q_Cd)
  grads = jax.grad(loss)(ws)
  keep = 1.0 - valid_11
  decay = valid_11 * (1.0 - a_11) + keep if cfg.forget else None
  new_ws, new_ss = [], []
  for i, (w, g) in enumerate(zip(ws, grads)):
    if cfg.max_surprise_norm is not None:  # ‖g‖² of this head's 2-D tile, kept 1×1
      sq_11 = jnp.sum(jnp.sum(g * g, axis=1, keepdims=True), axis=0, keepdims=True)
      g = g * clip_scale(sq_11, cfg.max_surprise_norm)
    update = -g * valid_11
    if cfg.momentum:
      s = (valid_11 * e_11 + keep) * ss[i] + update
      new_ss.append(s)
      update = s * valid_11
    new_ws.append((decay * w if decay is not None else w) + update)
  return new_ws, new_ss, y


def _dot_flops(jaxpr) -> float:
  """2 · output elements · contracted size of every dot_general in a jaxpr (nested
  jaxprs included)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in lhs_contract)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          total += _dot_flops(inner)
  return total


def _chunk_flops(cfg: MemoryConfig, wshapes, M: int, C: int, d: int, dtype):
  """MXU FLOPs per chunk of (the forward kernel, the backward kernel), counted on the
  traced step (once per config and shape): the backward recomputes the step and runs
  its vjp."""
  return _traced_chunk_flops(cfg, tuple(map(tuple, wshapes)), M, C, d, jnp.dtype(dtype))


@functools.cache
def _traced_chunk_flops(cfg: MemoryConfig, wshapes: tuple, M: int, C: int, d: int, dtype):
  ws = [jnp.zeros(s, dtype) for s in wshapes[: len(wshapes) - M]]
  ss = [jnp.zeros(s, dtype) for s in wshapes[len(wshapes) - M :]]
  tok, col, one = jnp.zeros((C, d), dtype), jnp.zeros((C, 1), dtype), jnp.zeros((1, 1), dtype)
  args = (ws, ss, tok, tok, tok, col, one, one)
  step = functools.partial(_chunk_step, cfg, valid_11=one)

  def back(*args):
    out, vjp = jax.vjp(step, *args)
    return vjp(out)

  fwd = _dot_flops(jax.make_jaxpr(step)(*args).jaxpr)
  return fwd, fwd + _dot_flops(jax.make_jaxpr(back)(*args).jaxpr)


def _chunk_inputs(k_ref, v_ref, q_ref, g_ref, c, C):
  """Chunk c's tokens and gates, the tokens widened on chip to the gates' (the fast
  weights') dtype: k, v, q may arrive narrower (`chunk_scan`), which halves their HBM
  reads and leaves every value the step sees as it was."""
  rows = pl.ds(pl.multiple_of(c * C, C), C)
  g = g_ref[rows, :]
  return (
    k_ref[rows, :].astype(g.dtype),
    v_ref[rows, :].astype(g.dtype),
    q_ref[rows, :].astype(g.dtype),
    g[:, 0:1],
    g[0:1, 1:2],
    g[0:1, 2:3],
    g[0:1, 3:4],
  ), rows


# ------------------------------------------------------------------- kernels ---


def _forward_kernel(cfg, n, C, L, M, *refs):
  w_in, s_in, (k_ref, v_ref, q_ref, g_ref) = refs[:L], refs[L : L + M], refs[L + M : L + M + 4]
  outs = refs[L + M + 4 :]
  y_ref, ck_w, ck_s = outs[0], outs[1 : 1 + L], outs[1 + L : 1 + L + M]
  w_out, s_out = outs[1 + L + M : 1 + 2 * L + M], outs[1 + 2 * L + M : 1 + 2 * L + 2 * M]
  w_scr, s_scr = outs[1 + 2 * L + 2 * M : 1 + 3 * L + 2 * M], outs[1 + 3 * L + 2 * M :]

  @pl.when(pl.program_id(2) == 0)
  def _():
    for src, dst in zip(w_in + s_in, w_scr + s_scr):
      dst[...] = src[...]

  for src, dst in zip(w_scr + s_scr, ck_w + ck_s):  # the segment's checkpoint
    dst[...] = src[...]

  def body(c, carry):
    ws, ss = carry
    (k, v, q, lr, a, e, valid), rows = _chunk_inputs(k_ref, v_ref, q_ref, g_ref, c, C)
    ws, ss, y = _chunk_step(cfg, ws, ss, k, v, q, lr, a, e, valid)
    y_ref[rows, :] = y.astype(y_ref.dtype)
    return ws, ss

  ws, ss = lax.fori_loop(0, n, body, ([r[...] for r in w_scr], [r[...] for r in s_scr]))
  for value, scr, out in zip(ws + ss, w_scr + s_scr, w_out + s_out):
    scr[...] = value
    out[...] = value


def _backward_kernel(cfg, n, C, L, M, *refs):
  ck_w, ck_s = refs[:L], refs[L : L + M]
  k_ref, v_ref, q_ref, g_ref, dy_ref = refs[L + M : L + M + 5]
  dw_T, ds_T = refs[L + M + 5 : 2 * L + M + 5], refs[2 * L + M + 5 : 2 * L + 2 * M + 5]
  rest = refs[2 * L + 2 * M + 5 :]
  dk_ref, dv_ref, dq_ref, dg_ref = rest[:4]
  dw_0, ds_0 = rest[4 : 4 + L], rest[4 + L : 4 + L + M]
  wbuf, sbuf = rest[4 + L + M : 4 + 2 * L + M], rest[4 + 2 * L + M : 4 + 2 * L + 2 * M]
  dw_scr, ds_scr = rest[4 + 2 * L + 2 * M : 4 + 3 * L + 2 * M], rest[4 + 3 * L + 2 * M :]

  @pl.when(pl.program_id(2) == 0)  # the last segment comes first
  def _():
    for src, dst in zip(dw_T + ds_T, dw_scr + ds_scr):
      dst[...] = src[...]

  def recompute(c, carry):  # the segment's carries, into VMEM
    ws, ss = carry
    for value, buf in zip(ws + ss, wbuf + sbuf):
      buf[c] = value
    (k, v, q, lr, a, e, valid), _ = _chunk_inputs(k_ref, v_ref, q_ref, g_ref, c, C)
    ws, ss, _ = _chunk_step(cfg, ws, ss, k, v, q, lr, a, e, valid)
    return ws, ss

  lax.fori_loop(0, n, recompute, ([r[...] for r in ck_w], [r[...] for r in ck_s]))

  def back(j, carry):
    dws, dss = carry
    c = n - 1 - j
    (k, v, q, lr, a, e, valid), rows = _chunk_inputs(k_ref, v_ref, q_ref, g_ref, c, C)
    ws, ss = [b[c] for b in wbuf], [b[c] for b in sbuf]
    step = functools.partial(_chunk_step, cfg, valid_11=valid)
    _, vjp = jax.vjp(step, ws, ss, k, v, q, lr, a, e)
    dws, dss, dk, dv, dq, dlr, da, de = vjp((dws, dss, dy_ref[rows, :]))
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dv_ref[rows, :] = dv.astype(dv_ref.dtype)
    dq_ref[rows, :] = dq.astype(dq_ref.dtype)
    first = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == 0  # α, η: the chunk's first row
    zero = jnp.zeros((C, 1), dlr.dtype)
    dg_ref[rows, :] = jnp.concatenate(
      [dlr, jnp.where(first, da, zero), jnp.where(first, de, zero), zero], axis=1
    ).astype(dg_ref.dtype)
    return dws, dss

  dws, dss = lax.fori_loop(0, n, back, ([r[...] for r in dw_scr], [r[...] for r in ds_scr]))
  for value, scr, out in zip(dws + dss, dw_scr + ds_scr, dw_0 + ds_0):
    scr[...] = value
    out[...] = value


# ------------------------------------------------------------------ pallas_calls ---


def _specs(T, n, C, reverse: bool):
  """BlockSpecs: weights per (b, h); token arrays per segment (last first if reverse)."""
  S = T // (n * C)
  seg = (lambda b, h, s: (b, h, S - 1 - s, 0)) if reverse else (lambda b, h, s: (b, h, s, 0))
  per_head = lambda shape: pl.BlockSpec((None, None) + shape, lambda b, h, s: (b, h, 0, 0))
  tokens = lambda width: pl.BlockSpec((None, None, n * C, width), seg)
  ckpt = lambda shape: pl.BlockSpec(
    (None, None, None) + shape,
    (lambda b, h, s: (b, h, S - 1 - s, 0, 0)) if reverse else (lambda b, h, s: (b, h, s, 0, 0)),
  )
  return S, per_head, tokens, ckpt


DEFAULT_SCOPED_VMEM = 16 * 2**20  # Mosaic's scoped VMEM limit when none is given


def _tile_bytes(shape, itemsize: int = 4) -> int:
  """VMEM bytes of a tile: the last two axes padded to (8, 128)."""
  *lead, rows, cols = shape
  return math.prod(lead) * (-(-rows // 8) * 8) * (-(-cols // 128) * 128) * itemsize


def vmem_bytes(n: int, C: int, d: int, wshapes, backward: bool) -> int:
  """What one kernel instance holds in VMEM: every block double-buffered (token tiles
  of a segment, the per-head weight tiles) and the scratch (the backward's n saved
  carries and its (dW, dS); the forward's (W, S))."""
  weights = sum(_tile_bytes(s) for s in wshapes)
  token_tiles = (9 if backward else 5) * _tile_bytes((n * C, max(d, len(GATE_COLUMNS))))
  scratch = (n + 1) * weights if backward else weights
  return 2 * (token_tiles + 3 * weights) + scratch


def _params(interpret, vmem: int):
  """Sequential over segments; VMEM raised above the default only when the tiles need
  it (a segment of many chunks keeps all its carries for the backward)."""
  limit = None if vmem <= DEFAULT_SCOPED_VMEM * 3 // 4 else int(vmem * 1.25) + 2**20
  return dict(
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=limit
    ),
    interpret=interpret,
  )


def _kernel_name(direction: str, B, H, T, d, wshapes) -> str:
  """The kernel's name in the compiled program, the key of its KERNEL_FLOPS entry: the
  shapes its FLOPs depend on (two memories of one width but other depths differ)."""
  fast = sum(math.prod(s) for s in wshapes)
  return f"titans_memory_scan_{direction}_{B}x{H}x{T}x{d}_w{fast}"


def _forward_call(cfg, n, interpret, ws, ss, k, v, q, g):
  B, H, T, d = k.shape
  C, L, M = cfg.chunk_size, len(ws), len(ss)
  shapes = [w.shape[2:] for w in ws]
  S, per_head, tokens, ckpt = _specs(T, n, C, reverse=False)
  dt = ws[0].dtype
  wshapes = shapes + shapes[:M]
  out_shape = (
    [jax.ShapeDtypeStruct((B, H, T, d), dt)]
    + [jax.ShapeDtypeStruct((B, H, S) + s, dt) for s in wshapes]
    + [jax.ShapeDtypeStruct((B, H) + s, dt) for s in wshapes]
  )
  name = _kernel_name("fwd", B, H, T, d, wshapes)
  KERNEL_FLOPS[name] = B * H * (T // C) * _chunk_flops(cfg, wshapes, M, C, d, dt)[0]
  outs = pl.pallas_call(
    functools.partial(_forward_kernel, cfg, n, C, L, M),
    name=name,
    grid=(B, H, S),
    in_specs=[per_head(s) for s in wshapes] + [tokens(d)] * 3 + [tokens(len(GATE_COLUMNS))],
    out_specs=[tokens(d)] + [ckpt(s) for s in wshapes] + [per_head(s) for s in wshapes],
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM(s, dt) for s in wshapes],
    **_params(interpret, vmem_bytes(n, C, d, wshapes, backward=False)),
  )(*ws, *ss, k, v, q, g)
  y, ck, last = outs[0], outs[1 : 1 + L + M], outs[1 + L + M :]
  return y, ck, last


def _backward_call(cfg, n, interpret, ck, k, v, q, g, dy, dlast):
  B, H, T, d = k.shape
  C = cfg.chunk_size
  M = len(ck) // 2 if cfg.momentum else 0  # one momentum tensor per weight
  L = len(ck) - M
  wshapes = [c.shape[3:] for c in ck]
  S, per_head, tokens, ckpt = _specs(T, n, C, reverse=True)
  dt = ck[0].dtype
  out_shape = (
    [jax.ShapeDtypeStruct((B, H, T, d), k.dtype)] * 3  # cotangents in the tokens' dtype
    + [jax.ShapeDtypeStruct((B, H, T, len(GATE_COLUMNS)), dt)]
    + [jax.ShapeDtypeStruct((B, H) + s, dt) for s in wshapes]
  )
  name = _kernel_name("bwd", B, H, T, d, wshapes)
  KERNEL_FLOPS[name] = B * H * (T // C) * _chunk_flops(cfg, wshapes, M, C, d, dt)[1]
  outs = pl.pallas_call(
    functools.partial(_backward_kernel, cfg, n, C, L, M),
    name=name,
    grid=(B, H, S),
    in_specs=[ckpt(s) for s in wshapes]
    + [tokens(d)] * 3
    + [tokens(len(GATE_COLUMNS)), tokens(d)]
    + [per_head(s) for s in wshapes],
    out_specs=[tokens(d)] * 3 + [tokens(len(GATE_COLUMNS))] + [per_head(s) for s in wshapes],
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((n,) + s, dt) for s in wshapes]
    + [pltpu.VMEM(s, dt) for s in wshapes],
    **_params(interpret, vmem_bytes(n, C, d, wshapes, backward=True)),
  )(*ck, k, v, q, g, dy, *dlast)
  return outs[:4], outs[4:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _scan(cfg, n, interpret, carry, k, v, q, g):
  ws, ss = carry
  y, _, last = _forward_call(cfg, n, interpret, ws, ss, k, v, q, g)
  L = len(ws)
  return (list(last[:L]), list(last[L:])), y


def _scan_fwd(cfg, n, interpret, carry, k, v, q, g):
  ws, ss = carry
  y, ck, last = _forward_call(cfg, n, interpret, ws, ss, k, v, q, g)
  L = len(ws)
  return ((list(last[:L]), list(last[L:])), y), (ck, k, v, q, g)


def _scan_bwd(cfg, n, interpret, residuals, cotangents):
  ck, k, v, q, g = residuals
  (dws, dss), dy = cotangents
  (dk, dv, dq, dg), dcarry = _backward_call(
    cfg, n, interpret, ck, k, v, q, g, dy.astype(ck[0].dtype), list(dws) + list(dss)
  )
  L = len(dws)  # dg's "valid" column is 0: the kernel writes no cotangent for a mask
  return (list(dcarry[:L]), list(dcarry[L:])), dk, dv, dq, dg


_scan.defvjp(_scan_fwd, _scan_bwd)


# ------------------------------------------------------------------ entry point ---

AUTO_SEGMENT_CHUNKS = 32  # the longest segment `scan_remat_every=None` picks
AUTO_SEGMENT_VMEM = 32 * 2**20  # … while its backward fits this much VMEM


def segment_chunks(cfg: MemoryConfig, chunks: int, d: int, wshapes) -> int:
  """Chunks per segment n: one (W, S) checkpoint per segment goes to HBM, the backward
  holds n carries in VMEM. `scan_remat_every` caps n; None lets the kernel take the
  longest segment up to AUTO_SEGMENT_CHUNKS whose backward fits AUTO_SEGMENT_VMEM (the
  checkpoints' bytes fall as 1/n). The chunks are then split into equal segments of as
  few padding chunks as that many segments allows."""
  cap = cfg.scan_remat_every
  if cap is None:
    fits = [
      n
      for n in range(1, AUTO_SEGMENT_CHUNKS + 1)
      if vmem_bytes(n, cfg.chunk_size, d, wshapes, backward=True) <= AUTO_SEGMENT_VMEM
    ]
    cap = max(fits, default=1)
  segments = -(-chunks // min(cap, chunks))
  return -(-chunks // segments)


def _carry_shapes(cfg: MemoryConfig, weight_shapes) -> list:
  """Per-head shapes of the scan's carry: each fast weight and, with momentum, its S."""
  return list(weight_shapes) * (2 if cfg.momentum else 1)


def scan_chunks(cfg: MemoryConfig, chunks: int, d: int, weight_shapes) -> int:
  """How many chunks `chunk_scan` runs for `chunks`: whole segments, identity chunks
  (valid = 0) filling the last one. A caller that lays its tokens out this long already
  (`core._kernel_scan`, in the copy that puts the heads first) spares the kernel's pad,
  a copy of each token array. weight_shapes: the fast weights' per-head (i, o)."""
  n = segment_chunks(cfg, chunks, d, _carry_shapes(cfg, weight_shapes))
  return -(-chunks // n) * n


def chunk_scan(
  cfg: MemoryConfig,
  weights: dict,
  momentum: dict,
  keys,
  values,
  queries,
  gates,
  *,
  platform: str,
  interpret: bool = False,
):
  """The exact scan over chunks: (final weights, final momentum, y).

  weights: {"w0": B×H×i×o, …}; momentum: {"w0": O×B×H×i×o, …} (O ≤ 1; {} without
  momentum); keys, values, queries (shifted one token right, as `core.apply` lays them
  out): B×H×T×d in any float dtype (the activations'; the kernel widens them to the
  inner dtype on chip and returns their cotangents in their own dtype), T a multiple of
  the chunk size; gates: B×H×T×4 in the inner dtype (θ per token; α, η and valid per
  chunk, repeated over its tokens). Returns (weights, momentum, y B×H×T×d in the inner
  dtype) — y_t read from the weights before t's chunk.
  """
  reason = cfg.kernel_unsupported()
  if reason is not None:
    raise ValueError(f"MemoryConfig impl='pallas': {reason}; use impl='auto'")
  if platform != "tpu" and not interpret:
    _notice_once(
      f"memory: the Pallas scan kernel is a TPU kernel (tracing for {platform}); "
      "running it in the Pallas interpreter (exact, slow)"
    )
    interpret = True
  names = cfg.fast_weight_names()
  C = cfg.chunk_size
  B, H, T, d = keys.shape
  chunks = T // C
  wshapes = [weights[name].shape[2:] for name in names]
  n = segment_chunks(cfg, chunks, d, _carry_shapes(cfg, wshapes))
  if C % (32 // jnp.dtype(keys.dtype).itemsize):  # a chunk must fill whole packed row tiles
    keys, values, queries = (t.astype(gates.dtype) for t in (keys, values, queries))
  pad = (scan_chunks(cfg, chunks, d, wshapes) - chunks) * C  # identity chunks
  if pad:
    widen = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
    keys, values, queries, gates = map(widen, (keys, values, queries, gates))
  ws = [weights[name] for name in names]
  ss = [momentum[name][0] for name in names] if cfg.momentum else []

  def local(ws, ss, k, v, q, g):
    return _scan(cfg, n, interpret, (ws, ss), k, v, q, g)

  mesh = rules_lib.active_mesh()
  if mesh is None or mesh.size == 1:
    (ws, ss), y = local(ws, ss, keys, values, queries, gates)
  else:
    rules = rules_lib.active_rules()
    spec = lambda x: rules_lib.logical_to_spec(
      ("batch", "act_heads") + (None,) * (x.ndim - 2), x.shape, mesh, rules
    )
    specs = jax.tree.map(spec, (ws, ss, keys, values, queries, gates))
    (ws, ss), y = jax.shard_map(
      local,
      mesh=mesh,
      in_specs=specs,
      out_specs=((specs[0], specs[1]), specs[2]),
      check_vma=False,
    )(ws, ss, keys, values, queries, gates)
  new_weights = dict(zip(names, ws))
  new_momentum = {name: s[None] for name, s in zip(names, ss)} if cfg.momentum else {}
  return new_weights, new_momentum, y[:, :, :T]
