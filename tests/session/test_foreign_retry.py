"""A finished job that another live kernel retries: this kernel's handle, snapshot and dashboard follow it.

Two real processes on one registry: kernel B (a subprocess) owns an array that has finished, one step
FAILED; this process (kernel A) attached and shows it. B retries the failed step; A must see it QUEUED or
RUNNING again, then its new outcome — without A doing anything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

import nbdist
from nbdist import State
from nbdist.session import defaults

# Step 1 fails until the marker exists; a retry then runs ~1.5 s, so a poll of A sees it live.
KERNEL_B = textwrap.dedent(
    """
    import sys
    from nbdist import Session

    if __name__ == "__main__":
        root, marker = sys.argv[1], sys.argv[2]
        with Session(parallelism=2, root=root) as session:
            arr = session.array(f"test {{{{x}}}} = 0 || {{ test -e {marker} && sleep 1.5 && echo again; }} || exit 3",
                                over={"x": [0, 1]}, name="flaky")
            print(arr.wait(30).value, flush=True)
            sys.stdin.readline()  # A looks at the finished array
            if sys.argv[3] == "retry":
                handle = arr[1]
            else:  # the other way in: B attaches to a job of a session that has since closed
                second = Session(parallelism=2, root=root).attach()
                handle = second.get("old")
            handle.retry()
            print(handle.wait(30).value, flush=True)
            sys.stdin.readline()
    """
)


@pytest.fixture
def fresh_default():
    nbdist.set_default_session(None)
    yield
    session = defaults.current_default()
    if session is not None:
        session.close()
    nbdist.set_default_session(None)


def _states_until_terminal(handle, timeout: float = 20.0) -> list[State]:
    """The states ``handle`` shows, polled every 20 ms, from now until it is terminal after a live one."""
    seen: list[State] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = handle.state
        if not seen or seen[-1] is not state:
            seen.append(state)
        if state.is_terminal and any(not s.is_terminal for s in seen):
            break
        time.sleep(0.02)
    return seen


def test_a_retry_by_another_live_kernel_reopens_this_kernels_finished_handle(tmp_path, fresh_default):
    pytest.importorskip("ipywidgets")
    from nbdist.views.widget import Dashboard

    root, marker = str(tmp_path / "root"), tmp_path / "fixed"
    script = tmp_path / "kernel_b.py"
    script.write_text(KERNEL_B)
    other = subprocess.Popen([sys.executable, str(script), root, str(marker), "retry"], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
    session = None
    try:
        assert other.stdout.readline().strip() == "FAILED"
        session = nbdist.attach(root)
        arr = session.get("flaky")
        assert arr.done() and arr[1].done() and arr[1].state is State.FAILED
        with pytest.raises(Exception):
            arr[1].result(timeout=0)  # a settled failure, as B left it
        dashboard = Dashboard(arr, session=session)  # dormant: every step is terminal
        before = session.version(arr)
        marker.touch()
        other.stdin.write("go\n")
        other.stdin.flush()
        seen = _states_until_terminal(arr[1])
        assert seen[0] is State.FAILED and seen[-1] is State.DONE, seen
        assert State.QUEUED in seen or State.RUNNING in seen, seen
        assert other.stdout.readline().strip() == "DONE"
        # The handle was reopened and settled again: its Future holds the new outcome.
        assert arr.wait(10) is State.DONE and arr[1].result(timeout=5) is arr[1]
        assert arr[1].stdout() == "again\n" and len(arr[1].attempts) == 2
        assert session.version(arr) > before
        assert session.snapshot(arr).counts["DONE"] == 2
        # The dormant dashboard woke up and drew the new outcome.
        deadline = time.monotonic() + 10
        while dashboard.snapshot.counts["DONE"] != 2:
            assert time.monotonic() < deadline, dashboard.snapshot.counts
            time.sleep(0.05)
        assert dashboard.snapshot.rows[1].attempt == 2
        dashboard.close()
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(10) == 0
    finally:
        other.kill()
        other.stdout.close()
        other.stdin.close()
        if session is not None:
            session.close()


def test_a_finished_orphan_retried_by_another_kernel_is_followed_there(tmp_path, fresh_default):
    """B takes over a closed session's finished job to retry it: A follows it, and asks B, not the dead owner."""
    root, marker = str(tmp_path / "root"), tmp_path / "fixed"
    with nbdist.Session(parallelism=2, root=root) as first:
        assert first.submit(f"test -e {marker} && sleep 1.5 && echo again || exit 3", name="old").wait(10) \
            is State.FAILED
    script = tmp_path / "kernel_b.py"
    script.write_text(KERNEL_B)
    other = subprocess.Popen([sys.executable, str(script), root, str(marker), "take-over"], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
    session = None
    try:
        assert other.stdout.readline().strip() == "FAILED"
        session = nbdist.attach(root)
        old = session.get("old")
        assert old.state is State.FAILED and old.done()
        marker.touch()
        other.stdin.write("go\n")
        other.stdin.flush()
        seen = _states_until_terminal(old)
        assert State.QUEUED in seen or State.RUNNING in seen, seen
        assert other.stdout.readline().strip() == "DONE"
        assert seen[-1] is State.DONE and old.wait(10) is State.DONE and old.stdout() == "again\n"
        # B's session owns it now, and this session knows: it never claimed it itself.
        owner = session.registry.jobs([old.record.id])[0]["session_id"]
        assert old.record.session_id == owner != session.id
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(10) == 0
    finally:
        other.kill()
        other.stdout.close()
        other.stdin.close()
        if session is not None:
            session.close()
