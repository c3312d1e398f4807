"""Issue 18 point 1: a Job or Array shown as a cell's value is its dashboard, and a blocking
``Executor.map`` shows what a blocking ``results()`` shows (one dashboard of the array, drawn at its end)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import nbdist
from nbdist.views import display as handle_display

WAIT_S = 60
WIDGET = "application/vnd.jupyter.widget-view+json"


def slow(x: int) -> int:
    import time

    time.sleep(1.6)
    return x * 10


def negate(x: int) -> int:
    return -x


def _cell_value_outputs(ip: Any, source: str) -> list[dict[str, Any]]:
    with capture_output() as captured:
        result = ip.run_cell(source)
    result.raise_error()
    return [output.data for output in captured.outputs]


def test_a_handle_as_a_cells_value_is_its_dashboard(ip: Any, session: Any) -> None:
    array = nbdist.function(session=session, name="sim")(negate).over({"x": [-1, -2, -3]})
    job = session.submit("echo hi", name="one")
    assert array.results(timeout=WAIT_S) == [1, 2, 3] and job.wait(WAIT_S).is_terminal
    ip.user_ns.update(sim=array, one=job)
    for name, title in (("sim", "array sim"), ("one", "job one")):
        outputs = _cell_value_outputs(ip, name)
        # The dashboard (its picture, then the live widget: test_fallback.py), not the repr.
        assert [list(bundle) for bundle in outputs] == [["text/plain", "text/html"], [WIDGET]], outputs
        assert outputs[0]["text/plain"].startswith(f"{title} (id ")
        assert "100% done" in outputs[0]["text/plain"] and "nbdist-snapshot" in outputs[0]["text/html"]
    step_bundle = _cell_value_outputs(ip, "sim[1]")[0]  # a step: its array, with that step's logs
    assert step_bundle["text/plain"].startswith("array sim (id ")
    with capture_output() as captured:
        ip.run_cell("display(sim)")
    assert [WIDGET in output.data for output in captured.outputs] == [False, True]
    # The text repr is unchanged, and is what a plain Python prompt shows.
    assert repr(array) == f"<Array {array.id} 'sim' DONE [DONE=3]>"


def test_the_handle_types_are_where_the_formatter_looks_for_them() -> None:
    assert {(cls.__module__, cls.__name__) for cls in (nbdist.Job, nbdist.Array)} == set(handle_display.HANDLE_TYPES)


def test_import_nbdist_inside_ipython_registers_the_dashboard_and_outside_does_nothing() -> None:
    inside = ("import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
              "shell = InteractiveShell.instance()\n"
              "import nbdist\n"
              "printers = shell.display_formatter.ipython_display_formatter.deferred_printers\n"
              "print(sorted(name for _, name in printers))\n"
              "print('nbdist.session' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", inside], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["['Array',", "'Job']", "False"]  # by name: the session is not imported yet
    outside = "import sys, nbdist; print('nbdist.session' in sys.modules, 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", outside], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False False"  # a task process pays nothing for it


@pytest.fixture
def live_views(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The dashboards the waits show; the refresher slowed down, so what they draw at the end is the
    wait's own drawing, not a refresh that happened to come after it."""
    views: list[Any] = []
    make = handle_display.live_view

    def record(handle: Any) -> Any:
        view = make(handle)
        views.append(view)
        return view

    monkeypatch.setattr(handle_display, "live_view", record)
    monkeypatch.setattr("nbdist.views.refresher.REFRESH_SECONDS", 120.0)
    return views


def test_a_blocking_map_shows_one_dashboard_of_the_array_drawn_at_its_end(ip: Any, session: Any,
                                                                           live_views: list[Any]) -> None:
    with capture_output() as captured, nbdist.Executor(session=session, name="fit") as pool:
        values = list(pool.map(slow, range(6), chunksize=1))
    assert values == [0, 10, 20, 30, 40, 50]
    assert len(live_views) == 1, [view.handle for view in live_views]  # not one per slow step
    view = live_views[0]
    assert view.handle.name == "fit" and len(view.handle) == 6 and view.preferred_step is None
    assert view.snapshot.all_terminal and view.percent.value == "100%"  # the end, when the cell ends
    assert [WIDGET in output.data for output in captured.outputs] == [False, True]


def test_a_blocking_results_shows_the_end_when_it_returns(ip: Any, session: Any, live_views: list[Any]) -> None:
    array = nbdist.function(session=session, name="fit")(slow).map(range(4))
    with capture_output():
        assert array.results(timeout=WAIT_S) == [0, 10, 20, 30]
    assert [view.handle for view in live_views] == [array]
    assert live_views[0].snapshot.all_terminal and live_views[0].percent.value == "100%"
    assert "4 steps · 100% done" in live_views[0]._repr_mimebundle_()["text/plain"]
