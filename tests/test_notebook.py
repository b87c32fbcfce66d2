"""The Colab notebook, executed headless on CPU with its smoke parameters.

Like papermill: the cell tagged "parameters" gets the CI values appended, then
every cell runs in a fresh kernel; any failing cell fails the test.
"""

import os

import nbformat
import pytest
from conftest import REPO

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(REPO, "notebooks", "noisy_student_colab.ipynb")


def test_colab_notebook_runs_on_cpu(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    params.source += f"\nINSTALL = False\nSMOKE = True\nWORKDIR = {str(tmp_path / 'run')!r}\n"
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPO, "notebooks")}},
    )
    client.execute()
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "device: cpu" in text
    assert "predicted:" in text
    # The loop wrote its results and the tools labeled and balanced the folder.
    assert (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "pseudo" / "manifest.json").exists()
    assert "'in': 64" in text
