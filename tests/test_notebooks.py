"""The example notebooks (examples/*.ipynb) run top to bottom; each asserts its result
in its last cell (the needle's surprise is the largest, JAX == PyTorch to 1e-5, the
tiny Titans model recalls what attention cannot see)."""

from __future__ import annotations

import os
import pathlib

import pytest

if os.environ.get("CI"):  # CI installs the `notebooks` extra: missing is an error
  import nbclient
  import nbformat
else:
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_every_example_is_tested():
  assert [p.name for p in NOTEBOOKS][:3] == [
    "01_memory_as_a_function.ipynb",
    "02_jax_vs_pytorch.ipynb",
    "03_tiny_titans.ipynb",
  ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
  if "pytorch" in path.name and not os.environ.get("CI"):
    pytest.importorskip("titans_pytorch")
  nb = nbformat.read(path, as_version=4)
  # The kernel inherits this environment (JAX_PLATFORMS=cpu from conftest); the working
  # directory is the repository root so that its titans_jax is imported.
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES.parent)}}
  )
  client.execute()  # raises CellExecutionError (with the cell and traceback) on failure
