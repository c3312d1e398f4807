"""Dashboard widget: traits, escaping, paging, filtering, buttons, refresher, display bundle.

Unit tests draw snapshots from a small in-memory session (``FakeSession``: the snapshot contract of
the core, nothing else), so every trait can be asserted exactly; ``test_dashboard_with_real_session``
runs the same dashboard over real processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from ipywidgets import Widget

from nbdist import State
from nbdist.session import Snapshot, StepRow, choose_retry, retry_states
from nbdist.views import refresher
from nbdist.views import widget as widget_module
from nbdist.views.widget import Dashboard

STATES = tuple(state.value for state in State)
TERMINAL = {state.value for state in State if state.is_terminal}
XSS = "<img src=x onerror=alert(1)>"


@dataclass
class FakeJob:
    step: int
    states: list[str] = field(default_factory=list)  # the session's step states
    cancelled: int = 0
    retried: int = 0

    @property
    def state(self) -> State:
        return State(self.states[self.step])

    def cancel(self) -> bool:
        self.cancelled += 1
        return not self.state.is_terminal

    def retry(self) -> None:
        self.retried += 1


@dataclass
class FakeArray:
    """A handle: what the dashboard's buttons call."""

    jobs: list[FakeJob]
    name: str = "sweep"
    cancelled: int = 0
    retried: int = 0

    def __iter__(self) -> Any:
        return iter(self.jobs)

    def cancel(self) -> bool:
        self.cancelled += 1
        return True

    def retry_failed(self, scale: Any = None, *, killed: bool = False) -> list[FakeJob]:
        """As ``Array.retry_failed``: the session's rule chooses the steps."""
        self.retried += 1
        chosen: list[FakeJob] = choose_retry(self.failed(), killed).chosen
        for job in chosen:
            job.retry()
        return chosen

    def failed(self) -> list[FakeJob]:
        return [job for job in self.jobs if job.state.is_failure]

    def step(self, step_id: int) -> FakeJob:
        return next(job for job in self.jobs if job.step == step_id)


@dataclass
class FakeSession:
    """Snapshots of an array whose step states the test sets directly."""

    states: list[str]
    name: str = "sweep"
    kind: str = "array"
    logs: dict[int, tuple[str, str]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def snapshot(self, handle: Any, *, state: str | None = None, page: int = 0, page_size: int = 50,
                 log_step: int | None = None, tail_lines: int = 20, where: Any = None) -> Snapshot:
        self.calls.append({"state": state, "page": page, "page_size": page_size, "log_step": log_step})
        counts = {name: 0 for name in STATES}
        for value in self.states:
            counts[value] += 1
        chosen = [i for i, value in enumerate(self.states) if state is None or value == state]
        pages = max(1, -(-len(chosen) // page_size))
        rows = [StepRow(i, f"1_{i}", State(self.states[i]), 1 if self.states[i] == "FAILED" else None, 0.5, 3.0, 1,
                        "") for i in chosen[page * page_size:(page + 1) * page_size]]
        if log_step is None:  # the core's one policy (snapshot.default_log_step): failed first, then running
            log_step = next((i for wanted in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST,
                                              State.RUNNING) for i, value in enumerate(self.states)
                             if value == wanted.value), 0 if all(v in TERMINAL for v in self.states) else None)
        out, err = self.logs.get(log_step, ("", "")) if log_step is not None else ("", "")
        failed = [i for i, value in enumerate(self.states) if value == "FAILED"]
        total = len(self.states)
        finished = sum(counts[name] for name in TERMINAL)
        return Snapshot("abc123", self.name, "multiprocess", self.kind, counts, total, finished / total, 1.0,
                        finished == total, rows, page, pages, State(state) if state else None, log_step, out, err,
                        [("ValueError: boom", failed)] if failed else [], version=self.version(handle))

    def version(self, handle: Any) -> int:
        return hash(tuple(self.states))


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Widget, dict[str, Any]]]:
    """Every state message a widget sends to the front end."""
    messages: list[tuple[Widget, dict[str, Any]]] = []
    original = Widget._send

    def record(self: Widget, msg: dict[str, Any], buffers: Any = None) -> None:
        messages.append((self, msg))
        original(self, msg, buffers)

    monkeypatch.setattr(Widget, "_send", record)
    return messages


def make(states: list[str], **kw: Any) -> tuple[Dashboard, FakeSession, FakeArray]:
    session = FakeSession(list(states), **kw)
    handle = FakeArray([FakeJob(i, session.states) for i in range(len(states))])
    dashboard = Dashboard(handle, session=session)
    return dashboard, session, handle


def test_names_and_logs_are_escaped() -> None:
    dashboard, _, _ = make(["RUNNING"], name="<b>evil</b>", logs={0: (XSS + "\nok", "<script>x</script>")})
    dashboard.refresh()
    assert "&lt;b&gt;evil&lt;/b&gt;" in dashboard.header.value and "<b>evil" not in dashboard.header.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in dashboard.stdout.value and "<img" not in dashboard.stdout.value
    assert "&lt;script&gt;" in dashboard.stderr.value and "<script>" not in dashboard.stderr.value
    bundle = dashboard._repr_mimebundle_()
    assert "<img" not in bundle["text/html"] and "&lt;img" in bundle["text/html"]
    assert "<b>evil" not in bundle["text/html"]
    dashboard.close()


def test_paging_10k_steps() -> None:
    dashboard, session, _ = make(["DONE"] * 10_000)
    assert len(dashboard.rows.options) == 50
    assert dashboard.page_label.value == "page 1/200"
    assert dashboard.prev_button.disabled and not dashboard.next_button.disabled
    dashboard.next_button.click()
    assert dashboard.page == 1 and dashboard.rows.options[0][1] == 50
    assert session.calls[-1]["page"] == 1
    for _ in range(300):  # clamps at the last page
        dashboard.next_button.click()
    assert dashboard.page_label.value == "page 200/200" and dashboard.next_button.disabled
    assert dashboard.rows.options[-1][1] == 9_999
    dashboard.prev_button.click()
    assert dashboard.page == 198
    dashboard.close()


def test_filter_by_state_resets_page() -> None:
    states = ["DONE"] * 120 + ["FAILED"] * 3 + ["RUNNING"] * 2
    dashboard, session, _ = make(states)
    dashboard.next_button.click()
    dashboard.filter.value = "FAILED"
    assert session.calls[-1]["state"] == "FAILED" and dashboard.page == 0
    assert [value for _, value in dashboard.rows.options] == [120, 121, 122]
    assert all("FAILED" in label for label, _ in dashboard.rows.options)
    dashboard.filter.value = ""
    assert session.calls[-1]["state"] is None and len(dashboard.rows.options) == 50
    dashboard.close()


def test_header_progress_failures() -> None:
    dashboard, _, _ = make(["DONE"] * 3 + ["FAILED"])
    assert dashboard.progress.value == 1.0 and dashboard.percent.value == "100%"
    assert dashboard.progress.bar_style == "danger"
    assert "DONE 3" in dashboard.header.value and "FAILED 1" in dashboard.header.value
    assert "ValueError: boom" in dashboard.failures.value and "×1" in dashboard.failures.value
    assert dashboard.kill_all_button.disabled and not dashboard.retry_button.disabled


@pytest.mark.parametrize("state", list(State), ids=[state.value for state in State])
def test_retry_and_log_step_follow_the_state_module(state: State) -> None:
    dashboard, session, _ = make(["DONE", state.value])
    # "Retry failed" re-runs what failed by itself; a user's kill or a skipped dependency only when asked.
    assert dashboard.retry_button.disabled is not (state in retry_states())
    dashboard.retry_killed_box.value = True
    assert dashboard.retry_button.disabled is not state.is_failure
    # The dashboard asks for no step of its own: the snapshot's policy (failed first, then running) decides.
    assert dashboard.log_step is None and session.calls[-1]["log_step"] is None
    shown = state in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST, State.RUNNING)
    assert dashboard.snapshot.log_step == (1 if shown else 0 if state.is_terminal else None)
    dashboard.close()


def test_log_viewer_follows_running_then_selected_step() -> None:
    dashboard, session, _ = make(["DONE", "RUNNING", "QUEUED"], logs={1: ("one", ""), 2: ("two", "")})
    assert dashboard.snapshot.log_step == 1 and "one" in dashboard.stdout.value
    assert dashboard.logs.titles == ("stdout · step 1", "stderr · step 1")
    dashboard.rows.value = (2,)
    assert session.calls[-1]["log_step"] == 2 and "two" in dashboard.stdout.value
    # The selection survives refreshes that change the row labels.
    session.states[2] = "RUNNING"
    dashboard.refresh()
    assert dashboard.rows.value == (2,) and "RUNNING" in dashboard.rows.label[0]
    dashboard.close()


def test_buttons_call_the_api() -> None:
    dashboard, _, handle = make(["RUNNING", "RUNNING", "FAILED"])
    assert dashboard.kill_button.disabled
    dashboard.rows.value = (0, 1)
    assert not dashboard.kill_button.disabled
    dashboard.kill_button.click()
    assert [job.cancelled for job in handle.jobs] == [1, 1, 0]
    assert dashboard.status_label.value == "killed steps 0, 1"
    dashboard.kill_all_button.click()
    assert handle.cancelled == 1
    dashboard.retry_button.click()
    assert [job.retried for job in handle.jobs] == [0, 0, 1] and dashboard.status_label.value == "retrying step 2"
    dashboard.close()


def test_buttons_and_defaults_a_new_user_expects() -> None:
    """Issue 14 point 8: each default as the user expects it."""
    dashboard, session, handle = make(["KILLED", "RUNNING", "FAILED", "FAILED"])
    # Kill selected: disabled while only a finished step is selected.
    dashboard.rows.value = (0,)
    assert dashboard.kill_button.disabled
    dashboard.rows.value = (0, 1)
    assert not dashboard.kill_button.disabled
    dashboard.kill_button.click()
    assert dashboard.status_label.value == "killed step 1"  # "step 1", not "steps 1"
    # The status text clears after a later action (a new selection).
    dashboard.rows.value = (2,)
    assert dashboard.status_label.value == ""
    # A failed step opens on its stderr tab; a running one on stdout.
    assert dashboard.logs.selected_index == 1
    dashboard.rows.value = (1,)
    assert dashboard.logs.selected_index == 0
    # Retry failed leaves the user's KILLED step alone unless asked.
    dashboard.retry_button.click()
    assert [job.retried for job in handle.jobs] == [0, 0, 1, 1]
    assert dashboard.status_label.value == "retrying steps 2, 3"
    dashboard.retry_killed_box.value = True
    dashboard.retry_button.click()
    assert [job.retried for job in handle.jobs] == [1, 0, 2, 2]
    # The message column has a header; one failed step reads "step 3".
    assert "message" in dashboard.columns.value
    session.states[:] = ["DONE", "DONE", "DONE", "FAILED"]
    dashboard.refresh()
    assert "step 3<" in dashboard.failures.value and "steps 3" not in dashboard.failures.value
    dashboard.close()


def test_a_single_job_shows_one_kill_button() -> None:
    session = FakeSession(["RUNNING"], kind="job")
    dashboard = Dashboard(FakeArray([FakeJob(0, session.states)]), session=session)
    visible = [button.description for button in (dashboard.kill_button, dashboard.kill_all_button)
               if button.layout.display != "none"]
    assert visible == ["Kill"]
    dashboard.close()


def test_button_error_is_shown_not_raised() -> None:
    dashboard, _, handle = make(["RUNNING"])

    def broken() -> None:
        raise RuntimeError("backend gone")

    handle.cancel = broken  # type: ignore[method-assign]
    dashboard.kill_all_button.click()
    assert dashboard.status_label.value == "error: backend gone"
    dashboard.close()


def test_refresh_sends_only_changes(sent: list[tuple[Widget, dict[str, Any]]]) -> None:
    dashboard, session, _ = make(["RUNNING"] * 100)
    sent.clear()
    dashboard.refresh()
    assert sent == [], "a refresh with nothing new must send nothing"
    session.states[0] = "DONE"
    dashboard.refresh()
    changed = {key for _, msg in sent for key in msg.get("state", {})}
    assert changed <= {"value", "bar_style", "_options_labels", "options", "index", "titles"}
    assert "value" in changed
    dashboard.close()


def test_bundle_has_widget_text_and_html() -> None:
    dashboard, _, _ = make(["DONE", "DONE"])
    bundle = dashboard._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dashboard.widget.model_id
    assert bundle["text/plain"].startswith("array sweep (id abc123, multiprocess): 2 steps · 100% done")
    assert "DONE 2" in bundle["text/plain"]
    assert '<table class="nbdist-steps"' in bundle["text/html"]
    assert "var(--jp-success-color1, #388e3c)" in bundle["text/html"]


def test_refresher_stops_when_all_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresher, "REFRESH_SECONDS", 0.02)
    dashboard, session, _ = make(["RUNNING", "QUEUED"])
    assert widget_module.refresher_running()
    before = dashboard.refreshes
    time.sleep(0.3)
    assert dashboard.refreshes > before
    session.states[:] = ["DONE", "FAILED"]
    deadline = time.monotonic() + 5
    while widget_module.refresher_running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not widget_module.refresher_running()
    assert dashboard.progress.value == 1.0 and "FAILED 1" in dashboard.header.value
    # Dormant, not dead: a retry from anywhere (here: the job's states change) brings it back.
    assert widget_module.dormant_dashboards() >= 1
    refreshes = dashboard.refreshes
    time.sleep(3 * refresher.IDLE_CHECK_SECONDS)
    assert dashboard.refreshes == refreshes  # idle: no refresh at all
    session.states[:] = ["DONE", "RUNNING"]
    deadline = time.monotonic() + 5
    while "RUNNING 1" not in dashboard.header.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "RUNNING 1" in dashboard.header.value and widget_module.refresher_running()
    session.states[:] = ["DONE", "DONE"]
    deadline = time.monotonic() + 5
    while ("FAILED" in dashboard.header.value or "RUNNING" in dashboard.header.value) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "DONE 2" in dashboard.header.value
    dashboard.close()


def test_one_refresher_thread_for_many_dashboards(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(refresher, "REFRESH_SECONDS", 0.02)
    dashboards = [make(["RUNNING"])[0] for _ in range(5)]
    names = [thread.name for thread in threading.enumerate() if thread.name == "nbdist-dashboard"]
    assert names == ["nbdist-dashboard"]
    for dashboard in dashboards:
        dashboard.close()


def test_refresh_cost_10k_steps(sent: list[tuple[Widget, dict[str, Any]]]) -> None:
    """The widget's own share of a refresh of a 10k-step array (the snapshot here is a fake)."""
    import json

    dashboard, session, _ = make(["RUNNING"] * 10_000, logs={0: ("x" * 50_000, "y" * 50_000)})
    for step in range(0, 10_000, 7):
        session.states[step] = "DONE"
    sent.clear()
    dashboard.refresh()
    size = sum(len(json.dumps(msg)) for _, msg in sent)
    assert size <= 20_000, size
    assert dashboard.last_refresh_cpu_s < 0.05
    dashboard.close()


def test_dashboard_with_real_session(tmp_path: Any) -> None:
    """Real processes: live states, the log viewer, the kill and retry buttons, the refresher stopping."""
    from process_helpers import pid_alive

    import nbdist

    session = nbdist.Session(root=str(tmp_path / ".nbdist"), parallelism=3)
    try:
        # Step 1 fails; step 2 sleeps on its first attempt only, so a retry can finish it.
        marker = tmp_path / "slept"
        array = session.array(f'echo "pid $$ step $NBDIST_STEP"; test "$NBDIST_STEP" != 1 || {{ echo "no such thing" >&2; exit 7; }}; '
                              f'test "$NBDIST_STEP" != 2 || test -e {marker} || {{ touch {marker}; exec sleep 300; }}',
                              steps=3, name="real")
        dashboard = Dashboard(array, session=session)
        deadline = time.monotonic() + 30
        # Failed steps are grouped by the last line they wrote to stderr.
        while not ("RUNNING 1" in dashboard.header.value and "no such thing" in dashboard.failures.value):
            assert time.monotonic() < deadline, (dashboard.header.value, dashboard.failures.value)
            time.sleep(0.05)
        assert widget_module.refresher_running()
        step_view = Dashboard(array.step(2), session=session)
        assert step_view.handle is array and step_view.snapshot.log_step == 2
        step_view.close()
        dashboard.rows.value = (2,)
        assert "step 2" in dashboard.stdout.value
        pid = int(dashboard.stdout.value.split("pid ")[1].split()[0])
        assert pid_alive(pid)
        dashboard.kill_button.click()
        array.step(2).wait(timeout=30)
        assert array.step(2).state == nbdist.State.KILLED
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid)
        dashboard.retry_button.click()  # the FAILED step only: step 2 was killed on purpose
        assert array.wait(timeout=30).is_terminal
        assert len(array.step(1).attempts) == 2 and len(array.step(2).attempts) == 1
        dashboard.retry_killed_box.value = True
        dashboard.retry_button.click()
        assert array.wait(timeout=30).is_terminal
        assert len(array.step(1).attempts) == 3 and len(array.step(2).attempts) == 2
        # A retry from elsewhere (the API, as a magic or the CLI's request does) wakes the dormant dashboard.
        deadline = time.monotonic() + 5
        while widget_module.refresher_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        array.step(1).retry()
        deadline = time.monotonic() + 10
        while dashboard.snapshot.rows[1].attempt != 4:
            assert time.monotonic() < deadline, dashboard.snapshot.rows[1]
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while widget_module.refresher_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not widget_module.refresher_running()
        assert dashboard.progress.value == 1.0
        dashboard.close()
    finally:
        session.close()


def test_show_without_ipywidgets_draws_text_and_html(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nbdist.views.widget import show

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets now raises ImportError
    session = FakeSession(["DONE", "FAILED"], name="<i>plain</i>")
    view = show(FakeArray([FakeJob(0, session.states), FakeJob(1, session.states)]), session=session)
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "DONE 1" in bundle["text/plain"] and "&lt;i&gt;plain" in bundle["text/html"]
