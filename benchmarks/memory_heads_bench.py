"""Step time with the memory heads on the tensor axis vs replicated (docs/sharding.md).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python benchmarks/memory_heads_bench.py --mesh 2,1,4 --steps 5

Model: MAG, dim 64, 2 layers, 4 attention / 4 memory heads, chunk 8; batch 8 × 128.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from titans_jax import sharding
from titans_jax.config import TrainConfig
from titans_jax.models import TitansConfig
from titans_jax.training import sharded


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--mesh", default="2,1,4", help="data,fsdp,tensor")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args(argv)
  shape = tuple(int(c) for c in args.mesh.split(","))
  mcfg = TitansConfig.preset(
    "tiny",
    variant="mag",
    dim=64,
    num_layers=2,
    heads=4,
    ffn_hidden=128,
    window=32,
    num_persistent=2,
    memory_heads=4,
    memory_chunk=8,
  )
  tcfg = TrainConfig(steps=100, batch_size=8, lr=1e-3, warmup_steps=0)
  x = np.random.default_rng(0).integers(0, 256, size=(8, 129)).astype(np.int32)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((8, 128), np.float32)}
  runs = {}
  for mode in ("tensor", "replicated"):
    mesh_cfg = sharding.MeshConfig(*shape, memory_heads=mode)
    su = sharded.setup(
      mcfg, tcfg, sharding.make_mesh(mesh_cfg), tuple(sorted(sharding.rules_for(mesh_cfg).items()))
    )
    state, b = su.init(), su.put_batch(batch)
    state, m = su.step(state, b)  # compile
    jax.block_until_ready(m)
    runs[mode] = [su, state, b, []]
  # Interleaved, so that a change in machine load hits both modes alike.
  for _ in range(args.steps):
    for mode, run in runs.items():
      su, state, b, times = run
      t = time.perf_counter()
      state, m = su.step(state, b)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
      run[1] = state
  for mode, (_, _, _, times) in runs.items():
    print(
      f"mesh {shape} memory_heads={mode}: median {np.median(times) * 1e3:.0f} ms, "
      f"min {min(times) * 1e3:.0f} ms over {len(times)} steps"
    )


if __name__ == "__main__":
  main()
