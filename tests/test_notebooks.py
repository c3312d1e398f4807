"""The tutorial notebooks run under strict nbval: every cell's text output as saved, after sanitizing.

Each notebook runs in a fresh kernel, in its own temporary copy of ``notebooks/`` (so its
``.nbdist/`` registry and files start empty, as they did when the saved outputs were made), by a
child ``pytest --nbval`` that does not see this suite's conftest.
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
