"""Executes every notebook in notebooks/ top to bottom; a cell that raises fails its test.

Each notebook runs in its own python3 kernel with cwd = notebooks/ (as a reader would run it).
The kernel gets a clean environment: conftest.py's fake-device XLA_FLAGS are for this process's
unit tests, not for the single-device CPU run a reader sees.
"""

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
CELL_TIMEOUT_S = 300
# Notebooks whose every step a default-run test already covers run under `-m slow` only:
# allocation.ipynb drives `allocation.simulate` and the presets, which tests/test_alloc_*.py
# check (40 s of a busy 2-core CI run). The quickstart notebook (the trainer, end to end, and
# what a first reader runs) stays in the default run.
SLOW = ("allocation.ipynb",)
KERNEL = "python3"


def _ensure_kernelspec() -> None:
  """Installs an ipykernel spec for this interpreter when no python3 kernel is registered."""
  from jupyter_client.kernelspec import find_kernel_specs  # pylint: disable=import-outside-toplevel
  if KERNEL not in find_kernel_specs():
    from ipykernel import kernelspec  # pylint: disable=import-outside-toplevel
    kernelspec.install(user=True, kernel_name=KERNEL)


def _kernel_env() -> dict[str, str]:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow if os.path.basename(p) in SLOW else ())
    for p in NOTEBOOKS], ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path):
  _ensure_kernelspec()
  with open(path) as f:
    nb = nbformat.read(f, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, allow_errors=False,
      resources={"metadata": {"path": NOTEBOOK_DIR}})
  # nbclient raises CellExecutionError naming the cell and traceback on the first failure.
  client.execute(env=_kernel_env())
  for cell in nb.cells:
    if cell.cell_type == "code":
      errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
      assert not errors, f"{os.path.basename(path)}: cell raised:\n{cell.source}"


def test_notebooks_are_stored_without_outputs():
  for path in NOTEBOOKS:
    with open(path) as f:
      nb = nbformat.read(f, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, (
            f"{os.path.basename(path)} is stored with outputs; clear them before committing")
