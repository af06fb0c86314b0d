"""TPU without a TPU: the train / prefill / decode steps compile for a TPU v5e topology
(libtpu, compile-only devices) on sharded meshes with the splash kernel wherever
attention runs; the splash path under shard_map equals XLA's (Pallas interpreter, 8
fake CPU devices); `--target` errors and fit reporting.

Needs libtpu (the `tpu` extra). Without it the module skips, except under CI=true,
where a missing libtpu is an error (CI installs the extra; skipping would hide it).
"""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("libtpu") is None:
  if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    raise ImportError(
      'libtpu is not installed but CI=true: install the tpu extra (pip install -e ".[tpu]")'
    )
  pytest.skip('libtpu not installed (pip install -e ".[tpu]")', allow_module_level=True)

from titans_jax import sharding  # noqa: E402
from titans_jax.config import Config, DataConfig, TrainConfig  # noqa: E402
from titans_jax.layers import attention as A  # noqa: E402
from titans_jax.models import TitansConfig  # noqa: E402
from titans_jax.training import aot  # noqa: E402

from helpers import run_concurrently  # noqa: E402

TARGET = "v5e:2x2"
MESHES = ((4, 1, 1), (2, 1, 2), (1, 2, 2))
VARIANTS = ("mac", "mag", "mal", "lmm", "swa")
MOSAIC = 'custom_call_target="tpu_custom_call"'


def _config(variant, mesh):
  """The smallest model that still has every part: 1 layer, 2 heads (tensor=2 splits
  them), persistent tokens, 2 memory chunks per MAC segment, 2 segments, batch 4."""
  model = TitansConfig.preset(
    "tiny",
    variant=variant,
    dim=32,
    num_layers=1,
    heads=2,
    ffn_hidden=32,
    window=8,
    segment_len=8,
    num_persistent=2,
    memory_heads=2,
    memory_chunk=4,
  )
  return Config(
    name="tpu",
    model=model,
    data=DataConfig(seq_len=16),  # the compile needs only the shapes (bytes, 16 tokens)
    train=TrainConfig(steps=1, batch_size=4, warmup_steps=0),
    mesh=sharding.MeshConfig(*mesh),
  )


def _mesh(shape):
  return sharding.make_mesh(sharding.MeshConfig(*shape), aot.target_devices(TARGET))


def _compile_train(variant, mesh_shape, **memory):
  cfg = _config(variant, mesh_shape)
  if memory:
    model = cfg.model.replace(memory=cfg.model.memory_config.replace(**memory))
    cfg = dataclasses.replace(cfg, model=model)
  return aot.size_train_step(cfg, TARGET, _mesh(mesh_shape))


@pytest.fixture(scope="module")
def compiled():
  """The fast tests' TPU compiles, run concurrently: train steps of MAG on data×tensor
  and LMM on data, prefill + one decode step of MAC on data×tensor."""
  out = {}

  def train(cell):
    return lambda: out.__setitem__(cell, _compile_train(*cell))

  def generation():
    cfg = _config("mac", (2, 1, 2))
    out["generation"] = aot.size_generation(cfg, TARGET, _mesh((2, 1, 2)))

  def kernel():  # the memory's Pallas scan kernel (impl="pallas") on data×tensor
    out["kernel"] = _compile_train("mag", (2, 1, 2), impl="pallas", scan_remat_every=2)

  def mac_kernel():  # … in MAC's segment scan, under the presets' layer remat policy
    cfg = _config("mac", (4, 1, 1))
    memory = cfg.model.memory_config.replace(impl="pallas")
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(remat="dots_no_batch", memory=memory))
    out["mac_kernel"] = aot.size_train_step(cfg, TARGET, _mesh((4, 1, 1)))

  run_concurrently(
    [train(("mag", (2, 1, 2))), train(("lmm", (4, 1, 1))), generation, kernel, mac_kernel]
  )
  return out


@pytest.fixture(scope="module")
def train_sizes(compiled):
  return compiled


@pytest.fixture(scope="module")
def generation_sizes(compiled):
  return compiled["generation"]


def test_train_step_compiles_for_tpu_with_splash_on_a_sharded_mesh(train_sizes):
  """MAG on data×tensor: forward and both backward splash kernels, inside shard_map
  (lowering fails without it: Mosaic kernels cannot be partitioned automatically)."""
  mag = train_sizes[("mag", (2, 1, 2))]
  assert mag.mosaic_calls == 3, mag.mosaic_calls  # fwd, dq, dkv
  assert mag.kernel_flops > 0 and mag.flops > mag.kernel_flops
  assert train_sizes[("lmm", (4, 1, 1))].mosaic_calls == 0  # no attention in LMM


def test_memory_scan_kernel_compiles_for_tpu_on_a_sharded_mesh(train_sizes):
  """MAG with impl="pallas": the memory's forward and backward scan kernels join the
  three splash kernels (Mosaic, inside shard_map), their FLOPs counted from the traced
  chunk step, and no XLA block scan is left."""
  kernel, xla = train_sizes["kernel"], train_sizes[("mag", (2, 1, 2))]
  assert kernel.mosaic_calls == 5, kernel.mosaic_calls
  assert kernel.kernel_flops > xla.kernel_flops > 0
  assert kernel.by_component["memory"]["flops"] > 0
  assert "memory_block" not in kernel.by_component  # no XLA scan left


def test_mac_layer_rerun_keeps_the_segment_scan_out_of_it(train_sizes):
  """MAC with the kernel and remat="dots_no_batch": the layer's rerun in the backward
  takes each segment's carry and output from the forward (they are named for the
  policy), so the forward kernel runs twice — the forward and the segment scan's own
  rerun in its backward — not a third time in the layer's rerun."""
  hlo = train_sizes["mac_kernel"].hlo_text
  calls = [ln for ln in hlo.splitlines() if MOSAIC in ln]
  forward = [ln for ln in calls if "titans_memory_scan_fwd" in ln]
  backward = [ln for ln in calls if "titans_memory_scan_bwd" in ln]
  assert (len(forward), len(backward)) == (2, 1), (len(forward), len(backward))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES)
def test_every_variant_compiles_for_tpu_on_every_mesh(mesh_shape):
  """Every variant's train step on each mesh: the splash kernels wherever attention
  runs (MAC: its segment attention, whose forward kernel runs again in the backward,
  as each segment is rematerialised — `mac_segment_remat`; LMM: none)."""
  sizes = {}

  def job(v):
    return lambda: sizes.__setitem__(v, _compile_train(v, mesh_shape))

  run_concurrently([job(v) for v in VARIANTS])
  for v, size in sizes.items():
    expected = {"lmm": 0, "mac": 4}.get(v, 3)  # fwd, dq, dkv (+ MAC's recomputed fwd)
    assert size.mosaic_calls == expected, (v, size.mosaic_calls)


def test_prefill_and_decode_compile_for_tpu(generation_sizes):
  prefill, decode = generation_sizes
  assert prefill.mosaic_calls == 1  # MAC's segment attention, forward only
  assert decode.mosaic_calls == 0  # one query: XLA attention by design
  assert decode.state_parts["decode cache"] > 0
  assert 0 < decode.flops < prefill.flops


def test_hlo_cost_counts_loop_trips():
  """XLA's cost analysis counts a loop body once; hlo_cost multiplies by the trips.
  Bytes grow linearly with the trips: a step reads its slice of the stacked weights
  and writes its slot of the stacked outputs, not the whole stacks."""
  from titans_jax.perf import hlo_cost

  mesh = jax.sharding.Mesh(np.array(aot.target_devices(TARGET)[:1]), ("x",))
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def f(w, x):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), c), x, w)

  costs = {}
  for n in (5, 20):
    w = jax.ShapeDtypeStruct((n, 128, 128), jnp.float32, sharding=s)
    x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=s)
    costs[n] = hlo_cost.analyse(jax.jit(f).lower(w, x).compile().as_text())
  assert costs[5]["flops"] == 5 * 2 * 64 * 128 * 128
  assert costs[20]["flops"] == 20 * 2 * 64 * 128 * 128
  assert costs[20]["bytes"] / costs[5]["bytes"] == pytest.approx(4.0, rel=0.1)


# ------------------------------------------------ splash under shard_map == XLA ---


def _cpu_mesh(shape):
  return sharding.make_mesh(sharding.MeshConfig(*shape), jax.devices("cpu")[:4])


def _qkv(seed, B, T, H, K, P):
  ks = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(ks[i], (B, T, H, K), jnp.float32) for i in range(3))
  pk, pv = (jax.random.normal(ks[3 + i], (B, P, H, K), jnp.float32) for i in range(2))
  return q, k, v, pk, pv


def _window(impl):
  return lambda q, k, v, pk, pv: A.sliding_window_attention(q, k, v, 24, pk, pv, impl=impl)


def _segment(impl):
  """MAC segment attention over [P ‖ h ‖ x] (h plays the retrieved tokens)."""

  def f(q, k, v, pk, pv):
    L, P = q.shape[1], pk.shape[1]
    mask = A.segment_mask(L, L, P, with_memory=True)
    return A.segment_attention(
      q, [pk, k * 0.5, k], [pv, v[:, ::-1], v], mask, impl=impl, layout=(P, 2)
    )

  return f


def _check_splash_equals_xla(mesh_shape):
  """Forward and gradients of the splash path (Pallas interpreter, sharded over
  batch × heads by shard_map) equal the XLA path, 1e-5 in fp32: the sliding window
  and a MAC segment, both over persistent tokens."""
  q, k, v, pk, pv = _qkv(0, 4, 40, 2, 16, 3)
  mesh = _cpu_mesh(mesh_shape)

  def loss_and_grads(impl):
    def loss(q, k, v, pk, pv):
      with sharding.use_rules(mesh):
        outs = [make(impl)(q, k, v, pk, pv) for make in (_window, _segment)]
      return sum(jnp.sum(o * jnp.cos(o)) for o in outs), outs

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))

  with A.splash_interpret():
    (_, outs_s), g_s = loss_and_grads("splash")(q, k, v, pk, pv)
  (_, outs_x), g_x = loss_and_grads("xla")(q, k, v, pk, pv)
  for a, b in zip(list(outs_s) + list(g_s), list(outs_x) + list(g_x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_splash_under_shard_map_equals_xla():
  _check_splash_equals_xla((2, 1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(4, 1, 1), (1, 2, 2)])
def test_splash_under_shard_map_equals_xla_other_meshes(mesh_shape):
  _check_splash_equals_xla(mesh_shape)


def test_auto_follows_the_mesh_platform_not_the_default_backend():
  assert jax.default_backend() == "cpu"
  with sharding.use_rules(_mesh((4, 1, 1))):
    assert A._resolve_impl("auto", jnp.float32) == "splash"
  with sharding.use_rules(_cpu_mesh((4, 1, 1))):
    assert A._resolve_impl("auto", jnp.float32) == "xla"


def test_splash_that_cannot_serve_falls_back_with_one_notice(caplog):
  q, k, v, pk, pv = _qkv(1, 2, 20, 2, 8, 2)
  window = lambda impl: jax.jit(lambda *a: A.sliding_window_attention(*a[:3], 8, *a[3:], impl=impl))
  ref = window("xla")(q, k, v, pk, pv)
  A._NOTICED.clear()
  with caplog.at_level("WARNING", logger=A.__name__):
    for _ in range(2):
      out = window("splash")(q, k, v, pk, pv)  # traced twice for CPU: one notice
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  notices = [r.message for r in caplog.records if "splash" in r.message]
  assert len(notices) == 1 and "using XLA" in notices[0], notices


# ------------------------------------------------------------ --target behaviour ---


def test_target_devices_builds_topologies_one_thread_at_a_time(monkeypatch):
  """Concurrent compiles for several targets must not build topologies at the same
  time: jax loads the libtpu plugin on first use without a lock, and a second thread
  loading it fails (ALREADY_EXISTS: PJRT_Api already exists). A fake builder records
  how many threads are inside it at once."""
  import threading
  import time
  import types

  from jax.experimental import topologies

  inside, most, lock = [0], [0], threading.Lock()

  def fake_topology(platform, topology_name, **kw):
    with lock:
      inside[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.05)
    with lock:
      inside[0] -= 1
    return types.SimpleNamespace(devices=[topology_name])

  monkeypatch.setattr(topologies, "get_topology_desc", fake_topology)
  names = [f"v5e:fake{i}" for i in range(4)]
  run_concurrently([lambda n=n: aot.target_devices.__wrapped__(n) for n in names])
  assert most[0] == 1


@pytest.mark.parametrize("target", ["v5e:1x1", "v5e:1x2", "v5p:1x1x1", "v4:1x1x1"])
def test_target_narrower_than_a_host(target):
  """Slices smaller than libtpu's default 2x2-chip host (one chip: the natural target for
  sizing a single-chip job) are accepted, with the slice's chip count."""
  dims = [int(d) for d in target.split(":")[1].split("x")]
  assert len(aot.target_devices(target)) == int(np.prod(dims))


def test_target_unknown_topology_is_a_one_line_error(capsys):
  import train

  rc = train.main(["--config", "configs/tiny.py", "--dry_run", "--target", "v9z:7x7"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "v9z:7x7" in err and "topology" in err and len(err.splitlines()) == 1


def test_target_without_libtpu_names_the_extra(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    aot.importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
  )
  with pytest.raises(aot.TargetError, match=r"libtpu is not installed.*\.\[tpu\]"):
    aot.target_devices.__wrapped__("v5e:2x2")


def test_compiler_out_of_hbm_is_a_does_not_fit_report(capsys, monkeypatch):
  """A step whose temporaries alone exceed the chip's HBM makes the TPU compiler stop
  (RESOURCE_EXHAUSTED, no executable): --dry_run reports it as not fitting, by how much,
  instead of a traceback; --require_fit turns it into exit 4."""
  cfg = _config("swa", (1, 1, 1))
  cfg = dataclasses.replace(
    cfg,
    train=dataclasses.replace(cfg.train, batch_size=8192),
    data=dataclasses.replace(cfg.data, seq_len=4096),
  )
  with pytest.raises(aot.DoesNotFit) as info:
    aot.size_train_step(cfg, "v5e:1x1")
  e = info.value
  assert e.need > e.have > 15 * 2**30 and e.step == "train step"
  assert "DOES NOT FIT (over by at least" in e.report()
  monkeypatch.setattr(aot, "size_train_step", lambda cfg, target: (_ for _ in ()).throw(e))
  monkeypatch.setattr(aot, "size_generation", lambda cfg, target: [])
  assert aot.main(cfg, "v5e:1x1") == 0
  assert "train step on v5e:1x1, batch 8192 × 4096 tokens: DOES NOT FIT" in capsys.readouterr().out
  assert aot.main(cfg, "v5e:1x1", require_fit=True) == 4


def test_parse_hbm_oom_reads_both_compiler_messages():
  new = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (22.60G) exceeds available HBM (15.75G)."
  )
  old = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 18.56G of 16.00G hbm."
  assert aot.parse_hbm_oom(new) == (22.60 * 2**30, 15.75 * 2**30)
  assert aot.parse_hbm_oom(old) == (18.56 * 2**30, 16.00 * 2**30)
  assert aot.parse_hbm_oom("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem.") is None
  assert aot.parse_hbm_oom("INVALID_ARGUMENT: temporaries (1G) exceeds available HBM (2G)") is None


def test_does_not_fit_reports_by_how_much_and_fails_only_on_request(
  train_sizes, generation_sizes, monkeypatch, capsys
):
  small = dataclasses.replace(aot.CHIPS["TPU v5 lite"], hbm_bytes=2**20)  # 1 MiB chip
  sizes = [
    dataclasses.replace(s, chip=small) for s in [train_sizes[("mag", (2, 1, 2))], *generation_sizes]
  ]
  monkeypatch.setattr(aot, "size_train_step", lambda cfg, target: sizes[0])
  monkeypatch.setattr(aot, "size_generation", lambda cfg, target: sizes[1:])
  cfg = _config("mag", (2, 1, 2))
  assert aot.main(cfg, TARGET) == 0
  out = capsys.readouterr().out
  over = sizes[0].total_bytes - 2**20
  assert f"DOES NOT FIT (over by {over / 2**20:.1f} MiB)" in out
  assert "roofline step time" in out and "MFU ≤" in out
  assert aot.main(cfg, TARGET, require_fit=True) == 4
  assert "do not fit v5e:2x2" in capsys.readouterr().err


def _kernel_grad_hlo(every: int, chunks: int, token_dtype, argnums) -> str:
  """The compiled v5e program of the gradient of one head's memory scan kernel (d=64,
  h=256, chunks of 16, segments of `every`): forward and backward kernel."""
  from titans_jax.memory import MemoryConfig
  from titans_jax.memory import kernel as K

  cfg = MemoryConfig.paper(64, heads=1, chunk_size=16, impl="pallas", scan_remat_every=every)
  mesh = jax.sharding.Mesh(np.array(aot.target_devices(TARGET)[:1]), ("x",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  T = chunks * 16
  spec = lambda *shape, dt=jnp.float32: jax.ShapeDtypeStruct(shape, dt, sharding=rep)
  weights = {"w0": spec(1, 1, 64, 256), "w1": spec(1, 1, 256, 64)}
  momentum = {"w0": spec(1, 1, 1, 64, 256), "w1": spec(1, 1, 1, 256, 64)}
  tokens, gates = spec(1, 1, T, 64, dt=token_dtype), spec(1, 1, T, 4)

  def loss(weights, momentum, k, v, q, g):
    w, s, y = K.chunk_scan(cfg, weights, momentum, k, v, q, g, platform="tpu")
    return jnp.sum(y) + sum(jnp.sum(x) for x in jax.tree.leaves((w, s)))

  grad = jax.jit(jax.grad(loss, argnums=argnums))
  return grad.lower(weights, momentum, tokens, tokens, tokens, gates).compile().as_text()


def test_memory_kernel_with_long_segments_raises_its_vmem_limit():
  """A segment of 40 chunks keeps 41 carries (d=64, h=256: 15 MiB of scratch) in VMEM
  for the backward, over Mosaic's 16 MiB default with the tiles: the kernel asks for
  what it needs and the train-time pair (forward + backward) compiles for a v5e chip."""
  from titans_jax.memory import kernel as K

  wshapes = [(64, 256), (256, 64)] * 2
  assert K.vmem_bytes(40, 16, 64, wshapes, backward=True) > K.DEFAULT_SCOPED_VMEM
  text = _kernel_grad_hlo(40, 40, jnp.float32, argnums=(0, 1, 2, 3, 4, 5))
  assert text.count("titans_memory_scan_bwd") >= 1 and text.count("titans_memory_scan_fwd") >= 1


def test_memory_kernel_takes_bfloat16_tokens_on_tpu():
  """bfloat16 k, v, q (the activations of a bf16 model; chunks of 16 rows fill the packed
  16×128 tiles) go into the forward and backward kernels as they are, and the backward
  returns their cotangents in bfloat16: Mosaic compiles the narrow tiles for v5e."""
  text = _kernel_grad_hlo(2, 4, jnp.bfloat16, argnums=(2, 3, 4))
  calls = [line for line in text.splitlines() if MOSAIC in line]
  assert len(calls) == 2, len(calls)  # forward, backward
  for line in calls:  # k, v, q in; the backward's dk, dv, dq out
    assert line.count("bf16[1,1,64,64]") >= 3, line[:300]
