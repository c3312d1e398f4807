"""The overview of every job in a JupyterLab side panel: ``%nbdist show --side``, ``nbdist.show(side=True)``.

The panel is a ``sidecar`` output (the Jupyter widgets project's own side-panel widget, a prebuilt
JupyterLab 4 extension installed with ``nbdist[jupyter]``): it stays beside the notebook while the
notebook scrolls, lists every job of the registry like ``%nbdist show``, and a click on a job opens
its dashboard in the panel. A kernel has one panel: showing it again replaces the old one.

Where a side panel cannot be drawn the overview is shown in the cell instead, with one line that
says why: ``sidecar`` not installed, or VS Code (its notebook editor has no JupyterLab side areas,
and its widget renderer has no sidecar view). Notebook 7's notebook page has no side area either and
the kernel cannot tell which front end draws it, so the cell's line names ``%nbdist show``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from .overview import Overview

__all__ = ["PANEL_TITLE", "SidePanel", "show_side", "side_panel_unavailable"]

PANEL_TITLE = "nbdist jobs"
_current: SidePanel | None = None


def side_panel_unavailable() -> str | None:
    """Why the overview cannot go to a side panel here, or None when it can."""
    if os.environ.get("VSCODE_PID") or os.environ.get("VSCODE_CWD"):
        return "VS Code's notebooks have no side panels: the overview is shown here"
    if importlib.util.find_spec("sidecar") is None:
        return "a side panel needs the sidecar package (pip install 'nbdist[jupyter]'): the overview is shown here"
    return None


class SidePanel:
    """The overview, drawn in a sidecar panel; what a cell shows of it is one line saying where it is."""

    def __init__(self, sessions: Sequence[Any]) -> None:
        from sidecar import Sidecar

        self.overview = Overview(sessions)
        self.panel = Sidecar(title=PANEL_TITLE, anchor="right")
        # Set on the kernel's side (not captured from a display in a `with` block): the panel shows
        # the overview whichever cell, thread or front end is current.
        self.panel.append_display_data(self.overview)

    def close(self) -> None:
        """Remove the panel (its overview stops being drawn: nothing shows it any more)."""
        if self.overview.opened is not None and hasattr(self.overview.opened, "close"):
            self.overview.opened.close()
        self.overview.widget.close()
        self.panel.close()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        text = (f"every job of the registry is listed in the side panel {PANEL_TITLE!r} (JupyterLab; "
                "Notebook 7's notebook page has no side area: %nbdist show draws the list here)")
        return {"text/plain": text, "text/html": f"<i>{text}</i>"}


def show_side(sessions: Sequence[Any]) -> Any:
    """Open (or replace) this kernel's side panel of every job; where there can be none, the inline overview."""
    global _current
    reason = side_panel_unavailable()
    if reason is not None:
        from IPython.display import display

        display({"text/plain": reason}, raw=True)
        return Overview(sessions)
    if _current is not None:
        _current.close()
    _current = SidePanel(sessions)
    return _current
