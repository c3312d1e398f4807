"""Issue 14 in a real browser (JupyterLab and Notebook 7, headless Chromium): views that stay true and live.

One notebook, run as a user runs it, with ``PYTHONUNBUFFERED`` removed from the server's environment:

- ``%%submit --wait`` shows its live dashboard while the cell is still busy (point 3);
- a finished array with failures: "Kill" buttons disabled, "Retry failed" enabled, the failed step
  open on its stderr tab, a "message" column header, "steps 1, 3" (point 8);
- the failed steps are retried from the CLI (another process): the finished dashboard follows, to
  ``DONE 4`` (point 1);
- a ``--python`` cell's log tail grows line by line (point 5);
- a single job shows one "Kill" button, and its status text says what it did (point 8);
- an interrupted ``--wait`` prints one line — the wait stopped, the work goes on, how to kill it —
  and no traceback (point 3).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_servers import APPS, KERNEL_IDLE, UI_TIMEOUT_MS, browser, notebook_server

pytestmark = pytest.mark.browser

ROOT = ".nbdist-live"
KILL = re.compile(r"^\W*Kill$")  # the button's name, after its icon's glyph
CELLS = [
    "%load_ext nbdist\nimport nbdist\n"
    f"nbdist.set_default_session(nbdist.Session(root={ROOT!r}, parallelism=2))",
    "%%submit --name waited --array 4 --wait\necho start; sleep 4; echo end",
    "%%submit --name flaky --array 4 --wait\n"
    "test -e marker_$NBDIST_STEP && exit 0; touch marker_$NBDIST_STEP\n"
    "test $((NBDIST_STEP % 2)) = 0 || { echo \"ValueError: odd step\" >&2; exit 1; }",
    "%%submit --name talker --python\nimport time\nfor i in range(10):\n    print(f'line {i}')\n    time.sleep(0.6)",
    "%%submit --name single\nsleep 60",
    "%%submit --name longwait --wait\nsleep 60",
]


@pytest.fixture(params=sorted(APPS))
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with notebook_server(request.param, tmp_path_factory, "live.ipynb", CELLS) as server:
        yield server


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _dashboard(page: Any, index: int) -> Any:
    dashboard = _cell(page, index).locator(".nbdist-dashboard").first
    dashboard.wait_for()
    return dashboard


def _run(page: Any, command: str, cell: int) -> None:
    """Run a notebook command with cell ``cell`` active, without waiting for its cells to finish."""
    page.evaluate("""([command, cell]) => {
        window.jupyterapp.shell.currentWidget.content.activeCellIndex = cell;
        window.jupyterapp.commands.execute(command);
    }""", [command, cell])


def _header(dashboard: Any, text: str) -> None:
    """Wait until the dashboard's header (its counts) shows ``text``."""
    dashboard.locator(".nbdist-header", has_text=text).first.wait_for()


def _cli(work: Any, *args: str) -> str:
    command = [sys.executable, "-m", "nbdist.views.cli", "--root", str(work / ROOT), *args]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120).stdout


def test_views_stay_true_and_live(app: dict[str, Any]) -> None:
    with browser() as page:
        page.goto(app["notebook_url"])
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)  # else Run opens a "Select Kernel" dialog
        # Every cell but the last (run later); not awaited: the promise resolves once the cells ran.
        _run(page, "notebook:run-all-above", len(CELLS) - 1)

        # Point 3: the waited array's dashboard is live while its cell still runs.
        waited = _dashboard(page, 1)
        _header(waited, "RUNNING")
        assert "[*]" in _cell(page, 1).locator(".jp-InputPrompt").inner_text()
        _header(waited, "DONE 4")

        # Point 8: a finished array with failures.
        flaky = _dashboard(page, 2)
        _header(flaky, "FAILED 2")
        assert flaky.get_by_role("button", name="Kill all").is_disabled()
        assert flaky.get_by_role("button", name="Kill selected").is_disabled()
        assert flaky.get_by_role("button", name="Retry failed").is_enabled()
        current = flaky.locator(".lm-TabBar-tab.lm-mod-current").first.inner_text()
        assert current.startswith("stderr"), current
        assert "message" in flaky.locator("pre", has_text="runtime").first.inner_text()  # the column header
        assert "steps 1, 3" in flaky.locator(".nbdist-failures").inner_text()

        # Point 5: the Python cell's output is live (one line every 0.6 s), though unbuffered is not set.
        talker = _dashboard(page, 3)
        talker.locator("pre.nbdist-log", has_text="line 1").first.wait_for()
        assert "line 9" not in talker.inner_text(), "all lines at once: output is not live"
        talker.locator("pre.nbdist-log", has_text="line 9").first.wait_for()

        # Point 8: one job, one Kill button; its status says what it did, and it is then disabled.
        single = _dashboard(page, 4)
        _header(single, "RUNNING")
        visible = [text.strip() for text in single.locator("button:visible").all_inner_texts() if "Kill" in text]
        assert visible == ["Kill"], visible
        single.get_by_role("button", name=KILL).click()
        _header(single, "KILLED 1")
        assert single.get_by_role("button", name=KILL).is_disabled()
        assert single.locator(".widget-label", has_text="killed").count() == 1

        # Point 1: a retry from the CLI (another process); the finished dashboard follows it.
        assert _cli(app["work"], "retry", "flaky").startswith("retrying 2 of 4 steps of flaky")
        _header(flaky, "DONE 4")
        assert flaky.get_by_role("button", name="Retry failed").is_disabled()

        # Point 3: interrupting a wait is one line; the work goes on.
        _run(page, "notebook:run-cell", len(CELLS) - 1)
        longwait = _dashboard(page, 5)
        _header(longwait, "RUNNING")
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
        output = _cell(page, 5).locator(".jp-OutputArea-output", has_text="stopped waiting")
        output.wait_for()
        text = _cell(page, 5).inner_text()
        assert "stopped waiting; longwait goes on running; %nbdist kill longwait stops it" in text
        assert "Traceback" not in text and "concurrent" not in text
        page.wait_for_timeout(1500)
        assert "RUNNING" in longwait.locator(".nbdist-header").first.inner_text(), "the work must go on"
        assert _cli(app["work"], "kill", "longwait").startswith("killed longwait")
        _cli(app["work"], "kill", "single")
