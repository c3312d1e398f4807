"""Run one tutorial notebook under strict nbval, the way every notebook test does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
CELL_TIMEOUT_S = 180


def run_nbval(notebook: Path, workdir: Path, scratch: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Copy ``notebook`` into ``workdir`` and run it there by a child ``pytest --nbval``.

    The copy starts with an empty ``.nbdist/`` registry, as when its saved outputs were made; the
    child pytest sees neither this suite's conftest nor the user's IPython/Jupyter folders (those
    live under ``scratch``).
    """
    shutil.copy(notebook, workdir / notebook.name)
    (workdir / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, IPYTHONDIR=str(scratch / ".ipython"), JUPYTER_PLATFORM_DIRS="1",
               JUPYTER_RUNTIME_DIR=str(scratch / ".runtime"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(workdir),
               "-c", str(workdir / "pytest.ini"), "--nbval", "--nbval-sanitize-with", str(SANITIZE),
               "--nbval-cell-timeout", str(CELL_TIMEOUT_S), notebook.name]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
