"""The dashboard's pictures: timeline SVG (bars and bins), stacked bar, rates, seff line, a click on a
bar opening that step's log, the all-jobs overview, and text from users escaped everywhere.

Real sessions run real (short) steps; the SVG is parsed as XML, so a well-formed, script-free
picture is checked, not a string pattern.
"""

from __future__ import annotations

import shlex
import sys
import time
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")

import nbdist
from nbdist import Session
from nbdist.views import overview, timeline
from nbdist.views.widget import Dashboard

PYTHON = shlex.quote(sys.executable)  # this interpreter, whatever it is called

NASTY = "<script>alert('x')</script> & \"q\""
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def session(tmp_path):
    with Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        yield session


def _svg(text: str) -> ET.Element:
    start = text.index("<svg")
    return ET.fromstring(text[start:text.index("</svg>") + len("</svg>")])


def test_timeline_bars_escape_parameters_and_name_each_step(session) -> None:
    array = session.array('echo "$p"; test $NBDIST_STEP -ne 1', over=[{"p": NASTY}, {"p": "ok"}, {"p": "&amp;"}],
                          name="esc")
    array.wait(timeout=30)
    snap = session.snapshot(array)
    svg = timeline.timeline_svg(snap)
    assert "<script" not in svg
    root = _svg(svg)  # well formed
    rects = [rect for rect in root.iter(f"{SVG}rect") if rect.get("data-pick") is not None]
    assert sorted(rect.get("data-pick") for rect in rects) == ["0", "1", "2"]
    titles = {rect.get("data-pick"): rect.find(f"{SVG}title").text for rect in rects}
    assert titles["0"].startswith("step 0 · DONE") and titles["0"].endswith(f"p={NASTY}")  # the text, unescaped by XML
    assert titles["1"].startswith("step 1 · FAILED") and titles["2"].endswith("p=&amp;")
    fills = {group.get("class"): group.get("fill") for group in root.iter(f"{SVG}g") if group.get("class")}
    assert fills["nbdist-tl-done"] == timeline.GROUP_COLORS["done"]
    assert fills["nbdist-tl-failed"] == timeline.GROUP_COLORS["failed"]


def test_binned_timeline_of_a_large_array_stays_small(session) -> None:
    array = session.array("true", steps=2000, name="many")
    array.wait(timeout=120)
    snap = session.snapshot(array)
    assert snap.progress.timeline.binned
    svg = timeline.timeline_svg(snap)
    assert len(svg.encode()) < 20_000
    root = _svg(svg)
    picks = [rect.get("data-pick") for rect in root.iter(f"{SVG}rect") if rect.get("data-pick")]
    assert picks and all(0 <= int(step) < 2000 for step in picks)
    assert root.find(f"{SVG}path") is not None


def test_stacked_bar_rates_and_efficiency_line() -> None:
    bar = timeline.stacked_bar_html({"DONE": 6, "FAILED": 2, "RUNNING": 1, "QUEUED": 1}, 10)
    assert 'title="done 6" style="width:60.00%' in bar and 'title="failed 2" style="width:20.00%' in bar
    assert 'title="running 1"' in bar and 'title="queued 1"' in bar

    class P:
        throughput_per_min, eta_s = 12.5, 185.0

    assert timeline.rates_text(P()) == "12.5 steps/min · ETA 3m05s"


def test_dashboard_draws_pictures_and_a_click_opens_that_steps_log(session) -> None:
    array = session.array('echo "out of $NBDIST_STEP"; sleep 0.$NBDIST_STEP', steps=4, name="pick", memory="2G")
    dashboard = Dashboard(array, session=session)
    try:
        array.wait(timeout=30)
        dashboard.refresh()
        assert "<svg" in dashboard.pictures.timeline.value
        assert "efficiency of 4 attempts" in dashboard.pictures.efficiency.value
        assert "hint: asked for 2048 MB per step" in dashboard.pictures.efficiency.value
        assert 'title="done 4"' in dashboard.pictures.bar.value
        # The browser sends {"pick": "<data-pick>"} when a bar is clicked (anywidget's model.send).
        dashboard.pictures.timeline._handle_custom_msg({"pick": "2"}, None)
        assert dashboard.snapshot.log_step == 2 and "out of 2" in dashboard.snapshot.stdout_tail
        dashboard.pictures.timeline._handle_custom_msg({"pick": "not a step"}, None)  # ignored
        assert dashboard.snapshot.log_step == 2
        bundle = dashboard._repr_mimebundle_()
        assert "<svg" in bundle["text/html"] and "<script" not in bundle["text/html"]
        assert "efficiency of 4 attempts" in bundle["text/html"]
    finally:
        dashboard.close()


def test_running_rows_show_live_cpu_and_the_header_rates(session) -> None:
    array = session.array(f'{PYTHON} -c "import time\nt = time.time()\nwhile time.time() - t < 3: pass"',
                          steps=6, name="live")  # 3 waves on 2 cores: rates show between the first end and the last
    dashboard = Dashboard(array, session=session)
    try:
        def running_with_cpu() -> list[str]:
            return [label for label, _ in dashboard.rows.options if "RUNNING" in label and "CPU " in label]

        # Each consumer samples its task once a second, each on its own clock: wait for a running row
        # with its CPU, not for the first row to have one.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not running_with_cpu():
            time.sleep(0.3)
            dashboard.refresh()
        assert running_with_cpu()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not dashboard.pictures.rates.value:
            time.sleep(0.3)
            dashboard.refresh()
        assert "steps/min · ETA" in dashboard.pictures.rates.value
        array.cancel()
    finally:
        dashboard.close()


def test_overview_lists_jobs_of_another_session_sharing_the_root(tmp_path) -> None:
    root = str(tmp_path / ".nbdist")
    with Session(root=root) as mine, Session(root=root) as other:
        mine.submit("true", name="mine").wait(timeout=30)
        other.array("echo", steps=3, name="theirs").wait(timeout=30)
        view = overview.Overview([mine])
        try:
            names = {handle.name: handle.owned for handle in view.handles}
            assert names == {"mine": True, "theirs": False}
            text = overview.overview_text(view.handles)
            assert "theirs *" in text and "DONE 3" in text
            assert "(other kernel)" in view.list.value and 'data-pick="' in view.list.value
            theirs = next(handle for handle in view.handles if handle.name == "theirs")
            view.open(str(theirs.id))
            assert view.opened.handle.name == "theirs"
            # A job the other session submits later shows up on a later refresh.
            other.submit("true", name="later").wait(timeout=30)
            view.loaded = 0.0
            assert view.changed()  # the resting overview wakes up ...
            view.refresh()  # ... and its next refresh lists the new job
            assert "later" in {handle.name for handle in view.handles}
        finally:
            view.opened.close()


def test_show_without_a_job_is_the_overview(tmp_path) -> None:
    with Session(root=str(tmp_path / ".nbdist")) as session:
        nbdist.set_default_session(session)
        try:
            session.submit("true", name="one").wait(timeout=30)
            view = nbdist.show()
            assert isinstance(view, overview.Overview) and [h.name for h in view.handles] == ["one"]
        finally:
            nbdist.set_default_session(None)


def test_overview_of_many_jobs_escapes_and_is_fast() -> None:
    class Fake:
        def __init__(self, i: int) -> None:
            self.id, self.name, self.owned = i, f"job{i}<b>&", i % 2 == 0
            self.state = nbdist.State.DONE

    handles = [Fake(i) for i in range(200)]
    start = time.thread_time()
    page = overview.overview_html(handles)
    assert time.thread_time() - start < 0.05
    assert "<b>&" not in page and "job7&lt;b&gt;&amp;" in page


def test_nbdist_show_without_a_name_displays_the_overview(tmp_path, monkeypatch, capsys) -> None:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nbdist")
    monkeypatch.chdir(tmp_path)
    magics = shell.magics_manager.registry["NbdistMagics"]
    session = Session(root=str(tmp_path / ".nbdist"))
    magics.sessions.use(session)
    try:
        session.array("true", steps=2, name="listed").wait(timeout=30)
        capsys.readouterr()
        shell.run_line_magic("nbdist", "show")
        out = capsys.readouterr().out
        assert "listed" in out and "DONE 2" in out  # the overview's text drawing (no frontend here)
    finally:
        magics.sessions.current().close()
        magics.sessions.close_all()
        nbdist.set_default_session(None)
        session.close()
