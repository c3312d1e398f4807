"""Issue 18 points 4, 1 and 5 in a real browser, with the settings a plain ``pip install nbdist`` into an
existing JupyterLab has (no widget state saved in notebooks), in JupyterLab and Notebook 7:

- while the kernel lives, a dashboard is the live widget with its buttons (its picture hidden);
- Kernel → Restart: the dashboards still on the page become their final picture (no dead widget, no
  broken images, no "model not found");
- saved after the restart, closed, reopened with no kernel: the final picture again, never the error;
- a handle shown as a cell's value is its dashboard (point 1), and a finished job's timeline ends where
  the job did, not on a round 10 s axis (point 5).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_servers import APPS, KERNEL_IDLE, UI_TIMEOUT_MS, browser, jupyter_server, requirements, write_notebook

pytestmark = pytest.mark.browser

CELLS = ["%load_ext nbdist\nimport nbdist\nnbdist.set_default_session(nbdist.Session(root='.nbdist-fallback'))",
         "%%submit --name final --array 3 --wait\necho step $NBDIST_STEP",
         "import concurrent.futures\n\ndef double(x):\n    return 2 * x\n\n"
         "doubled = nbdist.function(name='doubled')(double).map(range(4))\n"
         "concurrent.futures.wait([doubled])\ndoubled"]


@pytest.fixture(params=sorted(APPS))
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    missing = requirements(request.param)
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp(f"fallback-{request.param}")
    work = base / "work"
    work.mkdir()
    write_notebook(work / "fallback.ipynb", CELLS)
    # JupyterLab's default (the venv's overrides.json of `make lab` turns it on): user settings win over it.
    settings = base / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": False}))
    with jupyter_server(request.param, base, work) as server:
        server["notebook_url"] = f"{server['url']}/{server['path']}/fallback.ipynb?token={server['token']}"
        yield server


def _stop_kernels(server: dict[str, Any]) -> None:
    base, token = server["url"], server["token"]
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}") as response:
        sessions = json.loads(response.read())
    for session in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}",
                                                      method="DELETE"))


def _assert_pictures_only(page: Any) -> None:
    """Every dashboard shows its final picture: no widget, no error, no broken image."""
    for title in ("array final", "array doubled"):
        page.locator(".nbdist-picture .nbdist-header", has_text=title).first.wait_for()
    page.locator(".nbdist-picture .nbdist-header", has_text="DONE 3").first.wait_for()
    page.wait_for_timeout(1000)  # the widget renderer's error, if any, has come by now
    text = page.locator(".jp-Notebook").inner_text()  # what is rendered and visible
    assert "model not found" not in text and "Error displaying widget" not in text
    assert not [element for element in page.locator(".nbdist-dashboard").all() if element.is_visible()]
    broken = page.evaluate("() => Array.from(document.querySelectorAll('.jp-Notebook img'))"
                           ".filter(img => img.offsetParent !== null && !img.naturalWidth).length")
    assert broken == 0


def _last_tick_seconds(page: Any, scope: str) -> float:
    label = page.locator(f"{scope} svg.nbdist-timeline text[text-anchor='end']").first.text_content() or ""
    if label.endswith("ms"):  # an axis shorter than a second is labelled in milliseconds
        return float(label[:-2]) / 1000
    assert label.endswith("s") and "m" not in label, label
    return float(label[:-1])


def test_dashboards_fall_back_to_their_picture_after_a_restart_and_when_reopened(app: dict[str, Any]) -> None:
    with browser() as page:
        page.goto(app["notebook_url"])
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        live = page.locator(".nbdist-dashboard .nbdist-header", has_text="DONE 3").first
        live.wait_for()
        # Point 1: the handle shown as the cell's value is its live dashboard.
        page.locator(".nbdist-dashboard .nbdist-header", has_text="array doubled").first.wait_for()
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)
        assert page.locator(".nbdist-dashboard button", has_text="Retry failed").first.is_visible()
        assert not [element for element in page.locator(".nbdist-picture").all() if element.is_visible()]
        # Point 5: a few-tenths-of-a-second job is drawn on its own axis, not on 0-10 s.
        assert _last_tick_seconds(page, ".nbdist-dashboard") < 5
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
        page.locator(".jp-Dialog button.jp-mod-accept").click()
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)
        _assert_pictures_only(page)
        assert _last_tick_seconds(page, ".nbdist-picture") < 5
        page.evaluate("() => { window.jupyterapp.commands.execute('docmanager:save'); }")
        deadline = time.monotonic() + 30
        while True:  # saved after the restart: the pictures' final text is in the file
            saved = json.loads((app["work"] / "fallback.ipynb").read_text())
            outputs = saved["cells"][1]["outputs"]
            if outputs and "DONE 3" in "".join(outputs[0].get("data", {}).get("text/plain", "")):
                break
            assert time.monotonic() < deadline, outputs
            time.sleep(0.3)
        assert "widgets" not in saved["metadata"]  # as a plain install saves it: no widget state
    _stop_kernels(app)
    with browser() as page:  # a new browser, the kernel gone: only what the file holds
        page.goto(app["notebook_url"])
        _assert_pictures_only(page)
