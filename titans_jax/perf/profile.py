"""Where a compiled program's time goes: a per-op profile read back from `jax.profiler`.

`profile_steps(run_step, hlo_text)` runs a step a few times without the profiler (wall
time), then under `jax.profiler.trace`, reads the trace with `jax.profiler.ProfileData`
and sums the time of every op of the program into groups

    "<component>, <matmul|other>"

where the component is the innermost of the named scopes the library puts on its code
(`jax.named_scope`) that the op's source carries:

  * ``memory_block``: one commit block of the memory's `lax.scan` (gradient factors,
    recurrences, retrieval, block end) and its backward;
  * ``memory``: the rest of the memory layer (projections, gates, buffer layout, norms);
  * ``attention``: the attention kernels (sliding window, MAC segments);
  * ``ffn``: the SwiGLU feed-forward;
  * ``other``: everything else (embedding, q/k/v/o projections, norms, loss, optimizer);
  * ``unnamed``: ops XLA left without source information (see `op_table`).

What counts as one op: on the CPU each executed XLA thunk (events of the XLA:CPU thread
pools); on a GPU each kernel on the device's streams (host-side launch events are not
counted again). Reported per step: the summed op time, the number of ops executed, and
their ratio to the wall time of a step (`busy`): on a GPU a `busy` well under 1 means the
device idles between kernels (launch- or host-bound); on the CPU ops of the two thread
pools overlap, so `busy` can exceed 1. Op times under the profiler include its overhead:
compare shares and counts, not absolute times.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

#: The scopes put on the library's code, most specific first (an op inside a memory
#: block is also inside the memory).
SCOPES = ("memory_block", "memory", "attention", "ffn")

_CONTAINERS = ("while", "call", "conditional")  # opcodes whose events enclose the ops they run


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"\s([a-z][\w\-]*)\(")
_CALLEES = re.compile(
  r"\b(?:calls|body|condition|to_apply|true_computation|false_computation)"
  r"=%?([\w.\-]+)|\b(?:branch_computations|called_computations)=\{([^}]*)\}"
)


def op_table(hlo_text: str, scopes=SCOPES) -> dict[str, tuple[str, str, str]]:
  """Compiled HLO instruction name -> (its text after '=', its source op_name, its
  component).

  The component is the first of `scopes` (most specific first) in the op's own op_name
  metadata. XLA's passes drop that metadata from many instructions (most dots of a loop
  body, fusions they create), so it is also resolved from where the op sits: anything in
  the body of a `while` loop that the memory's code created is in the memory's block
  scan ("memory_block", the first scope); an op without a name takes the name of an
  instruction inside its fused computation, or of the `call`/fusion that calls its
  computation; one with neither (e.g. a stripped dot in the layer scan's body) is
  "unnamed" rather than guessed.
  """
  instrs: dict[str, tuple[str, str, str]] = {}  # name -> (text, op_name, computation)
  caller: dict[str, str] = {}  # computation -> calling instruction
  comp = ""
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and not line.startswith(" "):
      comp = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, text = m.group(1), m.group(2)
    meta = re.search(r'op_name="([^"]*)"', text)
    instrs[name] = (text, meta.group(1) if meta else "", comp)
    for callee in callees(text):
      caller.setdefault(callee, name)

  block_scope, memory_scopes = scopes[0], set(scopes[:2])
  memo: dict[str, str] = {}
  body: dict[str, list[str]] = collections.defaultdict(list)  # computation -> op_names
  for text, src, comp_name in instrs.values():
    if src:
      body[comp_name].append(src)

  loop_memo: dict[str, bool] = {}  # per computation, not per instruction

  def in_memory_loop(comp_name):
    if comp_name not in loop_memo:
      loop_memo[comp_name] = False  # guards a cyclic call graph
      call = caller.get(comp_name)
      if call is not None:
        loop_memo[comp_name] = (
          opcode(instrs[call][0]) == "while" and resolve(call) in memory_scopes
        ) or in_memory_loop(instrs[call][2])
    return loop_memo[comp_name]

  def resolve(name):
    if name in memo:
      return memo[name]
    memo[name] = "unnamed"  # guards a cyclic call graph
    text, src, comp_name = instrs[name]
    out = "unnamed"
    if in_memory_loop(comp_name):
      out = block_scope
    elif src:
      out = component(src, scopes)
    else:
      inner = [n for c in callees(text) for n in body.get(c, ())]
      if inner:  # a fusion: its ops' names
        out = component(inner[-1], scopes)
      elif comp_name in caller and opcode(instrs[caller[comp_name]][0]) not in (
        "while",
        "conditional",
      ):  # inside a call/fusion: the caller's
        out = resolve(caller[comp_name])
    memo[name] = out
    return out

  return {n: (text, src, resolve(n)) for n, (text, src, _) in instrs.items()}


def opcode(instruction_text: str) -> str:
  """The HLO opcode of an instruction's text (after '='), e.g. 'while', 'fusion'."""
  m = _OPCODE.search(instruction_text)
  return m.group(1) if m else ""


def callees(instruction_text: str) -> list[str]:
  """The computations an instruction calls (fusion, while body/condition, call, …)."""
  out = []
  for single, several in _CALLEES.findall(instruction_text):
    out.extend([single] if single else re.findall(r"%?([\w.\-]+)", several))
  return out


def shape_of(instruction_text: str) -> str:
  """The result shape: the text before the opcode."""
  m = _OPCODE.search(instruction_text)
  return instruction_text[: m.start()] if m else instruction_text.split(" ")[0]


def module_name(hlo_text: str) -> str:
  m = re.search(r"^HloModule ([\w.\-]+)", hlo_text, re.M)
  return m.group(1) if m else ""


def is_matmul(name: str, text: str) -> bool:
  """Dots, and the library calls XLA emits for them (XLA:CPU YNNPACK fusions, cuBLAS /
  cuBLASLt custom calls, Triton and cuDNN GEMM fusions)."""
  return (
    name.startswith(("dot", "ynn_fusion", "cublas", "gemm"))
    or " dot(" in text
    or "__cublas" in text
    or "triton_gemm" in text
    or "__cudnn$fusion" in text
  )


def component(op_name: str, scopes=SCOPES) -> str:
  """The first of `scopes` (listed most specific first) that appears as a scope of
  `op_name` (e.g. 'memory_block' in
  'jit(step)/transpose(jvp(memory))/while/body/memory_block/dot_general'), else 'other'."""
  for s in scopes:
    if re.search(rf"(?:^|[/(]){re.escape(s)}(?:[)/]|$)", op_name):
      return s
  return "other"


def _device_planes(data):
  """The planes holding the ops: the first GPU's (kernels; one device, so a multi-GPU
  trace is not summed over devices), else all (the CPU's thread pools)."""
  planes = list(data.planes)
  gpu = sorted((p for p in planes if p.name.startswith("/device:GPU")), key=lambda p: p.name)
  return (gpu[:1] or planes), bool(gpu)


def profile_steps(
  run_step: Callable[[], Any], hlo_text: str, *, steps: int = 2, top: int = 15, scopes=SCOPES
) -> dict:
  """Profiles `steps` calls of `run_step` (which runs the compiled program whose
  `as_text()` is `hlo_text` once and blocks until it is done).

  Returns a JSON-ready dict: wall_ms (without the profiler) and wall_ms_profiled, op_ms
  per step, ops_per_step, busy (op time ÷ wall time, both under the profiler), and the
  per-group ms and share, plus the `top` ops by time. Ops the trace shows without an
  HLO instruction of this program (e.g. a library kernel not annotated) are summed in
  `unattributed_ms`.
  """
  ops = op_table(hlo_text, scopes)
  module = module_name(hlo_text)
  run_step()  # warm: nothing left to compile
  t0 = time.perf_counter()
  for _ in range(steps):
    run_step()
  wall_ns = (time.perf_counter() - t0) * 1e9 / steps

  events = []  # (op name, module or None, duration ns)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      for _ in range(steps):
        run_step()
      profiled_ns = (time.perf_counter() - t0) * 1e9 / steps
    found = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not found:
      raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(found[0])
    planes, on_gpu = _device_planes(data)
    for plane in planes:
      for line in plane.lines:
        if on_gpu and not line.name.startswith("Stream"):
          continue  # derived lines repeat the kernels
        for ev in line.events:
          stats = dict(ev.stats) if ev.stats else {}
          events.append((stats.get("hlo_op") or ev.name, stats.get("hlo_module"), ev.duration_ns))
  # Keep this program's ops (not e.g. a transfer's); if the trace names its modules
  # differently from the HLO text, keep every op whose name the program has.
  ours = any(mod == module for _, mod, _ in events)
  per_op = collections.Counter()
  count = 0
  unattributed = 0.0
  for name, mod, ns in events:
    if ours and mod is not None and mod != module:
      continue
    if name in ops:
      if opcode(ops[name][0]) in _CONTAINERS:
        continue
      per_op[name] += ns / steps
      count += 1
    elif on_gpu:
      unattributed += ns / steps

  groups = collections.Counter()
  rows = []
  for name, ns in per_op.items():
    text, src, comp = ops[name]
    kind = "matmul" if is_matmul(name, text) else "other"
    groups[f"{comp}, {kind}"] += ns
    rows.append((ns, name, shape_of(text), comp, src[-80:]))
  total = sum(groups.values())
  rows.sort(reverse=True)
  return {
    "device": jax.devices()[0].device_kind,
    "backend": jax.default_backend(),
    "steps": steps,
    "wall_ms": wall_ns / 1e6,
    "wall_ms_profiled": profiled_ns / 1e6,
    "op_ms": total / 1e6,
    "ops_per_step": count / steps,
    "busy": total / profiled_ns if profiled_ns else None,
    "unattributed_ms": unattributed / 1e6,
    "ms": {k: v / 1e6 for k, v in sorted(groups.items())},
    "share": {k: v / total for k, v in sorted(groups.items())} if total else {},
    "matmul_share": (
      sum(v for k, v in groups.items() if k.endswith("matmul")) / total if total else None
    ),
    "top_ops": [
      {"ms": ns / 1e6, "op": n, "shape": s, "component": c, "source": src}
      for ns, n, s, c, src in rows[:top]
    ],
  }


def format_profile(res: dict) -> str:
  """A few lines for a log: totals, the groups, the top ops."""
  lines = [
    f"{res['device']}: wall {res['wall_ms']:.1f} ms/step "
    f"({res['wall_ms_profiled']:.1f} profiled), ops {res['op_ms']:.1f} ms/step "
    f"({res['ops_per_step']:.0f} ops, busy {res['busy']:.2f}), "
    f"matmul share {100 * (res['matmul_share'] or 0):.1f} %"
  ]
  if res.get("unattributed_ms"):
    lines.append(f"  unattributed device time {res['unattributed_ms']:.1f} ms/step")
  for k, share in res["share"].items():
    lines.append(f"  {k:22s} {res['ms'][k]:9.1f} ms  {100 * share:5.1f} %")
  lines.append("  top ops:")
  for r in res["top_ops"]:
    lines.append(
      f"  {r['ms']:8.2f} ms  {r['op']:26s} {r['shape']:30s} {r['component']:12s} {r['source']}"
    )
  return "\n".join(lines)
