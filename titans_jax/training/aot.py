"""Size a step for a TPU that is not here: compile it ahead of time for a libtpu
topology, read the compiled program, and bound its step time by the roofline.

    report = size_train_step(cfg, "v5p:2x2x2")     # compiles for 8 v5p chips
    print(format_report(report))

With `libtpu` installed (the `tpu` extra), `jax.experimental.topologies` builds the
devices of any TPU slice by name ("v5e:2x4", "v5p:2x2x1", "v4:2x2x1", …) on any host;
`jit(...).lower(...).compile()` on a mesh of them runs the real TPU compiler (Pallas /
Mosaic kernels included). Per device, from the compiled program:

* memory: the state (parameters + optimizer state, or parameters + decode cache), the
  other arguments, the temporaries, and their peak total against the chip's HBM;
* FLOPs and HBM bytes of one step, loops counted (`titans_jax.perf.hlo_cost`; XLA's own
  cost analysis counts a loop body once), by component;
* the roofline: step time ≥ max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), and
  the MFU that bound allows for the analytic model FLOPs (`titans_jax.perf.flops`).

A bound, not a prediction: real steps also pay collectives, pipeline bubbles and
kernels below peak. The chip table (`CHIPS`) cites its sources.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import threading
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from titans_jax import config as config_lib
from titans_jax import sharding
from titans_jax.layers import attention
from titans_jax.memory import kernel as memory_kernel
from titans_jax.perf import flops as flops_lib
from titans_jax.perf import hlo_cost
from titans_jax.sharding import hosts
from titans_jax.training import sharded

INSTALL_HINT = 'pip install -e ".[tpu]"'


class TargetError(ValueError):
  """The --target cannot be compiled for (no libtpu, unknown topology)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip (= one JAX device; v4 / v5p in megacore mode)."""

  name: str
  hbm_bytes: float
  peak_bf16_flops: float
  hbm_bytes_per_s: float


# Sources (per chip; fetched 2026-11): Google Cloud TPU documentation, "TPU v4"
# (275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s), "TPU v5e" (197 TFLOP/s bf16, 16 GiB HBM2,
# 819 GB/s), "TPU v5p" (459 TFLOP/s bf16, 95 GiB HBM2e, 2765 GB/s), "TPU v6e / Trillium"
# (918 TFLOP/s bf16, 32 GiB HBM, 1640 GB/s). Peaks match perf.flops.PEAK_FLOPS.
CHIPS: dict[str, Chip] = {
  "TPU v4": Chip("v4", 32 * 2**30, 275e12, 1200e9),
  "TPU v5 lite": Chip("v5e", 16 * 2**30, 197e12, 819e9),
  "TPU v5": Chip("v5p", 95 * 2**30, 459e12, 2765e9),
  "TPU v6 lite": Chip("v6e", 32 * 2**30, 918e12, 1640e9),
}

# Mosaic splash kernels (titans_jax.layers.attention) -> FLOPs per visible (q, k) pair
# and head-dim unit: forward q·kᵀ and p·v (2+2); dq recomputes s and dp and forms dq
# (2+2+2); dkv recomputes s and dp and forms dk, dv (2+2+2+2).
_SPLASH_FLOPS_PER_PAIR = {"fwd": 4, "dq": 6, "dkv": 8}


# jax loads the libtpu plugin on a topology's first use without a lock: two threads
# doing it at once (concurrent AOT compiles) both load it, and the second fails with
# "ALREADY_EXISTS: PJRT_Api already exists for device type tpu".
_TOPOLOGY_LOCK = threading.Lock()


@functools.cache
def target_devices(target: str) -> tuple:
  """The compile-only devices of TPU topology `target` (e.g. "v5p:2x2x2").

  Raises:
    TargetError: libtpu is not installed, or libtpu does not know the topology.
  """
  if importlib.util.find_spec("libtpu") is None:
    raise TargetError(
      f"--target {target}: libtpu is not installed; install the tpu extra: {INSTALL_HINT}"
    )
  # Compile-only: several processes may load libtpu at once; off a TPU VM, tell libtpu
  # there is no TPU host to discover (it otherwise prints a page of warnings).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if not hosts.tpu_attached():
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental import topologies

  generation, _, layout = target.lower().partition(":")
  kw = {"chip_config_name": "megacore"} if generation in ("v4", "v5p") else {}
  dims = [int(d) for d in layout.split("x") if d.isdigit()]
  if dims and min(dims[:2]) < 2:
    # libtpu's default host is 2x2 chips; a slice narrower than that (v5e:1x1, one chip)
    # is not divisible by it — make the host as small as the slice.
    kw["chips_per_host_bounds"] = [min(d, 2) for d in dims[:2]] + [1]
  try:
    with _TOPOLOGY_LOCK:
      topo = topologies.get_topology_desc(platform="tpu", topology_name=target, **kw)
  except Exception as e:  # JaxRuntimeError / ValueError from libtpu
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TargetError(
      f"--target {target!r} is not a TPU topology libtpu accepts "
      f"(e.g. v5e:2x4, v5p:2x2x1, v4:2x2x1): {first[:200]}"
    ) from None
  return tuple(topo.devices)


def chip_of(devices) -> Chip:
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise TargetError(f"no HBM / peak figures for {kind!r} in titans_jax.perf.aot.CHIPS")
  return CHIPS[kind]


def target_mesh(target: str, mesh_cfg: sharding.MeshConfig) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh of `mesh_cfg` over the chips of `target`."""
  return sharding.make_mesh(mesh_cfg, target_devices(target))


# ------------------------------------------------------------------------- sizing ---


def _bytes_per_device(tree) -> float:
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return float(total)


def _kernel_flops(text: str, operand_shapes: list[str]) -> float:
  """FLOPs of one Mosaic kernel call: the memory's scan kernels register theirs
  (`memory.kernel.KERNEL_FLOPS`, counted on the traced chunk step); a splash call is
  visible blocks × block² × heads × head width."""
  for name, flops in memory_kernel.KERNEL_FLOPS.items():
    if re.search(re.escape(name) + r"(?![0-9x])", text):
      return flops

  kind = next((k for k in ("dkv", "dq", "fwd") if f"splash_mha_{k}" in text), None)
  if kind is None or len(operand_shapes) < 4:
    return 0.0
  dims = [
    tuple(int(d) for d in m.split(",") if d)
    for m in re.findall(r"\[([\d,]*)\]", operand_shapes[2] + operand_shapes[3])
  ]
  if len(dims) < 2 or len(dims[0]) < 3:
    return 0.0
  q, k = dims[0], dims[1]
  Qp, Cp, K = q[-2], k[-2], q[-1]
  heads = math.prod(q[:-2])  # (batch,) heads
  blocks = attention.SPLASH_VISIBLE_BLOCKS.get((Qp, Cp), (Qp // 128) * (Cp // 128))
  return float(_SPLASH_FLOPS_PER_PAIR[kind] * heads * K * blocks * 128 * 128)


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The two forms of the TPU compiler's out-of-HBM error (libtpu 0.0.42 gives the first).
_HBM_OOM = (
  re.compile(r"temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
  re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)


def parse_hbm_oom(message: str) -> Optional[tuple[float, float]]:
  """(bytes the compiler needed, bytes it had) from a TPU compile's out-of-HBM error
  message, or None when the message is not one."""
  if "RESOURCE_EXHAUSTED" not in message:
    return None
  for pattern in _HBM_OOM:
    m = pattern.search(message)
    if m:
      need, nu, have, hu = m.groups()
      return float(need) * _UNITS[nu], float(have) * _UNITS[hu]
  return None


class DoesNotFit(Exception):
  """The TPU compiler stopped because a step's temporaries alone exceed the chip's HBM
  (it compiles nothing, so there is no cost analysis to report)."""

  def __init__(self, step: str, target: str, shape: str, need: float, have: float):
    super().__init__(f"{step}: {_gib(need)} of temporaries, {_gib(have)} available")
    self.step, self.target, self.shape, self.need, self.have = step, target, shape, need, have

  def report(self) -> str:
    return (
      f"{self.step} on {self.target}, {self.shape}: DOES NOT FIT (over by at least "
      f"{_gib(self.need - self.have)}): the TPU compiler stops — its temporaries alone need "
      f"{_gib(self.need)} of the {_gib(self.have)} it can use per device"
    )


def _compile(lowered, step: str, target: str, shape: str):
  """`lowered.compile()`, with the compiler's out-of-HBM error turned into DoesNotFit."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    oom = parse_hbm_oom(str(e))
    if oom is None:
      raise
    raise DoesNotFit(step, target, shape, *oom) from None


@dataclasses.dataclass
class StepSize:
  """What one compiled step needs per device (bytes, FLOPs, seconds)."""

  step: str  # "train step", "prefill", "decode step"
  target: str
  chip: Chip
  mesh: dict[str, int]
  shape: str  # e.g. "batch 8 × 4096 tokens"
  state_bytes: float  # params + optimizer state (train) / params + cache
  state_parts: dict[str, float]
  argument_bytes: float
  output_bytes: float
  alias_bytes: float
  temp_bytes: float
  flops: float  # compiled, per device, loops counted
  kernel_flops: float  # of which in Mosaic kernels (modelled)
  hbm_bytes: float  # compiled, per device, loops counted
  model_flops: Optional[float]  # analytic (perf.flops), per device; train only
  by_component: dict[str, dict[str, float]]
  mosaic_calls: int
  hlo_text: str = dataclasses.field(default="", repr=False)

  @property
  def total_bytes(self) -> float:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def other_bytes(self) -> float:
    """Everything but the state: batch / tokens, temporaries, non-aliased outputs."""
    return self.total_bytes - self.state_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.chip.hbm_bytes

  @property
  def compute_s(self) -> float:
    return self.flops / self.chip.peak_bf16_flops

  @property
  def memory_s(self) -> float:
    return self.hbm_bytes / self.chip.hbm_bytes_per_s

  @property
  def bound_s(self) -> float:
    return max(self.compute_s, self.memory_s)

  @property
  def mfu_bound(self) -> Optional[float]:
    useful = self.model_flops if self.model_flops is not None else self.flops
    return useful / self.bound_s / self.chip.peak_bf16_flops if self.bound_s > 0 else None


def _analyse(step, target, mesh, shape, state_parts, compiled, model_flops) -> StepSize:
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  cost = hlo_cost.analyse(text, _kernel_flops)
  return StepSize(
    step=step,
    target=target,
    chip=chip_of(mesh.devices.flat),
    mesh=dict(mesh.shape),
    shape=shape,
    state_bytes=sum(state_parts.values()),
    state_parts=state_parts,
    argument_bytes=float(mem.argument_size_in_bytes),
    output_bytes=float(mem.output_size_in_bytes),
    alias_bytes=float(mem.alias_size_in_bytes),
    temp_bytes=float(mem.temp_size_in_bytes),
    flops=cost["flops"],
    kernel_flops=cost["kernel_flops"],
    hbm_bytes=cost["bytes"],
    model_flops=model_flops,
    by_component=cost["by_component"],
    mosaic_calls=text.count('custom_call_target="tpu_custom_call"'),
    hlo_text=text,
  )


def size_train_step(cfg, target: str, mesh: Optional[jax.sharding.Mesh] = None) -> StepSize:
  """Compile `cfg`'s train step for `target` (its mesh flags over the target's chips)."""

  config_lib.validate(cfg)
  mesh = target_mesh(target, cfg.mesh) if mesh is None else mesh
  su = sharded.setup_for(cfg, mesh)
  B, T = cfg.train.batch_size, cfg.data.seq_len
  shape = f"batch {B} × {T} tokens"
  compiled = _compile(
    su.step.lower(su.abstract, su.abstract_batch(B, T)), "train step", target, shape
  )
  parts = {
    "parameters": _bytes_per_device(su.abstract.params),
    "optimizer state": _bytes_per_device(su.abstract.opt_state)
    + _bytes_per_device(su.abstract.rest)
    + _bytes_per_device(su.abstract.step),
  }
  model = flops_lib.step_flops(cfg.model, B, T)["total"] / mesh.size
  return _analyse("train step", target, mesh, shape, parts, compiled, model)


def size_generation(
  cfg,
  target: str,
  mesh: Optional[jax.sharding.Mesh] = None,
  batch: Optional[int] = None,
  prompt_len: Optional[int] = None,
) -> tuple[StepSize, StepSize]:
  """Compile the prefill (a prompt of `prompt_len`, default data.seq_len) and one decode
  step of generation for `target`; the parameters are sharded as in training."""

  config_lib.validate(cfg)
  mesh = target_mesh(target, cfg.mesh) if mesh is None else mesh
  su = sharded.setup_for(cfg, mesh)
  B = batch or cfg.train.batch_size
  T = prompt_len or cfg.data.seq_len
  graphdef, params, rest = su.graphdef, su.abstract.params, su.abstract.rest
  tok_sharding = su.batch_sharding((B, T))

  def prefill(params, rest, tokens):
    with sharding.use_rules(mesh, su.rules):
      return nnx.merge(graphdef, params, rest).prefill(tokens)

  def decode(params, rest, token, cache):
    with sharding.use_rules(mesh, su.rules):
      return nnx.merge(graphdef, params, rest).decode_step(token, cache)

  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=tok_sharding)
  pre = _compile(
    jax.jit(prefill).lower(params, rest, tokens), "prefill", target, f"batch {B} × {T} tokens"
  )
  cache_shardings = pre.output_shardings[1]
  _, cache_shapes = jax.eval_shape(prefill, params, rest, tokens)
  cache = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), cache_shapes, cache_shardings
  )
  token = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=su.batch_sharding((B,)))
  dec = _compile(
    jax.jit(decode, donate_argnums=(3,)).lower(params, rest, token, cache),
    "decode step",
    target,
    f"batch {B} × 1 token (after {T})",
  )
  p_bytes = _bytes_per_device(params) + _bytes_per_device(rest)
  c_bytes = _bytes_per_device(cache)
  return (
    _analyse(
      "prefill", target, mesh, f"batch {B} × {T} tokens", {"parameters": p_bytes}, pre, None
    ),
    _analyse(
      "decode step",
      target,
      mesh,
      f"batch {B} × 1 token (after {T})",
      {"parameters": p_bytes, "decode cache": c_bytes},
      dec,
      None,
    ),
  )


# --------------------------------------------------------------------- reporting ---


def _gib(x: float) -> str:
  return f"{x / 2**30:.2f} GiB" if abs(x) >= 2**30 else f"{x / 2**20:.1f} MiB"


def component_shares(size: StepSize) -> dict[str, tuple[float, float]]:
  """component -> (share of FLOPs, share of HBM bytes), memory_block+memory = memory."""
  groups = {
    "memory scan": ("memory_block",),
    "memory (rest)": ("memory",),
    "attention": ("attention",),
    "ffn": ("ffn",),
    "other": ("other", "unnamed"),
  }
  f = max(size.flops, 1.0)
  b = max(size.hbm_bytes, 1.0)
  out = {}
  for name, comps in groups.items():
    cf = sum(size.by_component.get(c, {}).get("flops", 0.0) for c in comps)
    cb = sum(size.by_component.get(c, {}).get("bytes", 0.0) for c in comps)
    out[name] = (cf / f, cb / b)
  return out


def format_report(size: StepSize) -> str:
  c = size.chip
  mesh = " ".join(f"{k}={v}" for k, v in size.mesh.items())
  n = math.prod(size.mesh.values())
  lines = [
    f"{size.step} on {size.target} ({n} × TPU {c.name}: {_gib(c.hbm_bytes)} HBM, "
    f"{c.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16, {c.hbm_bytes_per_s / 1e9:.0f} GB/s), "
    f"mesh {mesh}, {size.shape}; per device:"
  ]
  parts = ", ".join(f"{k} {_gib(v)}" for k, v in size.state_parts.items())
  lines.append(f"  {' + '.join(size.state_parts):<32} {_gib(size.state_bytes)} ({parts})")
  lines.append(
    f"  {'activations / temporaries':<32} {_gib(size.other_bytes)} "
    f"(temporaries {_gib(size.temp_bytes)})"
  )
  spare = c.hbm_bytes - size.total_bytes
  verdict = f"fits ({_gib(spare)} free)" if spare >= 0 else f"DOES NOT FIT (over by {_gib(-spare)})"
  lines.append(f"  {'total':<32} {_gib(size.total_bytes)} of {_gib(c.hbm_bytes)}: {verdict}")
  kern = (
    f", of which {size.kernel_flops:.3g} in {size.mosaic_calls} Mosaic kernel call(s) (modelled)"
    if size.mosaic_calls
    else ""
  )
  lines.append(f"  {'FLOPs / step (compiled)':<32} {size.flops:.3g}{kern}")
  if size.model_flops is not None:
    lines.append(f"  {'FLOPs / step (model, analytic)':<32} {size.model_flops:.3g}")
  lines.append(f"  {'HBM bytes / step (compiled)':<32} {size.hbm_bytes:.3g}")
  which = "compute" if size.compute_s >= size.memory_s else "HBM"
  mfu = size.mfu_bound
  lines.append(
    f"  {'roofline step time':<32} ≥ {size.bound_s * 1e3:.3g} ms ({which}-bound: "
    f"compute {size.compute_s * 1e3:.3g} ms, HBM {size.memory_s * 1e3:.3g} ms)"
    + (f"; MFU ≤ {100 * mfu:.0f}%" if mfu is not None else "")
  )
  shares = component_shares(size)
  lines.append(
    "  share of FLOPs / bytes: "
    + ", ".join(f"{k} {100 * f:.0f}% / {100 * b:.0f}%" for k, (f, b) in shares.items() if f or b)
  )
  return "\n".join(lines)


def main(cfg, target: str, require_fit: bool = False, log=print) -> int:
  """`train.py --dry_run --target T`: size the train, prefill and decode steps of `cfg`
  on `target`. Returns the exit code: 2 for a bad target, 4 if asked to require a fit
  and a step does not fit, else 0."""
  import sys

  sizes = []
  for size_steps in (lambda: [size_train_step(cfg, target)], lambda: size_generation(cfg, target)):
    try:
      sizes += size_steps()
    except TargetError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except DoesNotFit as e:
      sizes.append(e)
  for size in sizes:
    log(size.report() if isinstance(size, DoesNotFit) else format_report(size))
  misfits = [s.step for s in sizes if isinstance(s, DoesNotFit) or not s.fits]
  if misfits and require_fit:
    print(f"error: {', '.join(misfits)}: do not fit {target} (--require_fit)", file=sys.stderr)
    return 4
  return 0
