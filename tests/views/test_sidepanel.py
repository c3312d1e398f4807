"""``%nbdist show --side``: the overview in a sidecar panel, and the one line where there can be none.

The panel itself is tested in a real JupyterLab (tests/browser/test_browser_sidepanel.py); here the
kernel's side: which widget goes where, one panel per kernel, and the fallbacks.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from IPython.core.error import UsageError

from nbdist.views import sidepanel


def _shown(ip: Any, line: str, capsys: pytest.CaptureFixture[str]) -> str:
    ip.run_line_magic("nbdist", line)
    return capsys.readouterr().out


def test_the_overview_goes_to_one_sidecar_panel_per_kernel(ip, session, capsys):
    from sidecar import Sidecar

    session.submit("echo hi", name="hello").wait(10)
    out = _shown(ip, "show --side", capsys)
    first = sidepanel._current
    assert isinstance(first, sidepanel.SidePanel) and isinstance(first.panel, Sidecar)
    assert "side panel 'nbdist jobs'" in out and "%nbdist show" in out
    assert [handle.name for handle in first.overview.handles] == ["hello"]
    assert first.panel.title == "nbdist jobs"
    # The overview was displayed into the panel (an Output widget), not into the cell.
    assert first.panel.outputs and "application/vnd.jupyter.widget-view+json" in first.panel.outputs[0]["data"]
    # Again, with a job's name: the old panel is closed, the new one opens that job's dashboard.
    _shown(ip, "show --side hello", capsys)
    second = sidepanel._current
    assert second is not first and first.panel.comm is None  # closed: its panel is gone from the page
    assert second.overview.opened is not None and second.overview.opened.handle.name == "hello"
    second.close()


def test_an_unknown_name_is_one_line_and_opens_no_panel(ip, session):
    before = sidepanel._current
    with pytest.raises(UsageError, match="nosuchjob"):
        ip.run_line_magic("nbdist", "show --side nosuchjob")
    assert sidepanel._current is before


@pytest.mark.parametrize("why", ["vscode", "no sidecar"])
def test_where_there_is_no_side_panel_the_overview_is_shown_in_the_cell(ip, session, capsys, monkeypatch, why):
    if why == "vscode":
        monkeypatch.setenv("VSCODE_PID", "4242")
        expected = "VS Code's notebooks have no side panels"
    else:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sidecar" else real(name, *a))
        expected = "needs the sidecar package"
    before = sidepanel._current
    out = _shown(ip, "show --side", capsys)
    assert expected in out and "the overview is shown here" in out
    assert sidepanel._current is before  # no panel was made
