"""The dashboard's pictures in a real browser: JupyterLab and Notebook 7, headless Chromium (Playwright).

A notebook written by the test runs an array whose parameters and output carry HTML; the test sees
the timeline grow while it runs (bars appear, a running bar widens), the stacked bar and the ETA, a
click on a bar opening that step's log, HTML shown as text in the picture and the log, and the
all-jobs overview listing a job submitted by another process sharing the root (as another kernel).
Servers and the browser come from ``jupyter_servers``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_servers import APPS, KERNEL_IDLE, UI_TIMEOUT_MS, browser, notebook_server

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
@pytest.fixture(params=sorted(APPS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """JupyterLab or Notebook 7 on a free loopback port, serving a folder with the test's notebook."""
    with notebook_server(request.param, tmp_path_factory, "timeline.ipynb", CELLS) as server:
        yield server


@pytest.fixture()
def browser_page(server: dict[str, Any]) -> Iterator[Any]:
    with browser(height=1200) as page:
        yield page


def _count(page: Any, selector: str) -> int:
    return int(page.evaluate(f"() => document.querySelectorAll({selector!r}).length"))


def test_timeline_stacked_bar_click_and_overview(server: dict[str, Any], browser_page: Any) -> None:
    page = browser_page
    page.goto(server["notebook_url"])
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
