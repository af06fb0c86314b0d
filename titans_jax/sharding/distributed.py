"""Multi-process start-up: `jax.distributed.initialize` from flags or environment.

    python train.py --coordinator_address=10.0.0.1:1234 --num_processes=4 --process_id=$RANK
    # or: JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=$RANK

With neither, and `auto=True`, JAX's own cluster detection runs (Cloud TPU, SLURM,
Kubernetes, ...) only when one of those environments is present; otherwise the run
stays single-process. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  *,
  cpu_collectives: str = "gloo",
) -> bool:
  """Joins the multi-process job named by the arguments or the JAX_* environment.

  Returns True if jax.distributed was initialised (False: a single-process run).
  Must run before anything touches a JAX device.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if coordinator_address is None:
    if num_processes not in (None, 1):
      raise ValueError(
        f"num_processes={num_processes} needs a coordinator address "
        "(--coordinator_address or JAX_COORDINATOR_ADDRESS)"
      )
    return False
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  return True
