"""One process of the two-process test (tests/test_multihost.py); not a test itself.

    python tests/multihost_worker.py PORT PROCESS_ID WORKDIR OUT_JSON [overrides...]

4 fake CPU devices per process, gloo collectives, jax.distributed on localhost; trains
configs/tiny.py with the overrides and writes this process's losses to OUT_JSON.
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from titans_jax.sharding import distributed  # noqa: E402


def main():
  port, pid, workdir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
  distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  from titans_jax import config as config_lib
  from titans_jax.training import loop

  cfg = config_lib.apply_overrides(
    config_lib.load_config(ROOT / "configs" / "tiny.py"), sys.argv[5:]
  )
  lines = []
  result = loop.train(cfg, workdir, log=lines.append)
  pathlib.Path(out).write_text(
    json.dumps(
      {
        "losses": result.losses,
        "final_step": result.final_step,
        "log_lines": len(lines),
        "local_devices": jax.local_device_count(),
      }
    )
  )
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
