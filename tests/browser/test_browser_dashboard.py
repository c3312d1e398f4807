"""The dashboard in a real JupyterLab, driven by a real headless Chromium (Playwright, no browser download).

One JupyterLab per test session on a free loopback port, in a temporary folder holding a copy of
``notebooks/quickstart.ipynb``. The test runs every cell, then checks what a user sees: the
dashboards render as widgets, a live progress bar reaches 100 %, a step's stdout appears in the log
viewer, HTML printed by a step is shown as text (no dialog, no image element), and a single job's
"Kill" button kills its running step (its process is gone, its row says KILLED).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_servers import UI_TIMEOUT_MS, browser, jupyter_server, requirements
from process_helpers import pid_alive

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on a free loopback port, serving a temporary copy of the quickstart."""
    missing = requirements("lab")
    if missing:
        pytest.skip(missing)
    base = tmp_path_factory.mktemp("lab")
    work = base / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", work / "quickstart.ipynb")
    with jupyter_server("lab", base, work) as server:
        yield server


@pytest.fixture()
def page(lab: dict[str, Any]) -> Iterator[Any]:
    """A Chromium page; every JavaScript dialog it opens is recorded (and dismissed)."""
    with browser(height=1000) as page:
        yield page


def _dashboards(page: Any) -> Any:
    return page.locator(".jp-OutputArea-output .nbdist-dashboard")


def _dashboard_of(page: Any, cell_index: int) -> Any:
    """The dashboard in the output of the notebook's cell number ``cell_index``."""
    return page.locator(".jp-Notebook .jp-Cell").nth(cell_index).locator(".nbdist-dashboard")


def _cell_index(page: Any, marker: str) -> int:
    """Index of the first cell whose source contains ``marker``."""
    sources = page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells.map(c => c.getSource())")
    for index, source in enumerate(sources):
        if marker in source:
            return index
    raise AssertionError(f"no cell contains {marker!r}")


def test_quickstart_dashboard_in_chromium(lab: dict[str, Any], page: Any) -> None:
    page.goto(f"{lab['url']}/lab/tree/quickstart.ipynb?token={lab['token']}&reset")
    # The kernel must exist before cells run, or Run opens a "Select Kernel" dialog.
    page.get_by_text(re.compile(r"Python 3 \(ipykernel\)\s*\|\s*Idle")).first.wait_for()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    # Every %%submit/%nbdist show cell renders a real widget (the text fallback has no such class).
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-OutputArea-output .nbdist-dashboard').length >= 4",
        timeout=UI_TIMEOUT_MS)

    # The live dashboard of the job that runs for a few seconds: refreshed from the kernel's thread to 100 %.
    live = _dashboard_of(page, _cell_index(page, "--name countdown"))
    bar = live.locator(".widget-hprogress .progress-bar")
    page.wait_for_function("(el) => el.style.width === '100%'", arg=bar.element_handle(), timeout=UI_TIMEOUT_MS)
    live.get_by_text(re.compile(r"DONE 1")).first.wait_for()
    # ... and its log viewer shows what the step printed, including its last line.
    live.locator("pre.nbdist-log").filter(has_text="liftoff").first.wait_for()

    # HTML printed by a step is text: shown literally, no element made from it, no script run.
    html_demo = _dashboard_of(page, _cell_index(page, "--name html-demo"))
    stdout_view = html_demo.locator(".jupyter-widgets pre.nbdist-log").first
    stdout_view.wait_for()
    page.wait_for_timeout(1000)  # time for an injected onerror handler to fire, were there one
    assert page.dialogs == [], f"a step's output opened a dialog: {page.dialogs}"
    assert page.locator(".jp-OutputArea-output img[src='x']").count() == 0
    assert "<img src=x onerror=alert(1)>" in stdout_view.inner_text()

    # Kill from the dashboard: a new cell starts a long step that prints its pid.
    page.evaluate("""() => {
        const app = window.jupyterapp;
        const notebook = app.shell.currentWidget.content;
        notebook.activeCellIndex = notebook.widgets.length - 1;
        return app.commands.execute('notebook:insert-cell-below').then(() => {
            notebook.activeCell.model.sharedModel.setSource(
                '%%submit --name sleeper\\necho "pid $$"; exec sleep 300');
            return app.commands.execute('notebook:run-cell');
        });
    }""")
    sleeper = _dashboard_of(page, _cell_index(page, "--name sleeper"))
    sleeper.locator("pre.nbdist-log").filter(has_text="pid ").first.wait_for()
    pid = int(re.search(r"pid (\d+)", sleeper.locator("pre.nbdist-log").first.inner_text()).group(1))
    assert pid_alive(pid)
    # A single job has one "Kill" button (nothing to select; "Kill selected" is for arrays).
    assert sleeper.get_by_role("button", name="Kill selected").count() == 0  # role queries skip hidden ones
    kill = sleeper.locator("button", has_text=re.compile(r"^\s*Kill\s*$")).first
    page.wait_for_function("(el) => !el.disabled", arg=kill.element_handle())
    kill.click()
    sleeper.locator(".nbdist-rows option").filter(has_text="KILLED").first.wait_for()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), f"the killed step's process {pid} still runs"
    assert page.dialogs == []

    # Parameter values and stderr lines are text too: a failing step whose value and error are HTML
    # (names cannot carry HTML: the core accepts only letters, digits and ._+=-).
    source = ('%%submit --name xss-params --over "[{\'p\': \'<img src=p onerror=alert(3)>\'}]"\n'
              'echo {{p}}; echo "<img src=q onerror=alert(4)>" >&2; exit 1')
    page.evaluate("""(source) => {
        const app = window.jupyterapp;
        const notebook = app.shell.currentWidget.content;
        notebook.activeCellIndex = notebook.widgets.length - 1;
        return app.commands.execute('notebook:insert-cell-below').then(() => {
            notebook.activeCell.model.sharedModel.setSource(source);
            return app.commands.execute('notebook:run-cell');
        });
    }""", source)
    xss = _dashboard_of(page, _cell_index(page, "--name xss-params"))
    xss.get_by_text(re.compile(r"FAILED 1")).first.wait_for()
    # A failed step opens on its stderr tab; its stdout (the parameter's value) is text in the other tab.
    xss.locator("pre.nbdist-log").filter(has_text="<img src=q onerror=alert(4)>").first.wait_for()
    xss.locator("pre.nbdist-log").filter(has_text="<img src=p onerror=alert(3)>").first.wait_for(state="attached")
    xss.get_by_text("<img src=q onerror=alert(4)>").first.wait_for()  # the failure group's line
    page.wait_for_timeout(1000)
    assert page.dialogs == [], f"HTML in a parameter or stderr opened a dialog: {page.dialogs}"
    assert page.locator(".jp-OutputArea-output img[src='p'], .jp-OutputArea-output img[src='q']").count() == 0
