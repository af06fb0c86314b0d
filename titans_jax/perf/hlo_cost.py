"""FLOPs and HBM bytes of a compiled (partitioned, per-device) XLA program, loops counted.

XLA's `compiled.cost_analysis()` counts the body of a `while` loop once, whatever its
trip count (checked: a 10-step `lax.scan` of matmuls reports the FLOPs of one step), and
a Titans step is mostly loops: the layer scan, the memory's chunk scan, MAC's segment
scan. This walks the compiled HLO text instead:

* every computation gets a multiplicity: how often one step runs it (a `while` body runs
  its trip count times per run of its caller; the trip count is read from the loop's
  condition, `induction < N`, or its `known_trip_count`);
* FLOPs: 2·(output elements)·(contracted size) for every `dot` and `convolution`
  (wherever they sit, fusions included) — the MXU work — and, for the Pallas/Mosaic
  kernels (`tpu_custom_call`), what the kernel's registered cost says (splash attention
  registers its visible blocks, `titans_jax.layers.attention`);
* bytes: operands + output of every instruction that is not inside a fusion (a fusion
  reads its operands from and writes its output to HBM once); tuples, parameters,
  bitcasts and loop plumbing move nothing.

Each op is assigned a component by the library's named scopes (`perf.profile.op_table`):
memory_block (the memory's chunk scan), memory, attention, ffn, other.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Callable
from typing import Optional

from titans_jax.perf import profile

_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "s4": 1,
  "u4": 1,
}
#: Version of the byte count, recorded with results computed from it (benchmarks/tpu_fit.py
#: marks older records): 2 = async slices charged once, to their consumer; 3 = the
#: memory-space assignment's ConcatBitcast and AllocateBuffer custom calls move nothing.
BYTE_COUNT = 3
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_NO_TRAFFIC = (
  "parameter",
  "tuple",
  "get-tuple-element",
  "bitcast",
  "constant",
  "while",
  "call",
  "conditional",
  "after-all",
  "partition-id",
  "replica-id",
  "opt-barrier",
  "copy-start",
  "copy-done",
  # async slices (the TPU compiler's sliced prefetch of a buffer's tile into VMEM, S(1)):
  # like copy-start/done, the consumer of the slice is charged for reading it; counting
  # these ops' operands and outputs charged the whole sliced buffer twice per tile
  "slice-start",
  "slice-done",
)
#: Custom calls that move no bytes: the TPU memory-space assignment lays a sliced
#: prefetch's slices side by side and joins them with a ConcatBitcast (a bitcast: the
#: consumer is charged for reading the result, as for the slices above); AllocateBuffer
#: is an uninitialised buffer (a loop's stack, written by its in-place updates).
_NO_TRAFFIC_CUSTOM_CALLS = (
  'custom_call_target="ConcatBitcast"',
  'custom_call_target="AllocateBuffer"',
)


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
  return [
    (dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(shape_text)
  ]


def _bytes(shape_text: str) -> int:
  return sum(_DTYPE_BYTES.get(dt, 4) * math.prod(dims) for dt, dims in _arrays(shape_text))


def _operands(text: str) -> list[str]:
  """Names of an instruction's operands (the %names inside its first parentheses)."""
  m = re.search(r"\s[a-z][\w\-]*\((.*?)\)(?:,|$)", text)
  if not m:
    return []
  return re.findall(r"%([\w.\-]+)", m.group(1))


def _dot_flops(text: str, shapes: dict[str, str]) -> float:
  out = _arrays(profile.shape_of(text))
  if not out:
    return 0.0
  out_elems = math.prod(out[0][1])
  ops = _operands(text)
  if not ops or ops[0] not in shapes:
    return 0.0
  lhs = _arrays(shapes[ops[0]])
  if not lhs:
    return 0.0
  lhs_dims = lhs[0][1]
  if " dot(" in text:
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", text)
    contracted = math.prod(lhs_dims[int(i)] for i in m.group(1).split(",") if i) if m else 1
    return 2.0 * out_elems * contracted
  # convolution: contracted size = input features × the window taps that can touch
  # the input (XLA writes batched dots' gradients as convolutions whose window spans
  # a padded size-1 spatial axis: only one of its taps is real work)
  if len(ops) < 2 or ops[1] not in shapes:
    return 0.0
  rhs = _arrays(shapes[ops[1]])
  labels = re.search(r"dim_labels=(\w+)_(\w+)->", text)
  if not rhs or not labels:
    return 0.0
  lhs_labels, rhs_labels = labels.group(1), labels.group(2)
  rhs_dims = rhs[0][1]
  i = rhs_labels.find("i")
  per_out = rhs_dims[i] if 0 <= i < len(rhs_dims) else 1
  for ch in "0123456789":
    kr, kl = rhs_labels.find(ch), lhs_labels.find(ch)
    if kr < 0:
      break
    window = rhs_dims[kr]
    per_out *= min(window, lhs_dims[kl]) if 0 <= kl < len(lhs_dims) else window
  # (a grouped conv's kernel already holds only its group's input features)
  return 2.0 * out_elems * per_out


def _trip_count(while_text: str, computations: dict[str, list[tuple[str, str]]]) -> int:
  """A loop's trip count: XLA's `known_trip_count` if given, else N of the condition's
  `i < N` (a scan's loop counts from 0 in steps of 1), else 1."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_text)
  if m:
    return int(m.group(1))
  cond = re.search(r"condition=%?([\w.\-]+)", while_text)
  todo, seen, consts, bounds = [cond.group(1)] if cond else [], set(), {}, []
  while todo:  # the condition and any fusion it calls
    comp = todo.pop()
    if comp in seen:
      continue
    seen.add(comp)
    for name, text in computations.get(comp, []):
      c = re.search(r"\bconstant\((-?\d+)\)", text)
      if c:
        consts[name] = int(c.group(1))
      todo.extend(profile.callees(text))
    for _, text in computations.get(comp, []):
      if " compare(" in text and "direction=LT" in text:
        bounds += [consts[o] for o in _operands(text)[1:] if o in consts]
  return max(bounds) if bounds else max([1] + list(consts.values()))


def _param_read(comp: str, index: int, full: float, computations, shapes, depth=0) -> float:
  """Bytes a fused computation reads of its parameter `index`: only the slices where
  every use is a dynamic-slice (through bitcasts and nested fusions), else all."""
  body = computations.get(comp, [])
  pname = next((n for n, t in body if re.search(rf"\bparameter\({index}\)", t)), None)
  if pname is None or depth > 8:
    return full
  total, todo = 0.0, [pname]
  while todo:
    src = todo.pop()
    for name, t in body:
      ops = _operands(t)
      if src not in ops:
        continue
      op = profile.opcode(t)
      if op == "dynamic-slice" and ops[0] == src:
        total += _bytes(profile.shape_of(t))
      elif op == "bitcast":
        todo.append(name)
      elif op == "fusion":
        callee = next(iter(profile.callees(t)), "")
        total += sum(
          _param_read(callee, i, full, computations, shapes, depth + 1)
          for i, o in enumerate(ops)
          if o == src
        )
      else:
        return full
  return min(total, full)


def _updates_in_place(comp: str, computations, shapes, depth=0) -> tuple[int, float]:
  """(number, bytes written) of the dynamic-update-slices of a fused computation,
  nested fusions included."""
  count, total = 0, 0.0
  for _, t in computations.get(comp, []):
    op = profile.opcode(t)
    ops = _operands(t)
    if op == "dynamic-update-slice" and len(ops) > 1:
      count, total = count + 1, total + _bytes(shapes.get(ops[1], ""))
    elif op == "fusion" and depth < 8:
      c, b = _updates_in_place(next(iter(profile.callees(t)), ""), computations, shapes, depth + 1)
      count, total = count + c, total + b
  return count, total


def _traffic(text: str, shapes: dict[str, str], computations) -> float:
  """HBM bytes of one top-level instruction: its operands and output, except that a
  slice of a buffer reads only the slice (dynamic-slice, also inside fusions) and an
  in-place update writes only the update (dynamic-update-slice: a loop stacking its
  outputs would otherwise count the whole stack every iteration)."""
  op = profile.opcode(text)
  if op == "custom-call" and any(target in text for target in _NO_TRAFFIC_CUSTOM_CALLS):
    return 0.0
  ops = _operands(text)
  out = _bytes(profile.shape_of(text))
  if op == "dynamic-slice":
    return 2.0 * out
  if op == "dynamic-update-slice" and len(ops) > 1:
    return 2.0 * _bytes(shapes.get(ops[1], ""))
  ins = [float(_bytes(shapes.get(o, ""))) for o in ops]
  if op == "fusion":
    callee = next(iter(profile.callees(text)), "")
    ins = [_param_read(callee, i, b, computations, shapes) for i, b in enumerate(ins)]
    count, update = _updates_in_place(callee, computations, shapes)
    if count:
      # operands as large as an output (element) are buffers updated in place:
      # neither read nor written whole, only the updates are written
      outs = [
        float(_DTYPE_BYTES.get(dt, 4) * math.prod(d)) for dt, d in _arrays(profile.shape_of(text))
      ]
      matched = 0
      for i in sorted(range(len(ops)), key=lambda i: -ins[i]):
        full = float(_bytes(shapes.get(ops[i], "")))
        if matched < count and full and full in outs:
          outs.remove(full)
          ins[i] = 0.0
          matched += 1
      if matched:
        out = sum(outs) + update
  return out + sum(ins)


def _instructions(hlo_text: str):
  """(name, text after '=', computation) of every instruction, and the entry's name."""
  out, comp, entry = [], "", None
  for line in hlo_text.splitlines():
    head = profile._COMPUTATION.match(line)
    if head and not line.startswith(" "):
      comp = head.group(1)
      if line.startswith("ENTRY"):
        entry = comp
      continue
    m = profile._INSTRUCTION.match(line)
    if m:
      out.append((m.group(1), m.group(2), comp))
    elif out and line.strip() not in ("", "}"):
      # an instruction printed over several lines (Mosaic kernels' metadata)
      name, text, c = out[-1]
      out[-1] = (name, text + " " + line.strip(), c)
  return out, entry


def analyse(
  hlo_text: str, kernel_flops: Optional[Callable[[str, list[str]], float]] = None
) -> dict:
  """FLOPs and bytes of one run of the program, in total and per component.

  Args:
    hlo_text: `compiled.as_text()` of a partitioned program (one device's share).
    kernel_flops: ("name = text" of a custom call, its operands' shape texts) -> FLOPs,
      for kernels XLA cannot see into (None: they count 0 FLOPs).

  Returns: {"flops", "bytes", "kernel_flops", "loops": [(trip count, body)],
    "by_component": {component: {"flops", "bytes"}}}.
  """
  instrs, entry = _instructions(hlo_text)
  components = {n: c for n, (_, _, c) in profile.op_table(hlo_text).items()}
  computations: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
  shapes: dict[str, str] = {}
  for name, text, comp in instrs:
    computations[comp].append((name, text))
    shapes[name] = profile.shape_of(text)
  fused: set[str] = set()  # computations inside a fusion: no HBM traffic of their own
  edges: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
  loops = []
  for name, text, comp in instrs:
    op = profile.opcode(text)
    for callee in profile.callees(text):
      times = 1.0
      if op == "while":
        trips = _trip_count(text, computations)
        is_body = re.search(rf"body=%?{re.escape(callee)}\b", text) is not None
        times = float(trips if is_body else trips + 1)
        if is_body:
          loops.append((trips, callee))
      if op == "fusion" or comp in fused:
        fused.add(callee)
      edges[comp].append((callee, times))
  # fusion bodies: everything they call is fused too
  stack = list(fused)
  while stack:
    for callee, _ in edges.get(stack.pop(), []):
      if callee not in fused:
        fused.add(callee)
        stack.append(callee)
  # multiplicities, callers before callees (the call graph is a DAG)
  indeg = collections.Counter(c for targets in edges.values() for c, _ in targets)
  mult: dict[str, float] = collections.defaultdict(float)
  mult[entry] = 1.0
  ready = [entry]
  while ready:
    comp = ready.pop()
    for callee, times in edges.get(comp, []):
      mult[callee] += mult[comp] * times
      indeg[callee] -= 1
      if indeg[callee] == 0:
        ready.append(callee)
  total_flops = total_bytes = k_flops = 0.0
  by = collections.defaultdict(lambda: {"flops": 0.0, "bytes": 0.0})
  for name, text, comp in instrs:
    n = mult.get(comp, 0.0)
    if not n:
      continue
    op = profile.opcode(text)
    flops = 0.0
    if op in ("dot", "convolution"):
      flops = _dot_flops(text, shapes)
    elif op == "custom-call" and "tpu_custom_call" in text and kernel_flops is not None:
      flops = kernel_flops(f"{name} = {text}", [shapes.get(o, "") for o in _operands(text)])
      k_flops += n * flops
    nbytes = 0.0
    if comp not in fused and op not in _NO_TRAFFIC:
      nbytes = _traffic(text, shapes, computations)
    total_flops += n * flops
    total_bytes += n * nbytes
    component = components.get(name, "other")
    if component == "unnamed":  # metadata on a continuation line
      src = re.search(r'op_name="([^"]*)"', text)
      component = profile.component(src.group(1)) if src else component
    group = by[component]
    group["flops"] += n * flops
    group["bytes"] += n * nbytes
  return {
    "flops": total_flops,
    "bytes": total_bytes,
    "kernel_flops": k_flops,
    "loops": sorted(loops, reverse=True),
    "by_component": dict(by),
  }
