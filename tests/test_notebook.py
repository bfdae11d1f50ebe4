"""The walkthrough notebook runs top to bottom (tiny budgets) in a real kernel."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.timeout(600)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ultra_walkthrough.ipynb"


def test_walkthrough_notebook_executes(monkeypatch):
    monkeypatch.setenv("JAXMOD_WALKTHROUGH_TINY", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=500, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "critical because" in text and "ULTRA-RA:" in text and "PPO fine-tune:" in text
    assert "ANSWER as received" in text and "verdict: valid" in text  # the HTTP round trip
    assert "ULTRA-RA minus fine-tuning" in text


def test_the_notebook_is_saved_with_its_outputs():
    """A reader sees what each cell prints without running it: the file keeps the outputs of a full-budget run."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code[1:]), "re-run the notebook and save it with its outputs"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
