"""What a new user hit (issue 14), through IPython's magics on real processes: one-line results of
kill and retry, the live dashboard while a wait blocks and one line on interrupt, parameter columns
and their filter, QUEUED reasons, status listings with ids and submit times, newest first."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError


pytest.importorskip("ipywidgets")


@pytest.fixture()
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Everything the magics display (the dashboards, the status tables)."""
    from nbdist.views import magics

    items: list[Any] = []
    monkeypatch.setattr(magics, "display", lambda item, **kw: items.append(item))
    return items


def test_kill_and_retry_say_what_they_did(ip: Any, session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    runners = session.array("sleep 60", steps=3, name="runners")
    ip.run_line_magic("nbdist", "kill runners")
    out = capsys.readouterr().out
    assert out.startswith(f"killed 3 of 3 steps of runners (id {runners.id}): steps 0, 1, 2"), out
    assert out.count("\n") == 1
    runners.wait(10)
    ip.run_line_magic("nbdist", "kill runners")
    assert capsys.readouterr().out.startswith("nothing to kill: every step of runners")
    # Retry leaves the user's KILLED steps alone unless asked, and says so.
    ip.run_line_magic("nbdist", "retry runners")
    out = capsys.readouterr().out
    assert out.startswith("nothing to retry in runners") and "--killed" in out, out
    flaky = session.array("exit $((NBDIST_STEP % 2))", steps=4, name="flaky")
    flaky.wait(20)
    ip.run_line_magic("nbdist", "retry flaky")
    assert capsys.readouterr().out == f"retrying 2 of 4 steps of flaky (id {flaky.id}): steps 1, 3\n"
    flaky.wait(20)
    job = session.submit("exit 3", name="once")
    job.wait(10)
    ip.run_line_magic("nbdist", "retry once")
    assert capsys.readouterr().out == f"retrying once (id {job.id}) (after FAILED): attempt 2\n"
    job.wait(10)
    ip.run_line_magic("nbdist", "retry runners --killed")
    assert capsys.readouterr().out.startswith("retrying 3 of 3 steps of runners")
    ip.run_line_magic("nbdist", "kill runners:1")
    assert capsys.readouterr().out.startswith("killed runners:1")
    session.get("runners").cancel()


def test_wait_shows_the_dashboard_and_an_interrupt_is_one_line(ip: Any, session: Any, shown: list[Any]) -> None:
    from nbdist.views.widget import Dashboard

    # Interrupt the wait from another thread as Jupyter's interrupt does: SIGINT to the kernel process.
    timer = threading.Timer(2.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("submit", "--name slow --array 4 --wait", "sleep 30")
    timer.join()
    assert time.monotonic() - started < 10
    # Past the first second, the live dashboard was displayed: it refreshed while the cell blocked.
    assert len(shown) == 1 and isinstance(shown[0], Dashboard)
    assert shown[0].refreshes >= 2, "the dashboard must refresh while the wait blocks"
    message = str(info.value)
    assert "\n" not in message and message == "stopped waiting; slow goes on running; %nbdist kill slow stops it"
    slow = session.get("slow")
    assert not slow.done(), "the work goes on after the wait is interrupted"
    # %nbdist wait: the same.
    timer = threading.Timer(2.0, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    with pytest.raises(UsageError, match="^stopped waiting; slow goes on running"):
        ip.run_line_magic("nbdist", "wait slow")
    timer.join()
    assert len(shown) == 2 and not slow.done()
    slow.cancel()
    slow.wait(10)
    shown[0].close()
    shown[1].close()


def test_a_wait_over_in_a_blink_shows_only_the_end(ip: Any, session: Any, shown: list[Any]) -> None:
    ip.run_cell_magic("submit", "--name quick --wait", "echo hi")
    (dashboard,) = shown
    assert dashboard.snapshot.all_terminal and "hi" in dashboard.stdout.value
    ip.run_line_magic("nbdist", "wait quick")
    assert len(shown) == 1  # nothing left to follow live
    dashboard.close()


def test_parameter_columns_and_filter(ip: Any, session: Any, shown: list[Any]) -> None:
    grid = session.array("echo {{lr}} {{depth}}", over={"lr": [0.1, 0.01], "depth": [2, 4]}, name="grid")
    grid.wait(20)
    ip.run_line_magic("nbdist", "status grid")
    text = shown[-1]["text/plain"]
    header = next(line for line in text.splitlines() if "state" in line)
    assert header.split()[-3:] == ["lr", "depth", "message"]
    rows = [line.split() for line in text.splitlines() if line.strip().split()[:1] in (["0"], ["1"], ["2"], ["3"])]
    assert [tuple(row[6:8]) for row in rows] == [("0.1", "2"), ("0.1", "4"), ("0.01", "2"), ("0.01", "4")]
    assert "<th" in shown[-1]["text/html"] and ">lr</th>" in shown[-1]["text/html"]
    ip.run_line_magic("nbdist", "status grid --where lr=0.01")
    filtered = [line.split() for line in shown[-1]["text/plain"].splitlines() if "DONE" in line.split()[1:2]]
    assert [row[6:8] for row in filtered] == [["0.01", "2"], ["0.01", "4"]]
    assert "where lr=0.01" in shown[-1]["text/plain"]
    with pytest.raises(UsageError, match="no parameter 'rate'; parameters: lr, depth"):
        ip.run_line_magic("nbdist", "status grid --where rate=1")
    from nbdist.views.widget import Dashboard

    dashboard = Dashboard(grid, session=session)
    assert "lr" in dashboard.columns.value and "depth" in dashboard.columns.value
    dashboard.where_text.value = "depth=4"
    assert [row.params for row in dashboard.snapshot.rows] == [{"lr": 0.1, "depth": 4}, {"lr": 0.01, "depth": 4}]
    dashboard.close()


def test_queued_says_why(session: Any) -> None:
    hog = session.array("sleep 30", steps=2, name="hog")
    deadline = time.monotonic() + 20
    while session.snapshot(hog).counts["RUNNING"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = session.submit("echo hi", name="waiting")
    time.sleep(0.5)
    snap = session.snapshot(waiting)
    assert snap.counts["QUEUED"] == 1
    assert snap.reason == f"slots busy: 2 of 2 cores running — hog (id {hog.id}): 2"
    from nbdist.views import render

    assert "QUEUED: slots busy" in render.snapshot_text(snap) and "QUEUED: slots busy" in render.header_html(snap)
    after = session.submit("echo later", name="later", after=[waiting])
    assert session.snapshot(after).reason == f"waiting for waiting (id {waiting.id}, QUEUED)"
    hog.cancel()
    session.get("later").wait(20)
    capped = session.array("sleep 0.5", steps=4, name="capped", max_concurrent=1)
    deadline = time.monotonic() + 20
    while session.snapshot(capped).counts["RUNNING"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert session.snapshot(capped).reason == "max_concurrent=1: 1 of its steps running"
    capped.wait(30)
    assert session.snapshot(capped).reason is None


def test_status_lists_ids_and_times_newest_first(ip: Any, session: Any, shown: list[Any]) -> None:
    for _ in range(2):
        session.submit("true", name="echo").wait(10)
    session.submit("true", name="many").wait(10)
    ip.run_line_magic("nbdist", "status")
    lines = shown[-1]["text/plain"].splitlines()
    assert lines[0].split()[:2] == ["id", "submitted"]
    ids = [int(line.split()[0]) for line in lines[1:]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert [line.split()[4] for line in lines[1:]] == ["many", "echo", "echo"]
    # The unknown-name hint: newest first, including the job just made.
    with pytest.raises(UsageError, match=r"\(known: many, echo\)"):
        ip.run_line_magic("nbdist", "show nosuch")


def test_forget_removes_rows_and_files_never_a_live_jobs(ip: Any, session: Any, capsys: pytest.CaptureFixture[str],
                                                          shown: list[Any]) -> None:
    done = session.array("echo {{x}}", over={"x": [1, 2]}, name="done")
    done.wait(20)
    live = session.submit("sleep 30", name="live")
    logs = Path(session.root) / "logs"
    assert (logs / "done").is_dir()
    ip.run_line_magic("nbdist", "forget done")
    assert capsys.readouterr().out == f"forgot done (id {done.id}): 6 files removed\n"  # 4 logs, manifest, scripts
    assert not (logs / "done").exists()
    assert not list((Path(session.root) / "scripts").glob(f"{done.id}"))
    with pytest.raises(UsageError, match="no job or array named 'done'"):
        ip.run_line_magic("nbdist", "show done")
    with pytest.raises(UsageError, match="has unfinished steps .* kill it first"):
        ip.run_line_magic("nbdist", "forget live")
    assert (logs / "live").is_dir()
    live.cancel()
    live.wait(10)
    ip.run_line_magic("nbdist", "status --all")
    assert "done" not in shown[-1]["text/plain"] and "live" in shown[-1]["text/plain"]
