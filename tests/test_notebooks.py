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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(path for path in (ROOT / "notebooks").glob("*.ipynb") if "slurm" not in path.name)
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
CELL_TIMEOUT_S = 180


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_under_nbval(notebook: Path, tmp_path: Path) -> None:
    pytest.importorskip("nbval")
    shutil.copy(notebook, tmp_path / notebook.name)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / ".ipython"), JUPYTER_PLATFORM_DIRS="1",
               JUPYTER_RUNTIME_DIR=str(tmp_path / ".runtime"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
               "-c", str(tmp_path / "pytest.ini"), "--nbval", "--nbval-sanitize-with", str(SANITIZE),
               "--nbval-cell-timeout", str(CELL_TIMEOUT_S), notebook.name]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                            timeout=CELL_TIMEOUT_S * 10)
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
    (output,) = notebook.cells[1].outputs
    assert output["output_type"] == "display_data"
    assert "100% done" in output["data"]["text/plain"] and "DONE 1" in output["data"]["text/plain"]
    assert "rested" in output["data"]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in output["data"]
    nbformat.validate(notebook)
