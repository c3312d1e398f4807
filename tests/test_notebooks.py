"""The tutorial notebooks run under strict nbval: every cell's text output as saved, after sanitizing.

Each notebook runs in a fresh kernel, in its own temporary copy of ``notebooks/`` (so its
``.nbdist/`` registry and files start empty, as they did when the saved outputs were made), by a
child ``pytest --nbval`` that does not see this suite's conftest.

To refresh a notebook's saved outputs after a deliberate change, execute it the same way, in a
fresh copy: ``cp notebooks/X.ipynb $TMP && cd $TMP && jupyter nbconvert --to notebook --execute
--inplace --ExecutePreprocessor.store_widget_state=False X.ipynb``, then copy it back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nbval_helpers import CELL_TIMEOUT_S, ROOT, run_nbval

NOTEBOOKS = sorted(path for path in (ROOT / "notebooks").glob("*.ipynb") if "slurm" not in path.name)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_under_nbval(notebook: Path, tmp_path: Path) -> None:
    pytest.importorskip("nbval")
    result = run_nbval(notebook, tmp_path, tmp_path, timeout=CELL_TIMEOUT_S * 10)
    assert result.returncode == 0, f"nbval failed for {notebook.name}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


def test_live_dashboard_output_becomes_the_final_table(tmp_path: Path) -> None:
    """A dashboard shown while its job runs is replaced, in the saved outputs, by the final drawing."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[
        new_code_cell("%load_ext nbdist"),
        new_code_cell("%%submit --name nap\nsleep 1; echo rested"),
        new_code_cell("%nbdist wait nap\nimport time; time.sleep(2)  # leave the refresher a few ticks"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    env_before = dict(os.environ)
    os.environ.update(IPYTHONDIR=str(tmp_path / ".ipython"), JUPYTER_PLATFORM_DIRS="1")
    try:
        nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}},
                                store_widget_state=False).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    output, live = notebook.cells[1].outputs  # the picture, then the live widget (issue 18 point 4)
    assert output["output_type"] == "display_data"
    assert "100% done" in output["data"]["text/plain"] and "DONE 1" in output["data"]["text/plain"]
    assert "rested" in output["data"]["text/html"]
    assert list(live["data"]) == ["application/vnd.jupyter.widget-view+json"]
    nbformat.validate(notebook)
