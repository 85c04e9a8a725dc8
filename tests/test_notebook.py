"""notebooks/explore.ipynb runs top to bottom on a tiny run without a cell error."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.test_evaluate import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
KERNEL_NAME = "recfound-test"


def write_kernel_spec(jupyter_path: Path, env: dict[str, str]) -> str:
    """A kernel spec running ipykernel on this very interpreter, with ``env`` added to its environment."""
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "recfound test kernel",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KERNEL_NAME


def test_explore_notebook_runs(tmp_path_factory, tmp_path, monkeypatch):
    root = tmp_path_factory.getbasetemp()
    run_dir = make_tiny_run(root)
    env = {
        "RECFOUND_RUN": str(run_dir),
        "RECFOUND_CACHE": str(root / "cache"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    kernel = write_kernel_spec(tmp_path / "jupyter", env)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel, timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError naming the cell on any error

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    text = "\n".join(o.get("text", "") for c in code_cells for o in c.outputs if o.output_type == "stream")
    assert f"run {run_dir}, step 3" in text
    assert "the next purchase ranks" in text
    assert "=== SR (Sequential_Recommendation)" in text
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # routing, schedule, probe losses
