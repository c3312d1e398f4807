"""Issue 14 point 2 in a real browser: a saved notebook reopened after its kernel is gone shows the final
dashboard's picture, not "Error displaying widget: model not found" (JupyterLab and Notebook 7), here with
``make lab``'s settings (the widget state saved in the notebook).

Why the error: a notebook the user ran and saved is *trusted*, so the front end renders each output with
its best-ranked renderer, the widget view (rank -10, before text/html); with no kernel the widget model
can only come from the notebook's metadata, which ipywidgets fills only when "Save Jupyter widget state
in notebooks" (``@jupyter-widgets/jupyterlab-manager:plugin`` ``saveState``, default off) is on. With it
on (``make lab`` and ``make test`` set it in the venv's ``share/jupyter/lab/settings/overrides.json``), reopening draws the saved final dashboard; the text/plain and
text/html of the same bundle serve GitHub, nbviewer, VS Code (which falls back to them) and nbval.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_servers import APPS, KERNEL_IDLE, UI_TIMEOUT_MS, browser, notebook_server

pytestmark = pytest.mark.browser

CELLS = ["%load_ext nbdist\nimport nbdist\nnbdist.set_default_session(nbdist.Session(root='.nbdist-reopen'))",
         "%%submit --name final --array 3 --wait\necho step $NBDIST_STEP"]


@pytest.fixture(params=sorted(APPS))
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # The setting comes from where `make lab` / `make test` put it, the venv's app-level overrides,
    # not from this test: so the test checks what a user gets.
    overrides = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    if not overrides.exists():
        pytest.skip(f"{overrides} is missing: run `make lab` or `make test`, which install it")
    assert json.loads(overrides.read_text())["@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True
    with notebook_server(request.param, tmp_path_factory, "reopen.ipynb", CELLS) as server:
        yield server


def _stop_kernels(server: dict[str, Any]) -> None:
    """Shut every kernel down through the server's REST API, as closing the notebook's kernel does."""
    base, token = server["url"], server["token"]
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}") as response:
        sessions = json.loads(response.read())
    for session in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}",
                                                      method="DELETE"))


def test_reopened_notebook_shows_the_final_dashboard(app: dict[str, Any]) -> None:
    url = app["notebook_url"]
    with browser() as page:
        page.goto(url)
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        page.locator(".nbdist-dashboard .nbdist-header", has_text="DONE 3").first.wait_for()
        page.evaluate("() => { window.jupyterapp.commands.execute('docmanager:save'); }")
        deadline = time.monotonic() + 30
        while "widgets" not in json.loads((app["work"] / "reopen.ipynb").read_text())["metadata"]:
            assert time.monotonic() < deadline, "the widget state was not saved with the notebook"
            time.sleep(0.3)
        saved = json.loads((app["work"] / "reopen.ipynb").read_text())
        data = saved["cells"][1]["outputs"][0]["data"]
        assert "DONE 3" in "".join(data["text/plain"]) and "nbdist-steps" in "".join(data["text/html"])
    _stop_kernels(app)
    with browser() as page:  # a new browser: nothing of the first page's widgets in memory
        page.goto(url)
        # The saved widget state draws a dashboard with no kernel behind it: the final picture stands in
        # for it (issue 18 point 4; tests/browser/test_browser_fallback.py has the default settings).
        page.locator(".nbdist-picture .nbdist-header", has_text="DONE 3").first.wait_for()
        page.wait_for_timeout(1000)
        assert "model not found" not in page.locator(".jp-Notebook").inner_text()
        assert not page.locator(".nbdist-dashboard").first.is_visible()
