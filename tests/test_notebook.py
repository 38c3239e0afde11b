"""notebooks/quickstart.ipynb runs from top to bottom in a real kernel, and is stored with its
outputs, so that a reader sees them without running it."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_with_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    # Run in order, top to bottom, each cell showing something, none an error.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        assert cell.outputs, cell.source[:60]
        assert all(o.output_type != "error" for o in cell.outputs), cell.source[:60]
    _check_outputs(nb)


def _text(nb) -> str:
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _check_outputs(nb) -> None:
    """What the notebook teaches: a later period of the training fleet, scored well."""
    text = _text(nb)
    assert "event recall" in text and "IsolationForest is" in text
    assert "incident:" in text
    assert "warning" not in text.lower()  # no entity it never saw, no misfit
    f1 = float(re.search(r"^event F1\s+([0-9.]+)", text, flags=re.M).group(1))
    assert f1 > 0.75, text
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the entity plot is shown"


@pytest.mark.slow
def test_notebook_runs_end_to_end():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    _check_outputs(nb)
