"""Issue 18 point 4, the kernel's side: a dashboard is displayed as its picture, then the live widget as an
output of its own, and the picture (not the widget) is what becomes the final drawing. What the front end
does with them (JupyterLab, Notebook 7; a restart; a notebook reopened) is in tests/browser/test_browser_fallback.py."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from nbdist import Session
from nbdist.views import widget as widget_module
from nbdist.views.widget import FALLBACK_CSS, WIDGET_MIME, Dashboard


def test_a_dashboard_is_its_picture_then_its_widget_and_the_end_updates_the_picture(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[dict[str, Any], dict[str, Any]]] = []
    updated: list[tuple[dict[str, Any], dict[str, Any]]] = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append((obj, kw)))
    monkeypatch.setattr("IPython.display.update_display", lambda obj, **kw: updated.append((obj, kw)))
    monkeypatch.setattr("IPython.get_ipython", lambda: type("Kernel", (), {"kernel": object()})())
    with Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        array = session.array("sleep 0.3", steps=2, name="pic")
        dashboard = Dashboard(array, session=session)
        try:
            dashboard._ipython_display_()
            (picture, picture_kw), (live, live_kw) = shown
            assert set(picture) == {"text/plain", "text/html"} and picture_kw["display_id"] == dashboard.display_id
            assert picture["text/html"].startswith(FALLBACK_CSS)
            assert 'class="nbdist-snapshot nbdist-picture"' in picture["text/html"]
            assert list(live) == [WIDGET_MIME] and live[WIDGET_MIME]["model_id"] == dashboard.widget.model_id
            assert "display_id" not in live_kw  # the widget's output is never replaced
            array.wait(timeout=30)
            dashboard.tick()
            (final, final_kw), = updated
            assert final_kw["display_id"] == dashboard.display_id and WIDGET_MIME not in final
            assert "DONE 2" in final["text/plain"] and "nbdist-picture" in final["text/html"]
        finally:
            dashboard.close()


def test_the_css_shows_the_dashboard_while_live_and_the_picture_otherwise() -> None:
    rules = FALLBACK_CSS.removeprefix("<style>").removesuffix("</style>").split("}")
    hide_picture, hide_widget = (rule for rule in rules if rule)
    assert hide_picture.startswith(".jp-OutputArea-child:has(.nbdist-picture):has(+ ")
    assert ".nbdist-dashboard:not(.jupyter-widgets-disconnected)" in hide_picture  # only a live dashboard
    # The widget's output goes when it shows the renderer's error or a dead kernel's dashboard.
    assert ":has(> .jupyter-widgets)" in hide_widget
    assert ":has(.nbdist-dashboard.jupyter-widgets-disconnected)" in hide_widget
    assert "<" not in FALLBACK_CSS[len("<style>"):-len("</style>")]  # the nbval sanitizer's regex relies on it
    assert widget_module.WIDGET_MIME == "application/vnd.jupyter.widget-view+json"
