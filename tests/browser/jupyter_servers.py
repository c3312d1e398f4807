"""JupyterLab or Notebook 7 for a browser test: started on a free loopback port in its own folders,
with the user's environment (``PYTHONUNBUFFERED`` removed), stopped with its kernels afterwards."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from process_helpers import ALLOWED_SURVIVORS
from test_browser_dashboard import CHROMIUM, CHROMIUM_ARGS, LAB_START_TIMEOUT_S, UI_TIMEOUT_MS, _free_port, _stop

__all__ = ["APPS", "KERNEL_IDLE", "browser", "jupyter_server", "write_notebook"]

# The app and the URL path of a notebook in it.
APPS = {"lab": ("lab", "lab/tree"), "notebook": ("notebook", "notebooks")}
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells, never run."""
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


@contextmanager
def jupyter_server(app: str, base: Path, work: Path) -> Iterator[dict[str, Any]]:
    """Run ``jupyter lab`` or ``jupyter notebook`` on ``work``; yield its base URL, token and path prefix."""
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
        yield {"url": url, "token": token, "path": path, "work": work}
    finally:
        _stop(process)
        log_file.close()
        ALLOWED_SURVIVORS.discard(process.pid)


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium page; dialogs (an injected ``alert``) are recorded in ``page.dialogs``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.dialogs = []  # type: ignore[attr-defined]
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            yield page
        finally:
            chromium.close()
