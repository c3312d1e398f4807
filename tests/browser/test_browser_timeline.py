"""The dashboard's pictures in a real browser: JupyterLab and Notebook 7, headless Chromium (Playwright).

A notebook written by the test runs an array whose parameters and output carry HTML; the test sees
the timeline grow while it runs (bars appear, a running bar widens), the stacked bar and the ETA, a
click on a bar opening that step's log, HTML shown as text in the picture and the log, and the
all-jobs overview listing a job submitted by another process sharing the root (as another kernel).
Servers are started the way ``test_browser_dashboard`` starts JupyterLab (its helpers are reused).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_helpers import ALLOWED_SURVIVORS
from test_browser_dashboard import (CHROMIUM, CHROMIUM_ARGS, LAB_START_TIMEOUT_S, UI_TIMEOUT_MS, _free_port,
                                    _requirements, _stop)

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
CELLS = [
    "import subprocess, sys\nimport nbdist\n"
    "session = nbdist.Session(root='.nbdist-tl', parallelism=2)\nnbdist.set_default_session(session)",
    "sweep = session.array('echo \"<b>step $NBDIST_STEP</b> $p\"; sleep 2.5',\n"
    f"                      over=[{{'p': {XSS!r} + str(i)}} for i in range(6)], name='tl')\n"
    "nbdist.show(sweep)",
    # Another process sharing the root, as another kernel would.
    "subprocess.run([sys.executable, '-c', \"import nbdist; s = nbdist.Session(root='.nbdist-tl'); \"\n"
    "                \"s.submit('true', name='other-kernel').wait(); s.close()\"], check=True)\n"
    "nbdist.show()",
]
APPS = {"lab": ("lab", "lab/tree"), "notebook": ("notebook", "notebooks")}


def _notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in CELLS]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


@pytest.fixture(params=sorted(APPS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """JupyterLab or Notebook 7 on a free loopback port, serving a folder with the test's notebook."""
    missing = _requirements()
    if request.param == "notebook":
        try:
            import notebook  # noqa: F401
        except ImportError:
            missing = missing or "notebook>=7 is not installed (pip install -e '.[test]')"
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp(request.param)
    work = base / "work"
    work.mkdir()
    _notebook(work / "timeline.ipynb")
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    env.pop("PYTHONUNBUFFERED", None)  # as on a user's machine
    app, path = APPS[request.param]
    command = [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", "--ip=127.0.0.1",
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
                raise RuntimeError(f"{app} did not start:\n" + (base / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield {"url": f"{url}/{path}/timeline.ipynb?token={token}", "work": work}
    finally:
        _stop(process)
        log_file.close()
        ALLOWED_SURVIVORS.discard(process.pid)


@pytest.fixture()
def browser_page(server: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.dialogs = []  # type: ignore[attr-defined]
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            yield page
        finally:
            browser.close()


KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""


def _count(page: Any, selector: str) -> int:
    return int(page.evaluate(f"() => document.querySelectorAll({selector!r}).length"))


def test_timeline_stacked_bar_click_and_overview(server: dict[str, Any], browser_page: Any) -> None:
    page = browser_page
    page.goto(server["url"])
    page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)  # else Run opens a "Select Kernel" dialog
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    dashboard = page.locator(".nbdist-dashboard").first
    try:
        dashboard.wait_for()
    except Exception:  # a cell failed: its traceback says why
        print("cell outputs:", page.locator(".jp-OutputArea-output").all_inner_texts())
        raise

    # The timeline grows while the array runs: bars appear, a running bar widens.
    running = ".nbdist-dashboard .nbdist-timeline-view .nbdist-tl-running rect"
    page.wait_for_function(f"() => document.querySelectorAll({running!r}).length > 0", timeout=UI_TIMEOUT_MS)
    first = float(page.locator(running).first.get_attribute("width"))
    page.wait_for_function(
        f"(w) => {{ const r = document.querySelector({running!r}); return r && parseFloat(r.getAttribute('width')) > w; }}",
        arg=first, timeout=UI_TIMEOUT_MS)
    # The stacked bar and, once steps ended, the throughput and ETA.
    dashboard.locator(".nbdist-stacked .nbdist-bar-running").first.wait_for()
    dashboard.get_by_text(re.compile(r"steps/min · ETA")).first.wait_for()
    # Every step ends: six bars, the done segment fills the bar.
    page.wait_for_function(
        "() => document.querySelectorAll('.nbdist-dashboard .nbdist-timeline-view .nbdist-tl-done rect').length === 6",
        timeout=UI_TIMEOUT_MS)
    assert _count(page, ".nbdist-dashboard .nbdist-stacked .nbdist-bar-done") == 1

    # HTML in parameters is text inside the picture: a tooltip holds it, no element is made from it.
    bar = dashboard.locator('.nbdist-timeline-view rect[data-pick="3"]')
    assert XSS + "3" in bar.locator("title").text_content()
    # A click on step 3's bar opens its log.
    bar.click()
    dashboard.get_by_text("stdout · step 3").first.wait_for()
    log = dashboard.locator("pre.nbdist-log").filter(has_text="step 3").first
    log.wait_for()
    assert f"<b>step 3</b> {XSS}3" in log.inner_text()  # the step's HTML output, as text

    # The overview lists the other process's job next to this kernel's.
    overview = page.locator(".nbdist-overview-view")
    overview.wait_for()
    overview.get_by_text("other-kernel").first.wait_for()
    assert "(other kernel)" in overview.inner_text() and "tl" in overview.inner_text()
    # Clicking a line of the overview opens that job's dashboard below it.
    overview.locator("tr.nbdist-overview-row", has_text="other-kernel").click()
    page.locator(".nbdist-overview-box .nbdist-dashboard").first.wait_for()

    page.wait_for_timeout(500)  # time for an injected onerror handler to fire, were there one
    assert page.dialogs == [], f"a step's text opened a dialog: {page.dialogs}"
    assert _count(page, ".jp-OutputArea-output img[src='x']") == 0
