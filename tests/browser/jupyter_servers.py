"""JupyterLab or Notebook 7 and headless Chromium for the browser tests.

A server starts on a free loopback port in its own folders, with the user's environment
(``PYTHONUNBUFFERED`` removed), and stops with its kernels afterwards; Chromium is the system's
(``apt-get install chromium``), driven by Playwright, never a downloaded one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from process_helpers import ALLOWED_SURVIVORS

__all__ = ["APPS", "CHROMIUM", "KERNEL_IDLE", "UI_TIMEOUT_MS", "browser", "jupyter_server", "notebook_server",
           "requirements", "write_notebook"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Generous: both shared cores may be busy with other suites (a cold run measured 13-45 s).
LAB_START_TIMEOUT_S = 90
UI_TIMEOUT_MS = 90_000
# The app and the URL path of a notebook in it.
APPS = {"lab": ("lab", "lab/tree"), "notebook": ("notebook", "notebooks")}
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""


def requirements(app: str = "lab") -> str | None:
    """Why a browser test of ``app`` cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f"chromium not found at {CHROMIUM} (apt-get install -y chromium; never `playwright install`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright for Python is not installed (pip install -e '.[test]')"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install -e '.[test]')"
    if app == "notebook":
        try:
            import notebook  # noqa: F401
        except ImportError:
            return "notebook>=7 is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server shuts its kernels down), then SIGKILL whatever of its tree is left."""
    try:
        tree = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells, never run."""
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


@contextmanager
def jupyter_server(app: str, base: Path, work: Path) -> Iterator[dict[str, Any]]:
    """Run ``jupyter lab`` or ``jupyter notebook`` on ``work``; yield its base URL, token, path prefix, pid."""
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    env.pop("PYTHONUNBUFFERED", None)  # as on a user's machine
    name, path = APPS[app]
    command = [sys.executable, "-m", "jupyter", name, "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
               f"--LabServerApp.workspaces_dir={base / 'ws'}", f"--LabServerApp.user_settings_dir={base / 'settings'}",
               "--expose-app-in-browser"]
    log_file = open(base / "server.log", "wb")  # noqa: SIM115 - open for the server's whole life
    process = subprocess.Popen(command, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    ALLOWED_SURVIVORS.add(process.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + LAB_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n" + (base / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield {"url": url, "token": token, "path": path, "work": work, "pid": process.pid}
    finally:
        _stop(process)
        log_file.close()
        ALLOWED_SURVIVORS.discard(process.pid)


@contextmanager
def notebook_server(app: str, tmp_path_factory: pytest.TempPathFactory, notebook: str,
                    cells: list[str]) -> Iterator[dict[str, Any]]:
    """``app`` serving a fresh folder with the notebook ``notebook`` of ``cells``; skips where it cannot run.

    Yields :func:`jupyter_server`'s dict with ``notebook_url``, the notebook's page.
    """
    missing = requirements(app)
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp(f"{Path(notebook).stem}-{app}")
    work = base / "work"
    work.mkdir()
    write_notebook(work / notebook, cells)
    with jupyter_server(app, base, work) as server:
        server["notebook_url"] = f"{server['url']}/{server['path']}/{notebook}?token={server['token']}"
        yield server


@contextmanager
def browser(height: int = 1400) -> Iterator[Any]:
    """A headless Chromium page; dialogs (an injected ``alert``) are recorded in ``page.dialogs``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.dialogs = []  # type: ignore[attr-defined]
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            yield page
        finally:
            chromium.close()
