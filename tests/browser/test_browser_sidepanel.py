"""The jobs overview in a JupyterLab side panel (issue 19), in a real JupyterLab and headless Chromium.

``%nbdist show --side`` opens the panel; it lists a job another kernel (another process on the same
registry) starts afterwards, follows it while it runs, and a click on its row opens its dashboard in
the panel — beside the notebook, not in a cell, so it stays while the notebook scrolls.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_servers import KERNEL_IDLE, UI_TIMEOUT_MS, browser, notebook_server

pytestmark = pytest.mark.browser

ROOT = ".nbdist-side"
CELLS = [
    "%load_ext nbdist\nimport nbdist\n"
    f"nbdist.set_default_session(nbdist.Session(root={ROOT!r}, parallelism=2))",
    "%nbdist show --side",
]
# Another kernel: a session on the same registry runs a three-step array, one step at a time.
OTHER_KERNEL = textwrap.dedent(
    f"""
    import sys
    from nbdist import Session

    with Session(root={ROOT!r}, parallelism=1) as session:
        elsewhere = session.array("sleep 2", steps=3, name="elsewhere")
        print("submitted", flush=True)
        elsewhere.wait(120)
    """
)
PANEL = "#jp-right-stack"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # JupyterLab only: Notebook 7's notebook page has no side area for a sidecar (the panel does not
    # open there; the README says to use %nbdist show).
    with notebook_server("lab", tmp_path_factory, "side.ipynb", CELLS) as server:
        yield server


def test_the_overview_lives_in_a_side_panel(lab: dict[str, Any]) -> None:
    with browser() as page:
        page.goto(lab["notebook_url"])
        page.wait_for_function(KERNEL_IDLE, timeout=UI_TIMEOUT_MS)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel = page.locator(PANEL)
        panel.locator(".nbdist-overview-box").first.wait_for()
        # The cell says where the overview went; the overview itself is not in the notebook.
        page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output", has_text="side panel").wait_for()
        assert page.locator(".jp-Notebook .nbdist-overview-box").count() == 0

        other = subprocess.Popen([sys.executable, "-c", OTHER_KERNEL], cwd=lab["work"], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert other.stdout.readline().strip() == "submitted"
            row = panel.locator(".nbdist-overview-row", has_text="elsewhere")
            row.wait_for()  # another kernel's job, found by the panel's re-read of the registry
            row.locator("text=RUNNING").first.wait_for()
            row.locator("text=DONE 3").first.wait_for()  # it follows the job to its end
            row.click()
            dashboard = panel.locator(".nbdist-dashboard").first
            dashboard.wait_for()
            assert "elsewhere" in dashboard.inner_text()
            assert other.wait(60) == 0
        finally:
            other.kill()
            other.stdout.close()
