"""What accelerators this host has, read from its device files before JAX starts a
backend (asking JAX would start one, and an installed libtpu would try to grab a TPU).

TPU: /dev/accel* (v2–v5e) or numbered vfio groups /dev/vfio/<n> (v5p and later;
/dev/vfio/vfio is the vfio control node and exists on hosts without any TPU).
GPU: /dev/nvidia* (NVIDIA) or /dev/kfd (AMD).
"""

from __future__ import annotations

import pathlib

TPU_DEVICE_GLOBS = ("accel*", "vfio/[0-9]*")
GPU_DEVICE_GLOBS = ("nvidia*", "kfd")
DEV = pathlib.Path("/dev")


def _any(dev: pathlib.Path, globs) -> bool:
  return any(any(dev.glob(g)) for g in globs)


def tpu_attached(dev: pathlib.Path = DEV) -> bool:
  return _any(dev, TPU_DEVICE_GLOBS)


def accelerator_attached(dev: pathlib.Path = DEV) -> bool:
  """A TPU or GPU device file exists (one JAX could drive)."""
  return _any(dev, TPU_DEVICE_GLOBS + GPU_DEVICE_GLOBS)
