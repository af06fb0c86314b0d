"""Long-range recall: does the memory remember beyond the attention window? (issue 14)

Trains swa, lmm, mag, mal and mac at one width, depth and token budget on two tasks
and scores each on held-out sequences:

  * MQAR (multi-query associative recall): accuracy of the recalled values binned by
    key→query distance relative to the attention window (inside, 1–2×, 2–4×, >4×).
  * S-NIAH passkey (and number): trained at one length, scored at 1×, 2× and 4× that
    length over needle depths (`titans_jax.evaluation.niah`).

Plus `memorisation`: test-time memorisation of one memory layer with fixed random
projections (no outer training), the measurement behind the paper preset's defaults.

Writes under --out: recall.json (everything, with device/date/commit/command), recall.md
(the tables), recall_mqar.png (accuracy vs distance, one line per variant),
recall_curves.png (training loss vs step of every run) and
niah_<variant>_<task>.png heatmaps.

  python benchmarks/recall.py --size cpu --out benchmarks/results/recall_cpu
  python benchmarks/recall.py --size smoke --out /tmp/recall_smoke     # seconds

From a notebook: `from benchmarks.recall import SIZES, run_suite, train_variant`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

if __package__ in (None, ""):  # `python benchmarks/recall.py` from the repo root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from titans_jax import config as config_lib
from titans_jax import memory as memory_lib
from titans_jax.data import synthetic
from titans_jax.evaluation import niah as niah_lib
from titans_jax.memory import MemoryConfig
from titans_jax.memory.inputs import project as memory_project
from titans_jax.memory.networks import memory_forward
from titans_jax.models import TitansConfig
from titans_jax.models import diagnostics as model_diagnostics
from titans_jax.runtime import optimizer as opt_lib
from titans_jax.runtime import steps as ts
from titans_jax.runtime.build import build_model

VARIANTS = ("swa", "lmm", "mag", "mal", "mac")
DIST_BINS = ("inside", "1-2x", "2-4x", ">4x")
MQAR_EVAL_SEED = 9_000_011  # disjoint from the training streams (seeds 0..)


# ------------------------------------------------------------------------ sizes ---


@dataclasses.dataclass(frozen=True)
class RecallSize:
  """One benchmark size: the model shape, the tasks and the training budget."""

  name: str
  dim: int = 64
  layers: int = 2
  heads: int = 4
  window: int = 16  # attention window (swa/mag/mal) and MAC segment length
  num_persistent: int = 4
  memory_heads: int = 1
  memory_chunk: int = 8
  memory: dict = dataclasses.field(default_factory=dict)  # MemoryConfig.paper overrides
  # MQAR
  mqar_len: int = 128
  mqar_pairs: int = 8
  mqar_queries: int = 16
  mqar_vocab: int = 64
  mqar_steps: int = 1000
  # S-NIAH
  niah_tasks: tuple[str, ...] = ("passkey",)
  niah_len: int = 128
  niah_scales: tuple[int, ...] = (1, 2, 4)
  niah_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  niah_samples: int = 16
  niah_steps: int = 600
  # training
  batch: int = 16
  lr: float = 3e-3
  warmup: int = 50
  seeds: tuple[int, ...] = (0,)
  variants: tuple[str, ...] = VARIANTS
  eval_batches: int = 8


SIZES = {
  # a few seconds: the smoke test of the suite (files and fields, not accuracy)
  "smoke": RecallSize(
    name="smoke",
    dim=16,
    layers=1,
    heads=2,
    window=8,
    num_persistent=2,
    memory_chunk=4,
    mqar_len=32,
    mqar_pairs=2,
    mqar_queries=4,
    mqar_vocab=16,
    mqar_steps=2,
    niah_len=112,
    niah_scales=(1, 2),
    niah_depths=(0.0, 1.0),
    niah_samples=2,
    niah_steps=2,
    batch=2,
    warmup=1,
    variants=("lmm",),
    eval_batches=1,
  ),
  # the learning regression test (tests/test_recall.py): one layer, MQAR with 2 pairs
  # in 32 tokens and a window of 4 — a memory-only model (lmm) learns it in ~100 steps
  "tiny": RecallSize(
    name="tiny",
    dim=32,
    layers=1,
    heads=2,
    window=4,
    num_persistent=2,
    memory_chunk=4,
    mqar_len=32,
    mqar_pairs=2,
    mqar_queries=4,
    mqar_vocab=16,
    mqar_steps=120,
    niah_steps=0,
    batch=16,
    lr=1e-2,
    warmup=10,
    variants=("swa", "lmm"),
    eval_batches=4,
  ),
  # the CPU size: 1000 MQAR steps, the budget MAG needs (its loss takes off at ~200–400
  # steps; at 300 it had not), and 2000 S-NIAH steps (at 1000, 2× the training length
  # reached 81 %, at 2000 100 %; RESULTS.md §5). A run takes 0.5–17 min on an idle
  # 2-core CPU (MAC 1.5–2× MAG), the whole size ~60 min; under load, run parts side by
  # side, then --merge
  "cpu": RecallSize(
    name="cpu",
    dim=32,
    layers=2,
    heads=2,
    window=8,
    num_persistent=2,
    memory_chunk=4,
    mqar_len=64,
    mqar_pairs=4,
    mqar_queries=8,
    mqar_vocab=32,
    mqar_steps=1000,
    niah_len=128,
    niah_depths=(0.0, 0.5, 1.0),
    niah_samples=8,
    niah_steps=2000,
    batch=16,
    lr=5e-3,
    warmup=20,
  ),
  # the GPU size (benchmarks/gpu_suite.sh RECALL=1, one ≤ 10 min call; not yet run):
  # 4× the CPU size's width and sequence lengths, 3× its steps
  "gpu": RecallSize(
    name="gpu",
    dim=128,
    layers=2,
    heads=4,
    window=32,
    memory_chunk=8,
    mqar_len=256,
    mqar_pairs=16,
    mqar_queries=16,
    mqar_vocab=128,
    mqar_steps=1000,
    niah_tasks=("passkey", "number"),
    niah_len=512,
    niah_samples=16,
    niah_steps=1000,
    batch=32,
    lr=2e-3,
    warmup=50,
  ),
}


def model_config(
  size: RecallSize,
  variant: str,
  vocab_size: int,
  *,
  model_overrides: Optional[dict] = None,
  **memory_overrides,
) -> TitansConfig:
  """The model of one variant at `size` (every variant shares width, depth and heads)."""
  mem = MemoryConfig.paper(
    size.dim,
    heads=size.memory_heads,
    chunk_size=size.memory_chunk,
    pre_norm=False,
    **{**size.memory, **memory_overrides},
  )
  kw = dict(
    variant=variant,
    vocab_size=vocab_size,
    dim=size.dim,
    num_layers=size.layers,
    heads=size.heads,
    ffn_hidden=2 * size.dim,
    window=size.window,
    segment_len=size.window,
    num_persistent=size.num_persistent,
    memory=mem,
    memory_heads=size.memory_heads,
    memory_chunk=size.memory_chunk,
    # A layer scan stacks every layer's residuals (the memory's per-chunk weights among
    # them) into one buffer per step; at these 1–2 layers the unrolled program is no
    # bigger and its CPU train step 1.25–1.4× faster (RESULTS.md §5). Same weights for a
    # seed either way (the model cuts unrolled layers from the scanned build).
    scan_layers=size.layers > 4,
  )
  kw.update(model_overrides or {})
  return TitansConfig.preset("tiny", **kw)


# The paper's ablations (Titans §5.9) as config switches: name -> (memory, model) overrides.
ABLATIONS = {
  "full": ({}, {}),
  "linear memory (depth 1)": ({"depth": 1}, {}),
  "no momentum": ({"momentum": False}, {}),
  "no forgetting": ({"forget": False}, {}),
  "no conv": ({"qkv_conv": 0}, {}),
  "no persistent tokens": ({}, {"num_persistent": 0}),
}


def train_config(size: RecallSize, steps: int, seed: int) -> config_lib.TrainConfig:
  return config_lib.TrainConfig(
    steps=steps,
    batch_size=size.batch,
    lr=size.lr,
    warmup_steps=size.warmup,
    weight_decay=0.0,
    seed=seed,
  )


# ------------------------------------------------------------------------- data ---


def mqar_batch(size: RecallSize, seed: int, start: int, batch: int) -> dict[str, np.ndarray]:
  """Examples start..start+batch of MQAR stream `seed` as a model batch."""
  exs = [
    synthetic.mqar_example(
      synthetic.example_rng(seed, start + i),
      size.mqar_len,
      size.mqar_pairs,
      size.mqar_queries,
      size.mqar_vocab,
    )
    for i in range(batch)
  ]
  t = np.stack([e["tokens"] for e in exs])
  return {
    "inputs": t[:, :-1],
    "targets": t[:, 1:],
    "weights": np.stack([e["weights"] for e in exs]),
  }


def niah_batch(
  size: RecallSize, task: str, seed: int, start: int, batch: int
) -> dict[str, np.ndarray]:
  """Examples of S-NIAH stream `seed` (needle at a random depth) as a model batch."""
  exs = []
  for i in range(batch):
    rng = synthetic.example_rng(seed, start + i)
    exs.append(synthetic.niah_example(rng, task, size.niah_len, float(rng.random())))
  t = np.stack([e["tokens"] for e in exs])
  return {
    "inputs": t[:, :-1],
    "targets": t[:, 1:],
    "weights": np.stack([e["weights"] for e in exs]),
  }


def query_distances(inputs_BT: np.ndarray, weights_BT: np.ndarray, num_pairs: int) -> np.ndarray:
  """Key→query distance of every scored MQAR position (−1 where unscored).

  The query at input position p is the key token inputs[p]; its pair sits at position
  2·i where inputs[2·i] == inputs[p] (keys are distinct), so the distance is p − 2·i.
  """
  B, T = inputs_BT.shape
  out = np.full((B, T), -1, np.int64)
  for b in range(B):
    key_pos = {int(inputs_BT[b, 2 * i]): 2 * i for i in range(num_pairs)}
    for p in np.nonzero(weights_BT[b])[0]:
      out[b, p] = p - key_pos[int(inputs_BT[b, p])]
  return out


def distance_bin(dist: np.ndarray, window: int) -> np.ndarray:
  """0 inside the window (≤ W), 1: (W, 2W], 2: (2W, 4W], 3: > 4W."""
  return np.digitize(dist, [window + 0.5, 2 * window + 0.5, 4 * window + 0.5])


# --------------------------------------------------------------------- training ---


@dataclasses.dataclass
class Trained:
  """A trained model: jitted pieces, final parameters and the learning curve."""

  model_cfg: TitansConfig
  graphdef: object
  params: object
  rest: object
  curve: list[dict]  # [{"step", "loss", "accuracy"}] every `log_every` steps
  wall_s: float
  nonfinite_steps: int  # steps whose update the train step's guard skipped

  @property
  def diverged(self) -> bool:
    return self.nonfinite_steps > 0


def train_variant(
  model_cfg: TitansConfig,
  train_cfg: config_lib.TrainConfig,
  batch_fn: Callable[[int, int], dict[str, np.ndarray]],
  *,
  log_every: int = 50,
  log: Optional[Callable[[str], None]] = None,
) -> Trained:
  """Train `model_cfg` for `train_cfg.steps` updates on `batch_fn(start, batch)`.

  Built on the library's model, optimiser and jitted train step (the same ones
  `train.py` runs), without checkpoints: a benchmark run is minutes, not days.
  """
  t0 = time.perf_counter()
  model = build_model(model_cfg, train_cfg.seed)
  tx = opt_lib.make_optimizer(train_cfg)
  graphdef, state = ts.create_train_state(model, tx)
  step_fn = ts.make_train_step(graphdef, tx, opt_lib.lr_schedule(train_cfg))
  curve, acc_loss, acc_ok, n = [], 0.0, 0.0, 0
  # Counted on the device every step (no sync): a non-finite step's update is skipped by
  # the train step's guard, so a run can look healthy at its logged steps without it.
  nonfinite = jnp.zeros((), jnp.int32)
  B = train_cfg.batch_size
  for step in range(1, train_cfg.steps + 1):
    batch = jax.tree.map(jnp.asarray, batch_fn((step - 1) * B, B))
    state, m = step_fn(state, batch)
    nonfinite = nonfinite + 1 - m["finite"]
    if step % log_every == 0 or step == train_cfg.steps:
      m = jax.device_get(m)
      acc_loss += float(m["loss"])
      acc_ok += float(m["accuracy"])
      n += 1
      curve.append({"step": step, "loss": float(m["loss"]), "accuracy": float(m["accuracy"])})
      if log:
        log(
          f"  step {step:5d} loss {float(m['loss']):.3f} acc {float(m['accuracy']):.3f}"
          f" ({time.perf_counter() - t0:.0f}s)"
        )
  return Trained(
    model_cfg, graphdef, state.params, state.rest, curve, time.perf_counter() - t0, int(nonfinite)
  )


# ---------------------------------------------------------------------- scoring ---


def train_mqar(
  size: RecallSize,
  variant: str,
  seed: int,
  *,
  model_overrides: Optional[dict] = None,
  log_every: int = 50,
  log: Optional[Callable[[str], None]] = None,
  **memory_overrides,
) -> Trained:
  """`train_variant` of one variant on this size's MQAR stream (data seed = `seed`)."""
  return train_variant(
    model_config(
      size, variant, size.mqar_vocab, model_overrides=model_overrides, **memory_overrides
    ),
    train_config(size, size.mqar_steps, seed),
    lambda start, b: mqar_batch(size, seed, start, b),
    log_every=log_every,
    log=log,
  )


def score_mqar(trained: Trained, size: RecallSize) -> dict:
  """Held-out MQAR accuracy overall and per key→query distance bin."""
  predict = niah_lib.make_predict(trained.graphdef)
  correct = np.zeros(len(DIST_BINS))
  total = np.zeros(len(DIST_BINS))
  for b in range(size.eval_batches):
    batch = mqar_batch(size, MQAR_EVAL_SEED, b * size.batch, size.batch)
    pred = np.asarray(predict(trained.params, trained.rest, jnp.asarray(batch["inputs"])))
    dist = query_distances(batch["inputs"], batch["weights"], size.mqar_pairs)
    scored = dist >= 0
    bins = distance_bin(dist[scored], size.window)
    ok = (pred == batch["targets"])[scored]
    np.add.at(correct, bins, ok)
    np.add.at(total, bins, 1)
  acc = {name: (float(c / t) if t else None) for name, c, t in zip(DIST_BINS, correct, total)}
  beyond = total[1:].sum()
  return {
    "accuracy": float(correct.sum() / max(total.sum(), 1)),
    "beyond_window": float(correct[1:].sum() / beyond) if beyond else None,
    "by_distance": acc,
    "count_by_distance": dict(zip(DIST_BINS, total.astype(int).tolist())),
    "chance": 2.0 / size.mqar_vocab,
  }


def score_niah(trained: Trained, size: RecallSize, task: str) -> dict:
  """S-NIAH exact-match grid at 1×, 2×, 4× the training length over depths."""
  predict = niah_lib.make_predict(trained.graphdef)
  lengths = [size.niah_len * s for s in size.niah_scales]
  return niah_lib.niah_grid(
    predict,
    trained.params,
    trained.rest,
    task=task,
    lengths=lengths,
    depths=size.niah_depths,
    samples=size.niah_samples,
    batch_size=min(size.niah_samples, 16),
  )


# ------------------------------------------------------------------- diagnostics ---


def layer0_diagnostics(trained: Trained, size: RecallSize, *, batch: int = 8) -> dict:
  """What the first layer's memory does on held-out MQAR (`memory.diagnostics`).

  Layer 0's mixer input is RMSNorm(embedding), so it is computed here from the model's
  own modules; deeper layers need the model-level capture (not used here). Reports the
  per-token θ, per-chunk α / η means, and the memory's inner loss on value tokens: at a
  pair's first occurrence (before it can be stored) and at its repeats later in the
  sequence (after it was stored). For mag/mac also the gate's mean σ(RMSNorm(m)) and the
  norms of the memory and attention outputs.
  """
  cfg = trained.model_cfg
  if not cfg.has_memory(0):
    return {}
  model = nnx.merge(trained.graphdef, trained.params, trained.rest)
  stack_def, stack_state = nnx.split(model.runs[0])
  block = nnx.merge(stack_def, jax.tree.map(lambda a: a[0], stack_state))
  ex = mqar_batch(size, MQAR_EVAL_SEED, 0, batch)
  tokens = jnp.asarray(ex["inputs"])
  h = block.mix_norm(model.embed(tokens))
  P = block._persistent_tokens(batch)
  xt = h if P is None else jnp.concatenate([P, h], axis=1)
  mcfg = cfg.memory_config
  mparams = block.memory.param_tree()
  diag = jax.jit(memory_lib.diagnostics, static_argnums=2)(mparams, xt, mcfg)
  n_p = 0 if P is None else P.shape[1]
  loss = np.asarray(diag["inner_loss"])[:, n_p:].mean(-1)  # B×T (mean over heads)
  first, repeat = [], []
  inputs = ex["inputs"]
  for b in range(batch):
    seen = set()
    for p in range(1, inputs.shape[1]):
      if p < 2 * size.mqar_pairs and p % 2 == 1:
        first.append(loss[b, p])
        seen.add(int(inputs[b, p - 1]))
      elif ex["weights"][b, p - 1] and int(inputs[b, p - 1]) in seen:
        repeat.append(loss[b, p])  # p: the value token right after a query key
  out = {
    "theta_mean": float(np.mean(diag["theta"])),
    "inner_loss_values_first": float(np.mean(first)),
    "inner_loss_values_repeat": float(np.mean(repeat)),
    "inner_loss_all": float(np.mean(loss)),
  }
  for name in ("alpha", "eta"):
    if name in diag:
      out[f"{name}_mean"] = float(np.nanmean(np.asarray(diag[name])))
  if cfg.variant in ("mag", "mac"):
    m = block.memory(xt)[0][:, n_p:]
    out["gate_mean"] = float(jnp.mean(jax.nn.sigmoid(block.gate_norm_m(m))))
    out["memory_out_rms"] = float(jnp.sqrt(jnp.mean(jnp.square(m))))
    if cfg.variant == "mag":
      pk, pv = block._persistent_kv(batch)
      y, _ = block._window_attention(h, pk, pv, False)
      out["attention_out_rms"] = float(jnp.sqrt(jnp.mean(jnp.square(y))))
  return out


def mqar_value_positions(inputs_BT: np.ndarray, weights_BT: np.ndarray, num_pairs: int):
  """(first, repeat): boolean B×T masks of the value tokens of an MQAR batch, where a
  pair is written (positions 1, 3, …) and where a query repeats it (the scored target
  of a query key, one position after it)."""
  B, T = inputs_BT.shape
  first = np.zeros((B, T), bool)
  first[:, 1 : 2 * num_pairs : 2] = True
  repeat = np.zeros((B, T), bool)
  repeat[:, 1:] = weights_BT[:, :-1] > 0
  return first, repeat


# Attention statistics of `titans_jax.models.diagnostics` read at the query keys: the
# window attention's (swa/mag/mal) and MAC's segment attention's.
ATTENTION_STATS = (
  "attention_self",
  "attention_persistent",
  "attention_retrieval",
  "attention_retrieval_self",
)


def layer_diagnostics(trained: Trained, size: RecallSize, *, batch: int = 8) -> list[dict]:
  """Per layer, on held-out MQAR, from the model's own forward
  (`titans_jax.models.diagnostics`, i.e. what each block's memory really reads — for
  MAC the attention output, for MAL/MAG the normed block input with the persistent
  tokens): the memory's output norm against the attention's, the MAG/MAC gate's mean,
  θ, the memory's inner loss on value tokens where a pair is first written vs where
  a query repeats it later (does the memory hold the pair when it is asked?), and at
  the query keys the window attention's weight on the query's own position and on the
  persistent tokens (in MAL, the memory's retrieval reaches the output only through
  the attention: does it look at its own position?).

  One sequence per call, so positions keep their meaning (the capture averages over
  the batch)."""
  model = nnx.merge(trained.graphdef, trained.params, trained.rest)
  ex = mqar_batch(size, MQAR_EVAL_SEED, 0, batch)
  first, repeat = mqar_value_positions(ex["inputs"], ex["weights"], size.mqar_pairs)
  acc: dict[tuple[int, str], list] = {}
  kinds = {}
  for b in range(batch):
    layers = model_diagnostics(model, jnp.asarray(ex["inputs"][b : b + 1]))
    for layer in layers:
      i = layer["layer"]
      kinds[i] = layer["kind"]
      arrays = {k: np.asarray(v) for k, v in layer.items() if k not in ("layer", "kind")}
      for name in ("memory_norm", "attention_norm", "gate_mean", "memory_theta"):
        if name in arrays:
          acc.setdefault((i, name), []).append(float(arrays[name].mean()))
      if "memory_loss" in arrays:
        loss = arrays["memory_loss"]
        acc.setdefault((i, "loss_first"), []).extend(loss[first[b]].tolist())
        acc.setdefault((i, "loss_repeat"), []).extend(loss[repeat[b]].tolist())
      queries = ex["weights"][b] > 0  # where a query key is read (its value is next)
      for name in ATTENTION_STATS:
        if name in arrays:
          acc.setdefault((i, name + "_queries"), []).extend(arrays[name][queries].tolist())
  out = []
  for i in sorted(kinds):
    get = lambda name, i=i: float(np.mean(acc[(i, name)])) if (i, name) in acc else None
    row = {"layer": i, "kind": kinds[i]}
    if get("memory_norm") is not None:
      row.update(
        memory_norm=get("memory_norm"),
        theta_mean=get("memory_theta"),
        inner_loss_values_first=get("loss_first"),
        inner_loss_values_repeat=get("loss_repeat"),
      )
    if get("attention_norm") is not None:
      row["attention_norm"] = get("attention_norm")
    if get("gate_mean") is not None:
      row["gate_mean"] = get("gate_mean")
    for name in ATTENTION_STATS:
      if get(name + "_queries") is not None:
        row[name + "_at_queries"] = get(name + "_queries")
    out.append(row)
  return out


def niah_layer_diagnostics(
  trained: Trained, size: RecallSize, task: str, *, samples: int = 4
) -> list[dict]:
  """Per layer, length and depth of the S-NIAH grid: does the memory still hold the
  needle when the question asks for it? From the model's own forward
  (`titans_jax.models.diagnostics`) on `samples` held-out examples per cell: the
  memory's inner loss on the answer bytes where the needle writes them and where the
  (teacher-forced) answer repeats them after the question — the first byte of each is
  left out, so that both keys see the same preceding bytes through the q/k/v conv —
  and the MAG/MAC gate's mean at the answer. A loss at the answer near the loss at the
  needle means the memory no longer holds what it wrote there."""
  model = nnx.merge(trained.graphdef, trained.params, trained.rest)
  acc: dict[tuple, list] = {}
  kinds = {}
  for length in [size.niah_len * s for s in size.niah_scales]:
    for depth in size.niah_depths:
      cell = [niah_lib.EVAL_SEED, synthetic.NIAH_TASKS.index(task), length, int(depth * 1e6)]
      for i in range(samples):
        ex = synthetic.niah_example(np.random.default_rng(cell + [i, 1]), task, length, depth)
        tokens = ex["tokens"]
        n = int(ex["weights"].sum())
        answer = bytes(tokens[-n:].astype(np.uint8))
        at = bytes(tokens[: length + 1 - n].astype(np.uint8)).find(answer)
        if at < 0:
          raise ValueError(f"needle answer not found in the {task!r} example")
        written = np.arange(at + 1, at + n - 1)  # answer bytes 1 … n−2 in the needle
        asked = np.arange(length + 2 - n, length)  # the same bytes after the question
        for layer in model_diagnostics(model, jnp.asarray(tokens[None, :-1])):
          li = layer["layer"]
          kinds[li] = layer["kind"]
          key = (li, length, depth)
          if "memory_loss" in layer:
            loss = np.asarray(layer["memory_loss"])
            acc.setdefault(key + ("written",), []).extend(loss[written].tolist())
            acc.setdefault(key + ("asked",), []).extend(loss[asked].tolist())
          if "gate_mean" in layer:
            acc.setdefault(key + ("gate",), []).extend(
              np.asarray(layer["gate_mean"])[asked].tolist()
            )
  rows = []
  for li in sorted(kinds):
    for length in [size.niah_len * s for s in size.niah_scales]:
      for depth in size.niah_depths:
        get = lambda name: (
          float(np.mean(acc[(li, length, depth, name)]))
          if (li, length, depth, name) in acc
          else None
        )
        row = {"layer": li, "kind": kinds[li], "length": length, "depth": depth}
        if get("written") is not None:
          row.update(inner_loss_needle=get("written"), inner_loss_answer=get("asked"))
        if get("gate") is not None:
          row["gate_mean_at_answer"] = get("gate")
        rows.append(row)
  return rows


# ------------------------------------------------------------------ memorisation ---


def memorisation(cfg: MemoryConfig, num_tokens: int, *, seed: int = 0, batch: int = 4) -> dict:
  """Test-time memorisation of one memory layer with fixed random projections.

  The layer (slow parameters from `memory.init(seed)`, never trained) reads
  `num_tokens` random inputs in one `apply` call; we then compare the memory's own loss
  mean_d (M(k_t) − v_t)² on those tokens' key/value pairs at W_0 ("before"), at the final
  fast weights ("stored"), at the final weights on fresh pairs it never read ("unseen":
  what a memory that only learned the mean value would score), and at the final
  weights of the same layer with forgetting set to 1 ("forget_all": α = 1 every chunk,
  so only the last chunk's update is left). Ratios < 1 mean the pairs were stored.
  """
  errs = [float(e) for e in _memorisation_errors(cfg, num_tokens, seed, batch)]
  before, stored, unseen, forget_all, theta = errs
  return {
    "before": before,
    "stored": stored,
    "unseen": unseen,
    "forget_all": forget_all,
    "stored_over_before": stored / before,
    "stored_over_unseen": stored / unseen,
    "stored_over_forget_all": stored / forget_all,
    "theta_mean": theta,
  }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _memorisation_errors(cfg: MemoryConfig, num_tokens: int, seed: int, batch: int):
  if not cfg.forget:
    raise ValueError("memorisation: cfg.forget must be True (it compares with α = 1)")
  params = memory_lib.init(jax.random.key(seed), cfg)
  kx, ku = jax.random.split(jax.random.key(seed + 1))
  x = jax.random.normal(kx, (batch, num_tokens, cfg.dim))
  xu = jax.random.normal(ku, (batch, num_tokens, cfg.dim))
  conv = (
    jnp.zeros((batch, cfg.qkv_conv - 1, 3, cfg.heads, cfg.head_dim)) if cfg.qkv_conv > 1 else None
  )
  _, _, _, k, v, lr, _ = memory_project(params, x, conv, cfg)
  _, _, _, k_unseen, v_unseen, _, _ = memory_project(params, xu, conv, cfg)
  # The same layer twice in one program: as initialised, and forgetting everything
  # (decay gate weight 0, bias 30: α = sigmoid(30) = 1 in float32).
  forget_all = dict(
    params,
    decay={
      "w": jnp.zeros_like(params["decay"]["w"]),
      "b": jnp.full_like(params["decay"]["b"], 30.0),
    },
  )
  states = [memory_lib.apply(p, x, cfg)[1]["weights"] for p in (params, forget_all)]
  fwd = jax.vmap(jax.vmap(lambda w, kk: memory_forward(w, kk, cfg), in_axes=(0, 1), out_axes=1))
  w0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape), params["W0"])
  err = lambda w, kk, vv: jnp.mean(jnp.square(fwd(w, kk.astype(jnp.float32)) - vv))
  return (
    err(w0, k, v),
    err(states[0], k, v),
    err(states[0], k_unseen, v_unseen),
    err(states[1], k, v),
    lr.mean(),
  )


# ---------------------------------------------------------------------- the suite ---


def environment(argv: Sequence[str]) -> dict:
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = bool(
      subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
      ).stdout.strip()
    )
  except (OSError, subprocess.CalledProcessError):
    commit, dirty = "unknown", False
  dev = jax.devices()[0]
  return {
    "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}",
    "cpu_count": __import__("os").cpu_count(),
    "host": platform.node(),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "commit": commit + ("+dirty" if dirty else ""),
    "jax": jax.__version__,
    "command": "python " + " ".join(argv),
  }


def run_suite(
  size: RecallSize,
  out: str | pathlib.Path,
  *,
  tasks: Sequence[str] = ("mqar", "niah"),
  argv: Sequence[str] = (),
  log: Callable[[str], None] = print,
) -> dict:
  """Train and score every variant of `size`; write JSON, markdown and PNGs under `out`.

  The JSON is rewritten after every run, so a suite cut short keeps what it had.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  result = {"env": environment(argv), "size": dataclasses.asdict(size), "runs": []}

  def flush():
    (out / "recall.json").write_text(json.dumps(result, indent=2))

  for task in tasks:
    subtasks = ["mqar"] if task == "mqar" else list(size.niah_tasks)
    for sub in subtasks:
      for variant in size.variants:
        for seed in size.seeds:
          log(f"[{task}/{sub}] {variant} seed {seed}")
          if task == "mqar":
            mcfg = model_config(size, variant, size.mqar_vocab)
            tcfg = train_config(size, size.mqar_steps, seed)
            fn = lambda start, b, s=seed: mqar_batch(size, s, start, b)
          else:
            mcfg = model_config(size, variant, 256)
            tcfg = train_config(size, size.niah_steps, seed)
            fn = lambda start, b, s=seed, k=sub: niah_batch(size, k, s, start, b)
          trained = train_variant(
            mcfg, tcfg, fn, log=log, log_every=max(1, min(50, tcfg.steps // 10))
          )
          run = {
            "task": task,
            "subtask": sub,
            "variant": variant,
            "seed": seed,
            "steps": tcfg.steps,
            "train_wall_s": trained.wall_s,
            "diverged": trained.diverged,
            "nonfinite_steps": trained.nonfinite_steps,
            "curve": trained.curve,
          }
          if task == "mqar":
            run["score"] = score_mqar(trained, size)
            run["diagnostics"] = layer0_diagnostics(trained, size)
            run["layers"] = layer_diagnostics(trained, size)
            log(
              f"  -> acc {run['score']['accuracy']:.3f} by distance {run['score']['by_distance']}"
            )
          else:
            grid = score_niah(trained, size, sub)
            run["score"] = grid
            run["layers"] = niah_layer_diagnostics(trained, size, sub)
            niah_lib.write_grid(
              grid,
              out / f"niah_{variant}_s{seed}",
              title=f"{variant} S-NIAH {sub} (trained at {size.niah_len})",
            )
            log(f"  -> niah mean {grid['mean_accuracy']:.3f}")
          if trained.nonfinite_steps:
            log(f"  -> {trained.nonfinite_steps} non-finite steps (updates skipped)")
          result["runs"].append(run)
          flush()
  write_report(result, out)
  flush()
  return result


def run_ablations(
  size: RecallSize,
  variant: str,
  out: str | pathlib.Path,
  *,
  names: Sequence[str] = tuple(ABLATIONS),
  argv: Sequence[str] = (),
  log: Callable[[str], None] = print,
) -> dict:
  """MQAR beyond-window accuracy of `variant` with each ablation switched, per seed.

  Writes ablations_<variant>.json and .md under `out` (rewritten after every run).
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  result = {
    "env": environment(argv),
    "size": dataclasses.asdict(size),
    "variant": variant,
    "rows": [],
  }
  stem = out / f"ablations_{variant}"
  for name in names:
    mem_over, model_over = ABLATIONS[name]
    if variant == "lmm" and "num_persistent" in model_over:
      continue  # lmm has no attention, hence no persistent tokens to remove
    row = {"ablation": name, "memory": mem_over, "model": model_over, "seeds": {}}
    for seed in size.seeds:
      trained = train_mqar(
        size,
        variant,
        seed,
        model_overrides=model_over,
        log_every=max(1, size.mqar_steps // 6),
        **mem_over,
      )
      score = score_mqar(trained, size)
      row["seeds"][seed] = {
        "beyond_window": score["beyond_window"],
        "diagnostics": layer0_diagnostics(trained, size),
        "accuracy": score["accuracy"],
        "diverged": trained.diverged,
        "nonfinite_steps": trained.nonfinite_steps,
        "final_loss": trained.curve[-1]["loss"],
      }
      log(f"[ablation {variant}] {name} seed {seed}: beyond {score['beyond_window']:.3f}")
    vals = [r["beyond_window"] for r in row["seeds"].values()]
    row["beyond_window_mean"] = float(np.mean(vals))
    row["beyond_window_min"] = float(np.min(vals))
    result["rows"].append(row)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
  env = result["env"]
  lines = [
    f"Ablations of {variant} on MQAR ({size.name} size: {size.mqar_pairs} pairs in "
    f"{size.mqar_len} tokens, window {size.window}, {size.mqar_steps} steps, seeds "
    f"{list(size.seeds)}); {env['device']}, {env['date']}, commit {env['commit']}; "
    f"`{env['command']}`",
    "",
    "| ablation | accuracy beyond the window (mean over seeds) | per seed |",
    "|---|---|---|",
  ]
  for row in result["rows"]:
    per = ", ".join(f"{100 * r['beyond_window']:.0f}%" for r in row["seeds"].values())
    lines.append(f"| {row['ablation']} | {100 * row['beyond_window_mean']:.0f}% | {per} |")
  stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
  return result


def attention_cell(layer: dict, f2) -> str:
  if "attention_retrieval_at_queries" in layer:
    own, total = (
      layer["attention_retrieval_self_at_queries"],
      layer["attention_retrieval_at_queries"],
    )
    return f"{f2(own)}, {f2(total)}"
  return f2(layer.get("attention_self_at_queries"))


def merge_results(dirs: Sequence[str | pathlib.Path], argv: Sequence[str] = ()) -> dict:
  """One suite result from the recall.json of several partial runs of the same size
  (e.g. one process per variant, run side by side); runs keep their order by source.
  `DIR:VARIANT[,VARIANT]` takes only those variants' runs of DIR (a part that also
  ran a variant another part supersedes).

  Raises:
    ValueError: a folder has no recall.json, or two parts disagree on a size field
      both use (variants and seeds may differ; a task's own fields, mqar_* or niah_*,
      count only for the parts that ran that task).
  """
  parts, only = [], {}
  for spec in dirs:
    d, _, keep = str(spec).partition(":")
    path = pathlib.Path(d) / "recall.json"
    if not path.exists():
      raise ValueError(f"--merge {d}: no recall.json there")
    part = json.loads(path.read_text())
    if keep:
      wanted = keep.split(",")
      ran = {run["variant"] for run in part["runs"]}
      if not set(wanted) <= ran:
        raise ValueError(f"--merge {spec}: {d} has no runs of {sorted(set(wanted) - ran)}")
      part["runs"] = [run for run in part["runs"] if run["variant"] in wanted]
      only[str(path)] = wanted
    parts.append((path, part))
  loose = ("variants", "seeds")
  size: dict = {}
  origin: dict = {}
  for path, part in parts:
    tasks = {run["task"] for run in part["runs"]}
    for key, value in part["size"].items():
      # a part's mqar_* / niah_* settings matter only if it ran that task
      if key in loose or (key.split("_")[0] in ("mqar", "niah") and key.split("_")[0] not in tasks):
        continue
      if key in size and size[key] != value:
        raise ValueError(f"--merge {path}: size field {key} = {value!r} differs from {origin[key]}")
      size.setdefault(key, value)
      origin.setdefault(key, path)
  runs = [run for _, part in parts for run in part["runs"]]
  size = {**parts[0][1]["size"], **size}
  size["variants"] = list(dict.fromkeys(r["variant"] for r in runs))
  size["seeds"] = sorted({r["seed"] for r in runs})
  return {
    "env": environment(argv),
    "size": size,
    "runs": runs,
    "merged_from": [
      {"path": str(path), "env": part["env"], "only": only.get(str(path))} for path, part in parts
    ],
  }


def summarise(result: dict) -> dict:
  """Mean over seeds: MQAR per distance bin and S-NIAH per length, per variant."""
  size = result["size"]
  mqar, niah = {}, {}
  for run in result["runs"]:
    if run["task"] == "mqar":
      mqar.setdefault(run["variant"], []).append(run["score"])
    else:
      niah.setdefault((run["subtask"], run["variant"]), []).append(run["score"])
  out = {"mqar": {}, "niah": {}}
  for v, scores in mqar.items():
    row = {b: _mean([s["by_distance"][b] for s in scores]) for b in DIST_BINS}
    row["all"] = _mean([s["accuracy"] for s in scores])
    row["beyond_window"] = _mean([s["beyond_window"] for s in scores])
    row["beyond_window_min"] = _min([s["beyond_window"] for s in scores])
    row["seeds"] = len(scores)
    out["mqar"][v] = row
  for (task, v), grids in niah.items():
    per_len = np.mean([np.asarray(g["accuracy"]).mean(0) for g in grids], axis=0)
    out["niah"].setdefault(task, {})[v] = {
      "by_length": dict(zip([str(L) for L in grids[0]["lengths"]], per_len.tolist())),
      "seeds": len(grids),
    }
  out["window"] = size["window"]
  return out


def _mean(xs):
  xs = [x for x in xs if x is not None]
  return float(np.mean(xs)) if xs else None


def _min(xs):
  xs = [x for x in xs if x is not None]
  return float(np.min(xs)) if xs else None


def _pct(x):
  return "–" if x is None else f"{100 * x:.0f}%"


def write_report(result: dict, out: pathlib.Path) -> None:
  """recall.md (tables) and recall_mqar.png (accuracy vs distance per variant)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  s = summarise(result)
  result["summary"] = s
  env, size = result["env"], result["size"]
  lines = [
    f"# Long-range recall ({size['name']} size)",
    "",
    f"Device: {env['device']} ({env['cpu_count']} cores), {env['date']}, commit {env['commit']}.  ",
    f"Command: `{env['command']}`",
    "",
  ]
  for src in result.get("merged_from", []):
    e = src["env"]
    only = f" ({', '.join(src['only'])} runs only)" if src.get("only") else ""
    lines.append(
      f"- merged from `{src['path']}`{only}: {e['date']}, commit {e['commit']}, `{e['command']}`"
    )
  lines += [
    "",
    f"Width {size['dim']}, {size['layers']} layers, window {size['window']}, memory "
    f"chunk {size['memory_chunk']}, batch {size['batch']}, lr {size['lr']}, seeds "
    f"{list(size['seeds'])}.",
    "",
  ]
  if s["mqar"]:
    W = size["window"]
    lines += [
      f"MQAR ({size['mqar_pairs']} pairs, {size['mqar_queries']} queries, "
      f"{size['mqar_len']} tokens, vocab {size['mqar_vocab']}, {size['mqar_steps']} "
      f"steps; chance {100 * 2 / size['mqar_vocab']:.1f}%): held-out accuracy by "
      f"key→query distance (window W = {W})",
      "",
      "| variant | seeds | ≤ W | W–2W | 2W–4W | > 4W | beyond W | beyond W, worst seed | all |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in s["mqar"].items():
      lines.append(
        f"| {v} | {row['seeds']} | "
        + " | ".join(_pct(row[b]) for b in DIST_BINS)
        + f" | {_pct(row['beyond_window'])} | {_pct(row['beyond_window_min'])}"
        + f" | {_pct(row['all'])} |"
      )
    lines.append("")
    diag_rows = [
      (run["variant"], run["seed"], layer)
      for run in result["runs"]
      if run["task"] == "mqar"
      for layer in run.get("layers", [])
      if "memory_norm" in layer
    ]
    if diag_rows:
      f2 = lambda x: "–" if x is None else f"{x:.2f}"
      lines += [
        "Per-layer diagnostics on held-out MQAR (`layer_diagnostics`): the memory's inner "
        "loss on a value token where its pair is written vs where a query repeats it "
        "(lower at the repeat = the memory holds the pair), θ, the memory's output norm "
        "against the attention's, the MAG/MAC gate's mean, and at the query keys the "
        "window attention's weight on the query's own position (self) and on the "
        "persistent tokens (P) — for MAC, the segment attention's weight on the query's "
        "own retrieval h_j, on all retrieved tokens h, and on P.",
        "",
        "| variant | seed | layer | inner loss, written → asked | θ mean | ‖m‖ / ‖y‖ "
        "| gate mean | attention at queries: self / P (MAC: h_j, all h / P) |",
        "|---|---|---|---|---|---|---|---|",
      ]
      for v, seed, layer in diag_rows:
        ratio = (
          layer["memory_norm"] / layer["attention_norm"] if layer.get("attention_norm") else None
        )
        lines.append(
          f"| {v} | {seed} | {layer['layer']} | {f2(layer['inner_loss_values_first'])} → "
          f"{f2(layer['inner_loss_values_repeat'])} | {f2(layer['theta_mean'])} | "
          f"{f2(ratio)} | {f2(layer.get('gate_mean'))} | "
          f"{attention_cell(layer, f2)} / {f2(layer.get('attention_persistent_at_queries'))} |"
        )
      lines.append("")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for v, row in s["mqar"].items():
      ax.plot(
        range(len(DIST_BINS)),
        [np.nan if row[b] is None else row[b] for b in DIST_BINS],
        marker="o",
        label=v,
      )
    ax.axhline(2 / size["mqar_vocab"], color="gray", ls=":", label="chance")
    ax.set_xticks(range(len(DIST_BINS)), ["≤ W", "W–2W", "2W–4W", "> 4W"])
    ax.set_xlabel(f"key→query distance (W = {W})")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MQAR recall vs distance ({size['name']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall_mqar.png", dpi=100)
    plt.close(fig)
  _plot_curves(result, out / "recall_curves.png", plt)
  for task, per_v in s["niah"].items():
    lengths = list(next(iter(per_v.values()))["by_length"])
    lines += [
      f"S-NIAH {task} (trained at {size['niah_len']} bytes, {size['niah_steps']} steps): "
      f"exact-match accuracy over depths {list(size['niah_depths'])}, "
      f"{size['niah_samples']} samples per cell",
      "",
      "| variant | seeds | " + " | ".join(lengths) + " |",
      "|---|---|" + "---|" * len(lengths),
    ]
    for v, row in per_v.items():
      lines.append(
        f"| {v} | {row['seeds']} | " + " | ".join(_pct(row["by_length"][L]) for L in lengths) + " |"
      )
    lines.append("")
    lines += _niah_misses_table(result, task)
    lines += _niah_diagnostics_table(result, task)
  (out / "recall.md").write_text("\n".join(lines))


def _niah_misses_table(result: dict, task: str) -> list[str]:
  """Markdown of every S-NIAH cell of `task` below 100 %, with the accuracy of each
  answer byte given the true prefix (`niah_cell_detail`; runs without it: skipped)."""
  rows = []
  for run in result["runs"]:
    grid = run["score"]
    if run["task"] != "niah" or run["subtask"] != task or "byte_accuracy" not in grid:
      continue
    for d, depth in enumerate(grid["depths"]):
      for i, length in enumerate(grid["lengths"]):
        if grid["accuracy"][d][i] < 1.0:
          per_byte = " / ".join(f"{100 * b:.0f}" for b in grid["byte_accuracy"][d][i])
          rows.append(
            f"| {run['variant']} | {run['seed']} | {length} | {depth:g} | "
            f"{_pct(grid['accuracy'][d][i])} | {per_byte} |"
          )
  if not rows:
    return []
  return [
    f"S-NIAH {task} cells below 100 %: exact match and the accuracy (%) of each answer "
    "byte given the true prefix, first byte (predicted at the end of the question) first.",
    "",
    "| variant | seed | length | depth | exact match | per answer byte |",
    "|---|---|---|---|---|---|",
    *rows,
    "",
  ]


def _niah_diagnostics_table(result: dict, task: str) -> list[str]:
  """Markdown of `niah_layer_diagnostics` of every S-NIAH run of `task` (none: [])."""
  rows = [
    (run["variant"], run["seed"], layer)
    for run in result["runs"]
    if run["task"] == "niah" and run["subtask"] == task
    for layer in run.get("layers", [])
    if "inner_loss_needle" in layer
  ]
  if not rows:
    return []
  f2 = lambda x: "–" if x is None else f"{x:.2f}"
  lines = [
    f"Per-layer S-NIAH {task} diagnostics (`niah_layer_diagnostics`): the memory's inner "
    "loss on the answer bytes where the needle writes them → where the answer repeats "
    "them after the question (lower at the answer = the memory holds the needle), and "
    "the MAG/MAC gate's mean at the answer.",
    "",
    "| variant | seed | layer | length | depth | inner loss, needle → answer | gate at answer |",
    "|---|---|---|---|---|---|---|",
  ]
  for v, seed, r in rows:
    lines.append(
      f"| {v} | {seed} | {r['layer']} | {r['length']} | {r['depth']:g} | "
      f"{f2(r['inner_loss_needle'])} → {f2(r['inner_loss_answer'])} | "
      f"{f2(r.get('gate_mean_at_answer'))} |"
    )
  return lines + [""]


def _plot_curves(result: dict, path: pathlib.Path, plt) -> None:
  """Training loss vs step of every run, one panel per task, one line per variant and
  seed (the learning curves behind the tables)."""
  tasks = list(dict.fromkeys(f"{r['task']}/{r['subtask']}" for r in result["runs"]))
  if not tasks:
    return
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.5), squeeze=False)
  colours = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
  for ax, task in zip(axes[0], tasks):
    for run in result["runs"]:
      if f"{run['task']}/{run['subtask']}" != task:
        continue
      steps = [c["step"] for c in run["curve"]]
      loss = [c["loss"] for c in run["curve"]]
      ax.plot(steps, loss, color=colours.get(run["variant"]), lw=1, label=run["variant"])
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (scored tokens)")
    ax.set_title(f"{task} learning curves (every seed)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="cpu")
  p.add_argument(
    "--out", default=None, help="output folder (default benchmarks/results/recall_<size>)"
  )
  p.add_argument("--tasks", nargs="+", choices=("mqar", "niah"), default=["mqar", "niah"])
  p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None)
  p.add_argument("--seeds", nargs="+", type=int, default=None)
  p.add_argument(
    "--ablations",
    default=None,
    metavar="VARIANT",
    help="instead of the suite: the ablation table of VARIANT on MQAR",
  )
  p.add_argument(
    "--ablation_names",
    nargs="+",
    choices=tuple(ABLATIONS),
    default=None,
    metavar="NAME",
    help="with --ablations: only these rows (default: all)",
  )
  p.add_argument(
    "--set",
    nargs="*",
    default=[],
    metavar="FIELD=VALUE",
    help="override RecallSize fields, e.g. mqar_steps=500 (ints/floats/tuples)",
  )
  p.add_argument(
    "--merge",
    nargs="+",
    default=None,
    metavar="DIR[:VARIANTS]",
    help="instead of training: merge the recall.json of these runs into --out's report "
    "(DIR:mac,mal takes only those variants' runs of DIR)",
  )
  args = p.parse_args(argv)
  if args.merge:
    if not args.out:
      p.error("--merge needs --out")
    try:
      result = merge_results(args.merge, argv=["benchmarks/recall.py"] + argv)
    except ValueError as e:
      p.error(str(e))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(result, out)
    (out / "recall.json").write_text(json.dumps(result, indent=2))
    return result
  size = SIZES[args.size]
  changes = {}
  if args.variants:
    changes["variants"] = tuple(args.variants)
  if args.seeds:
    changes["seeds"] = tuple(args.seeds)
  fields = {f.name: f for f in dataclasses.fields(RecallSize)}
  for item in args.set:
    key, _, text = item.partition("=")
    if key not in fields or key == "name":
      p.error(f"--set {item!r}: unknown RecallSize field {key!r}")
    current = getattr(size, key)
    try:
      value = json.loads(text) if not isinstance(current, str) else text
    except json.JSONDecodeError:
      p.error(f"--set {item!r}: value is not JSON")
    changes[key] = tuple(value) if isinstance(current, tuple) else value
  size = dataclasses.replace(size, **changes)
  out = args.out or f"benchmarks/results/recall_{size.name}"
  if args.ablations:
    if args.ablations not in VARIANTS[1:]:
      p.error(f"--ablations {args.ablations!r}: expected a memory variant {VARIANTS[1:]}")
    names = tuple(args.ablation_names or ABLATIONS)
    return run_ablations(
      size, args.ablations, out, names=names, argv=["benchmarks/recall.py"] + argv
    )
  return run_suite(size, out, tasks=args.tasks, argv=["benchmarks/recall.py"] + argv)


if __name__ == "__main__":
  main()
