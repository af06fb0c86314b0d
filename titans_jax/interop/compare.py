"""Compare titans_jax with titans-pytorch 0.5.5 on one seed and one configuration.

    python -m titans_jax.interop.compare --heads 3 --dim-head 5 --chunk-size 5 --seq-len 37
    python -m titans_jax.interop.compare --dtype float64 --momentum-order 2 --learned-momentum-combine

or from Python:

    from titans_jax.interop.compare import compare, format_table
    rows = compare(heads=2, chunk_size=4, batch_size=8, dtype="float64")
    print(format_table(rows))

`compare` builds a `titans_pytorch.NeuralMemory` from the seed, loads it with
`from_torch`, runs the same input through both (in torch optionally as a stream of
calls), and returns one row per compared quantity:

  output                          the retrieved sequence y (B×T×D)
  state.weights.<w>               the final fast weights (torch: states[0])
  state.momentum.<w>              the final momentum, every order (torch: states[1])
  state.grad_point.<w>            the gradient point (torch: weights)
  state.pending.x                 the tokens of the incomplete chunk (torch: the cache)
  grad.<param path>               d loss / d slow parameter, loss = mean(y²) + Σ_w mean(W_final²),
                                  backpropagated in both; torch's parameter gradients are
                                  mapped with `params_from_torch_tensors` and compared
                                  leaf by leaf under our parameter path.

Each row holds `max_abs` (max |ours − torch|), `ref_max` (max |torch|), `max_rel`
(= max_abs / ref_max: an error relative to the tensor's scale) and `mixed`
(= max |ours − torch| / (1 + |torch|), elementwise). "Matches to tol" means
mixed ≤ tol, i.e. numpy.allclose(ours, torch, rtol=tol, atol=tol): an absolute error
for entries of size ≲ 1 and a relative one for larger entries (the fast weights of a
long stream reach tens, where one float32 ulp is already ~2e-6).

Which titans-pytorch run is the reference. In float64 both sides run in float64. In
float32 (`reference="float64"`, the default) the titans-pytorch module is built in float32
and titans_jax loads those float32 weights, but the reference is the *same* module cast
to float64 and run on the same (float32-valued) input: the exact answer of titans-pytorch's
function. Two float32 runs each carry their own rounding, and in a long recurrent,
data-dependent stream those errors are of the order of the tolerance: measured
2026-11-22 on a grid config (chunk 5, commit 10, order-2 momentum, soft clamp), the
gradient w.r.t. `k_proj` of titans_jax float32 was 6.9e-5 from the float64 answer and
titans-pytorch's own float32 7.5e-5, in opposite directions, so the two float32 runs
were 1.44e-4 apart. Comparing against the float64 answer checks what matters (our
float32 is within tolerance of the exact function) without failing on the reference's
own rounding. Each row then also carries `torch_mixed`, titans-pytorch float32's own
error against that same reference, so the two float32 errors can be compared side by
side. `reference="same"` compares against titans-pytorch float32 directly.

Parameters that titans-pytorch initialises to constants (RMSNorm / LayerNorm gains,
the per-head gammas, the attention-pool logits) would hide a wrong mapping, so by
default they get N(0, perturb²) noise (`--perturb 0` to compare the untouched module).

torch and titans-pytorch come from the `parity` extra: pip install -e '.[parity]'.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from titans_jax import memory
from titans_jax.interop.titans_pytorch import (
  from_torch,
  params_from_torch_tensors,
  state_from_torch,
)
from titans_jax.runtime import steps

DTYPES = ("float32", "float64")
REFERENCES = ("float64", "same")


@dataclasses.dataclass(frozen=True)
class Knobs:
  """The titans-pytorch NeuralMemory settings the comparison builds (docs/spec.md §1)."""

  dim: int = 16
  heads: int = 1
  dim_head: Optional[int] = None  # None: titans-pytorch's default (= dim)
  chunk_size: int = 4
  batch_size: Optional[int] = None  # titans-pytorch batch_size = our commit_every
  depth: int = 2
  expansion: float = 4.0
  residual_norm: bool = True  # mem_model_norm_add_residual
  pre_rmsnorm: bool = True
  post_rmsnorm: bool = False
  qk_rmsnorm: bool = False
  momentum: bool = True
  momentum_order: int = 1
  learned_momentum_combine: bool = False
  learned_combine_include_zeroth: bool = False
  attn_pool_chunks: bool = False
  per_parameter_lr_modulation: bool = False
  max_mem_layer_modulation: float = 1.0
  max_grad_norm: Optional[float] = None
  spectral_norm_surprises: bool = False
  max_lr: float = 1.0  # default_step_transform_max_lr
  qkv_activation: Optional[str] = None  # activation= of NeuralMemory: None, silu, relu, gelu

  def torch_kwargs(self) -> dict:
    return dict(
      dim=self.dim,
      chunk_size=self.chunk_size,
      batch_size=self.batch_size,
      dim_head=self.dim_head,
      heads=self.heads,
      default_model_kwargs=dict(depth=self.depth, expansion_factor=self.expansion),
      mem_model_norm_add_residual=self.residual_norm,
      pre_rmsnorm=self.pre_rmsnorm,
      post_rmsnorm=self.post_rmsnorm,
      qk_rmsnorm=self.qk_rmsnorm,
      momentum=self.momentum,
      momentum_order=self.momentum_order,
      learned_momentum_combine=self.learned_momentum_combine,
      learned_combine_include_zeroth=self.learned_combine_include_zeroth,
      attn_pool_chunks=self.attn_pool_chunks,
      per_parameter_lr_modulation=self.per_parameter_lr_modulation,
      max_mem_layer_modulation=self.max_mem_layer_modulation,
      max_grad_norm=self.max_grad_norm,
      spectral_norm_surprises=self.spectral_norm_surprises,
      default_step_transform_max_lr=self.max_lr,
      activation=_torch_activation(self.qkv_activation),
    )


def _torch_activation(name: Optional[str]):
  if name is None:
    return None
  import torch.nn as nn

  acts = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}
  if name not in acts:
    raise ValueError(f"qkv_activation must be None or one of {sorted(acts)}, got {name!r}")
  return acts[name]()


# ------------------------------------------------------------------------ helpers ---


@contextlib.contextmanager
def torch_dtype(dtype: str):
  """Set torch's default dtype inside the block only."""
  import torch

  old = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    yield
  finally:
    torch.set_default_dtype(old)


def jax_dtype_scope(dtype: str):
  """float64 needs x64 on in JAX; enable it only inside the block."""
  return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


_CONSTANT_INIT = ("norm.weight", "gamma", "reduce_to_chunk_rep.")


def build_torch(
  knobs: Knobs, seed: int = 0, dtype: str = "float32", perturb: float = 0.1, **extra_torch_kwargs
):
  """A titans_pytorch.NeuralMemory built from `seed` (torch's global RNG is left as it
  was), with constant-initialised parameters perturbed by N(0, perturb²)."""
  import torch
  from titans_pytorch import NeuralMemory

  with torch.random.fork_rng(devices=[]), torch_dtype(dtype):
    torch.manual_seed(seed)
    nm = NeuralMemory(**{**knobs.torch_kwargs(), **extra_torch_kwargs})
    if perturb:
      with torch.no_grad():
        for name, p in nm.named_parameters():
          # the per-head copies of W0 are identical (and share memory) at init:
          # make them differ, so that a head mix-up cannot hide
          if name.startswith("memory_model_parameters.") or (
            not name.startswith("memory_model.") and any(s in name for s in _CONSTANT_INIT)
          ):
            p.data = p.data + perturb * torch.randn_like(p)
  return nm


def make_input(seed: int, batch: int, seq_len: int, dim: int, dtype: str) -> np.ndarray:
  return np.random.default_rng(seed + 1).standard_normal((batch, seq_len, dim)).astype(dtype)


def torch_stream(nm, x_np: np.ndarray, splits: Optional[Sequence[int]] = None, state=None):
  """Run titans-pytorch over x as calls of the given lengths (each chunk-aligned or a
  single token — titans-pytorch supports only those). Returns (y, final state)."""
  import torch

  x = torch.from_numpy(np.ascontiguousarray(x_np))
  splits = list(splits) if splits else [x.shape[1]]
  if sum(splits) != x.shape[1]:
    raise ValueError(f"splits {splits} do not sum to the sequence length {x.shape[1]}")
  pos = (
    0
    if state is None
    else int(state.seq_index)
    + (0 if state.cache_store_segment is None else state.cache_store_segment.shape[1])
  )
  for n in splits:
    if n > 1 and pos % nm.store_chunk_size:
      raise ValueError(
        f"a {n}-token titans-pytorch call at position {pos} does not start on a chunk "
        f"boundary (chunk {nm.store_chunk_size}): titans-pytorch would retrieve with "
        "the wrong weights; use single tokens up to the boundary"
      )
    pos += n
  ys, start = [], 0
  for n in splits:
    y, state = nm(x[:, start : start + n], state=state)
    ys.append(y)
    start += n
  return torch.cat(ys, dim=1), state


def loss_torch(y, state):
  """The scalar both frameworks backpropagate: mean(y²) + Σ_w mean(W_final,w²)."""
  return y.pow(2).mean() + sum(w.pow(2).mean() for w in state.states[0].values())


def loss_jax(params, x, cfg):
  y, state = memory.apply(params, x, cfg)
  return jnp.mean(jnp.square(y)) + sum(jnp.mean(jnp.square(w)) for w in state["weights"].values())


# XLA's CPU backend optimisations cost most of the time at comparison sizes (the
# program is tiny; compiling it is not). They do not change what is computed.
FAST_COMPILE = steps.FAST_COMPILE
_JITTED: dict = {}


def jitted(name: str, fast_compile: bool = True):
  """Module-level jitted `apply` / `grad` (so repeated comparisons of one config reuse
  the compiled program)."""
  key = (name, fast_compile)
  if key not in _JITTED:
    fn = {"apply": memory.apply, "grad": jax.grad(loss_jax)}[name]
    _JITTED[key] = jax.jit(
      fn, static_argnums=2, compiler_options=FAST_COMPILE if fast_compile else None
    )
  return _JITTED[key]


def torch_param_grads(nm) -> dict:
  """named_parameters -> grad (zeros where torch has none, e.g. the unused skeleton)."""
  import torch

  return {
    n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in nm.named_parameters()
  }


def _path_name(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "idx", k))))
  return ".".join(parts)


def _row(name, ours, ref) -> dict:
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise AssertionError(f"{name}: shape {ours.shape} (titans_jax) != {ref.shape} (torch)")
  diff = np.abs(ours - ref)
  err = float(diff.max()) if ref.size else 0.0
  scale = float(np.abs(ref).max()) if ref.size else 0.0
  mixed = float((diff / (1.0 + np.abs(ref))).max()) if ref.size else 0.0
  if np.isnan(diff).any():
    err = mixed = float("nan")
  return {
    "quantity": name,
    "shape": tuple(ref.shape),
    "max_abs": err,
    "ref_max": scale,
    "max_rel": err / scale if scale > 0 else (0.0 if err == 0 else float("inf")),
    "mixed": mixed,
  }


def state_rows(ours: dict, theirs: dict, prefix: str = "state") -> list[dict]:
  """Rows comparing two of our states (theirs converted with state_from_torch)."""
  rows = []
  for part in ("weights", "momentum", "grad_point"):
    for name in sorted(theirs[part]):
      rows.append(_row(f"{prefix}.{part}.{name}", ours[part][name], theirs[part][name]))
  rows.append(_row(f"{prefix}.pending.x", ours["pending"]["x"], theirs["pending"]["x"]))
  if int(ours["pos"]) != int(theirs["pos"]):
    raise AssertionError(f"{prefix}.pos: {int(ours['pos'])} != {int(theirs['pos'])}")
  return rows


# ------------------------------------------------------------------------ compare ---


def compare(
  knobs: Optional[Knobs] = None,
  *,
  seed: int = 0,
  dtype: str = "float32",
  seq_len: int = 37,
  batch: int = 2,
  splits: Optional[Sequence[int]] = None,
  grads: bool = True,
  perturb: float = 0.1,
  fast_compile: bool = True,
  params_hook=None,
  reference: str = "float64",
  **knob_overrides,
) -> list[dict]:
  """Build both implementations from one seed and config, run the same input, and
  return the error table as a list of rows (see the module docstring).

  knobs / knob_overrides: the NeuralMemory settings (`Knobs` fields).
  splits: torch call lengths (chunk-aligned or 1; default one call). titans_jax
    always runs the whole sequence in one call, so this also checks that a torch
    stream equals one call of ours.
  grads: also compare d loss / d every slow parameter (loss: `loss_jax` / `loss_torch`).
  fast_compile: jit with XLA's CPU backend optimisations off (see FAST_COMPILE).
  params_hook: optional `params -> params` applied to the converted params before
    titans_jax runs (a negative control: a corrupted mapping must show up).
  reference: for dtype float32, "float64" (default) compares against the titans-pytorch
    module cast to float64 (same weights, same input) and adds titans-pytorch float32's
    own error as `torch_mixed`; "same" compares against titans-pytorch float32. See the
    module docstring. Ignored for dtype float64.
  """
  import torch  # noqa: F401  (fail early, naming torch, without the parity extra)

  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if reference not in REFERENCES:
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
  knobs = dataclasses.replace(knobs or Knobs(), **knob_overrides)
  nm = build_torch(knobs, seed=seed, dtype=dtype, perturb=perturb)
  x_np = make_input(seed, batch, seq_len, knobs.dim, dtype)

  with jax_dtype_scope(dtype):
    cfg, params = from_torch(nm)
    x = jnp.asarray(x_np)
    if params_hook is not None:
      params = params_hook(params)
    y_j, st_j = jitted("apply", fast_compile)(params, x, cfg)
    g_j = _flat(jitted("grad", fast_compile)(params, x, cfg)) if grads else None

  ref = _torch_run(nm, x_np, splits, grads)  # titans-pytorch at `dtype`
  torch32 = None
  if dtype == "float32" and reference == "float64":
    # The same module and input, cast to float64: the exact answer (module docstring).
    torch32 = ref
    ref = _torch_run(copy.deepcopy(nm).double(), x_np.astype(np.float64), splits, grads)

  rows = [_row("output", y_j, ref["output"])]
  rows += state_rows(st_j, ref["state"])
  if grads:
    if g_j.keys() != ref["grads"].keys():
      raise AssertionError(f"parameter trees differ: {sorted(g_j)} vs {sorted(ref['grads'])}")
    rows += [_row(f"grad.{k}", g_j[k], ref["grads"][k]) for k in sorted(g_j)]
  if torch32 is not None:
    for r, own in zip(rows, _torch_rows(torch32, ref, grads)):
      assert r["quantity"] == own["quantity"]
      r["torch_mixed"] = own["mixed"]
  return rows


def _flat(tree) -> dict:
  return {_path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _torch_run(nm, x_np: np.ndarray, splits, grads: bool) -> dict:
  """Run titans-pytorch (forward, and backward of `loss_torch` when grads) and convert
  its output, final state and parameter gradients to our layout as float64 NumPy
  (the conversion runs in x64 when the module is float64, so nothing is rounded)."""
  nm.zero_grad(set_to_none=True)
  y_t, st_t = torch_stream(nm, x_np, splits)
  if grads:
    loss_torch(y_t, st_t).backward()
  is64 = next(nm.parameters()).dtype == __import__("torch").float64
  with jax_dtype_scope("float64" if is64 else "float32"):
    cfg, params = from_torch(nm)
    out = {
      "output": np.asarray(y_t.detach().numpy(), np.float64),
      "state": jax.tree.map(np.asarray, state_from_torch(_detach_state(st_t), cfg, params)),
    }
    if grads:
      out["grads"] = {
        k: np.asarray(v, np.float64)
        for k, v in _flat(params_from_torch_tensors(torch_param_grads(nm), cfg)).items()
      }
  return out


def _torch_rows(run: dict, ref: dict, grads: bool) -> list[dict]:
  """The rows of `compare` for a titans-pytorch run against the reference run."""
  rows = [_row("output", run["output"], ref["output"])]
  rows += state_rows(run["state"], ref["state"])
  if grads:
    rows += [_row(f"grad.{k}", run["grads"][k], ref["grads"][k]) for k in sorted(run["grads"])]
  return rows


def _detach_state(state):
  from titans_pytorch.neural_memory import mem_state_detach

  return mem_state_detach(state)


def format_table(rows: Sequence[dict]) -> str:
  """The rows as a text table; `torch_mixed` (titans-pytorch float32's own error against
  the same reference) is a last column when present."""
  width = max(len("quantity"), *(len(r["quantity"]) for r in rows))
  own = any("torch_mixed" in r for r in rows)
  lines = [
    f"{'quantity':<{width}}  {'shape':<16} {'max_abs':>10} {'max_rel':>10} "
    f"{'ref_max':>10} {'mixed':>10}" + (f" {'torch_mixed':>12}" if own else "")
  ]
  lines.append("-" * len(lines[0]))
  for r in rows:
    shape = "×".join(map(str, r["shape"])) or "()"
    lines.append(
      f"{r['quantity']:<{width}}  {shape:<16} {r['max_abs']:>10.2e} "
      f"{r['max_rel']:>10.2e} {r['ref_max']:>10.2e} {r['mixed']:>10.2e}"
      + (f" {r.get('torch_mixed', float('nan')):>12.2e}" if own else "")
    )
  return "\n".join(lines)


def worst(rows: Sequence[dict], prefix: str = "", key: str = "max_abs") -> float:
  """The largest `key` over the rows whose quantity starts with prefix (NaN wins)."""
  vals = [r[key] for r in rows if r["quantity"].startswith(prefix)]
  return float("nan") if any(np.isnan(v) for v in vals) else max(vals, default=0.0)


def tolerance(quantity: str, dtype: str) -> float:
  """The parity tolerances of issue 3 (on `mixed`): 1e-10 in float64; in float32 1e-5
  for output and state, 1e-4 for gradients."""
  if dtype == "float64":
    return 1e-10
  return 1e-4 if quantity.startswith("grad.") else 1e-5


def failures(rows: Sequence[dict], dtype: str, tol: Optional[float] = None) -> list[str]:
  """Rows whose `mixed` error exceeds the tolerance (NaN fails)."""
  out = []
  for r in rows:
    limit = tol if tol is not None else tolerance(r["quantity"], dtype)
    if not r["mixed"] <= limit:
      out.append(f"{r['quantity']} (mixed {r['mixed']:.2e} > {limit:.0e})")
  return out


# --------------------------------------------------------------------------- CLI ---


def _optional_int(s: str):
  return None if s.lower() == "none" else int(s)


def _optional_float(s: str):
  return None if s.lower() == "none" else float(s)


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m titans_jax.interop.compare",
    description="Run titans_jax and titans-pytorch 0.5.5 on one seed and config; print "
    "max abs / rel errors of the output, final state and slow-parameter grads.",
  )
  d = Knobs()
  ap.add_argument("--dim", type=int, default=d.dim)
  ap.add_argument("--heads", type=int, default=d.heads)
  ap.add_argument(
    "--dim-head",
    type=_optional_int,
    default=None,
    help="head width (default: titans-pytorch's, = dim)",
  )
  ap.add_argument("--chunk-size", type=int, default=d.chunk_size)
  ap.add_argument(
    "--batch-size",
    type=_optional_int,
    default=None,
    help="titans-pytorch batch_size = our commit_every (default None)",
  )
  ap.add_argument("--depth", type=int, default=d.depth, help="MemoryMLP depth")
  ap.add_argument("--expansion", type=float, default=d.expansion, help="MemoryMLP expansion_factor")
  ap.add_argument(
    "--no-residual-norm",
    dest="residual_norm",
    action="store_false",
    help="mem_model_norm_add_residual=False",
  )
  ap.add_argument("--no-pre-rmsnorm", dest="pre_rmsnorm", action="store_false")
  ap.add_argument("--post-rmsnorm", action="store_true")
  ap.add_argument("--qk-rmsnorm", action="store_true")
  ap.add_argument("--no-momentum", dest="momentum", action="store_false")
  ap.add_argument("--momentum-order", type=int, default=d.momentum_order)
  ap.add_argument("--learned-momentum-combine", action="store_true")
  ap.add_argument("--learned-combine-include-zeroth", action="store_true")
  ap.add_argument("--attn-pool-chunks", action="store_true")
  ap.add_argument("--per-parameter-lr-modulation", action="store_true")
  ap.add_argument("--max-mem-layer-modulation", type=float, default=d.max_mem_layer_modulation)
  ap.add_argument("--max-grad-norm", type=_optional_float, default=None)
  ap.add_argument("--spectral-norm-surprises", action="store_true")
  ap.add_argument("--max-lr", type=float, default=d.max_lr, help="default_step_transform_max_lr")
  ap.add_argument(
    "--qkv-activation",
    choices=("silu", "relu", "gelu"),
    default=None,
    help="NeuralMemory activation= on the q/k/v projections",
  )
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--dtype", choices=DTYPES, default="float32")
  ap.add_argument(
    "--reference",
    choices=REFERENCES,
    default="float64",
    help="float32 runs: compare against titans-pytorch cast to float64 on the "
    "same weights (default; its float32 error is the torch_mixed column) "
    "or against titans-pytorch float32 ('same')",
  )
  ap.add_argument("--seq-len", type=int, default=37)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument(
    "--splits",
    type=lambda s: [int(v) for v in s.split(",")],
    default=None,
    help="torch call lengths, comma-separated (chunk-aligned or 1), e.g. 8,1,1,2,...",
  )
  ap.add_argument("--no-grads", dest="grads", action="store_false")
  ap.add_argument(
    "--perturb",
    type=float,
    default=0.1,
    help="noise on constant-initialised torch parameters (0: none)",
  )
  ap.add_argument(
    "--tol",
    type=float,
    default=None,
    help="exit 1 if any `mixed` error exceeds this (default: 1e-5 fp32, "
    "1e-10 fp64; 1e-4 for fp32 gradients)",
  )
  args = ap.parse_args(argv)
  knobs = Knobs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Knobs)})
  rows = compare(
    knobs,
    seed=args.seed,
    dtype=args.dtype,
    seq_len=args.seq_len,
    batch=args.batch,
    splits=args.splits,
    grads=args.grads,
    perturb=args.perturb,
    reference=args.reference,
  )
  ref = "float64" if args.dtype == "float64" or args.reference == "float64" else "float32"
  print(
    f"titans_jax vs titans-pytorch 0.5.5  dtype={args.dtype} (titans-pytorch reference "
    f"in {ref}) seed={args.seed} batch={args.batch} seq_len={args.seq_len}"
  )
  print("  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(knobs).items()))
  print(format_table(rows))
  failed = failures(rows, args.dtype, args.tol)
  if failed:
    print("MISMATCH: " + ", ".join(failed))
    return 1
  print("OK: every quantity within tolerance")
  return 0


if __name__ == "__main__":
  sys.exit(main())
