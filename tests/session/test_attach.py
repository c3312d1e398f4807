"""The registry survives the kernel: attach after a SIGKILL, and two processes on one registry."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import nbdist
from nbdist import Session, State
from nbdist.session import defaults

KERNEL = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        root, workdir = sys.argv[1], sys.argv[2]
        session = Session(parallelism=2, root=root)
        done = session.submit("echo finished", name="done")
        done.wait(10)
        failed = session.submit("echo oops >&2; exit 7", name="failed")
        failed.wait(10)
        running = session.submit(f"echo $$ > {workdir}/task.pid; exec sleep 60", name="running")
        blocker = session.submit("sleep 60", name="blocker")
        queued = session.submit("sleep 60", name="queued")
        pending = session.submit("echo never", name="pending", after=[running])
        arr = session.array("exit 0", steps=3, name="arr")
        while running.state is not running.state.RUNNING or blocker.state is not blocker.state.RUNNING:
            time.sleep(0.02)
        time.sleep(0.3)  # one more poll: the registry has them RUNNING
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def fresh_default():
    nbdist.set_default_session(None)
    yield
    session = defaults.current_default()
    if session is not None:
        session.close()
    nbdist.set_default_session(None)


def test_attach_after_the_kernel_is_sigkilled(tmp_path, fresh_default):
    root = str(tmp_path / "root")
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    kernel = subprocess.Popen([sys.executable, str(script), root, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline().strip() == "ready"
        tree = psutil.Process(kernel.pid).children(recursive=True)
        task_pid = int((tmp_path / "task.pid").read_text())
        assert task_pid in {proc.pid for proc in tree}
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
    finally:
        kernel.kill()
        kernel.stdout.close()
    # No orphan keeps running: the consumers notice their kernel is gone and kill their tasks.
    assert _wait_for(lambda: not any(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                                     for proc in tree if _exists(proc))), [p.pid for p in tree if _exists(p)]

    session = nbdist.attach(root)
    assert nbdist.default_session() is session
    names = [job.name for job in session.jobs()]
    assert names == ["done", "failed", "running", "blocker", "queued", "pending", "arr"]
    done = session.get("done")
    assert done.state is State.DONE and done.exit_code == 0 and done.stdout() == "finished\n"
    failed = session.get("failed")
    assert failed.state is State.FAILED and failed.exit_code == 7 and failed.stderr() == "oops\n"
    running = session.get("running")
    assert running.state is State.KILLED and "ended" in running.message and str(kernel.pid) in running.message
    assert session.get("queued").state is State.KILLED
    assert session.get("pending").wait(5) is State.SKIPPED
    assert all(job.done() for job in session.jobs())
    snap = session.snapshot("arr")
    assert snap.total == 3 and snap.all_terminal


def _exists(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_attach_keeps_history_of_a_closed_session(tmp_path, fresh_default):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as first:
        job = first.submit("echo one; exit 1", name="flaky", max_attempts=2)
        job.wait(10)
        arr = first.array("echo {{x}}", over={"x": ["a", "b"]}, name="sweep")
        arr.wait(10)
    again = nbdist.attach(root)
    flaky = again.get("flaky")
    assert flaky.state is State.FAILED and [a.number for a in flaky.attempts] == [1, 2]
    assert flaky.usage["wall_s"] >= 0 and flaky.attempts[0].usage["wall_s"] >= 0
    sweep = again.get("sweep")
    assert sweep.params == [{"x": "a"}, {"x": "b"}] and [step.stdout() for step in sweep] == ["a\n", "b\n"]
    retried = flaky.retry()
    assert retried.wait(10) is State.FAILED and len(flaky.attempts) == 3


OTHER = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        with Session(parallelism=2, root=sys.argv[1]) as session:
            quick = session.submit("echo quick", name="quick")
            slow = session.submit("sleep 60", name="slow")
            quick.wait(10)
            print("ready", flush=True)
            print(slow.wait(30).value, flush=True)
            sys.stdin.readline()
    """
)


def test_two_processes_share_one_registry(tmp_path, fresh_default):
    root = str(tmp_path / "root")
    script = tmp_path / "other.py"
    script.write_text(OTHER)
    other = subprocess.Popen([sys.executable, str(script), root], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        mine = nbdist.attach(root)
        local = mine.submit("echo mine", name="mine")
        assert local.wait(10) is State.DONE
        quick, slow = mine.get("quick"), mine.get("slow")
        assert quick.state is State.DONE and quick.stdout() == "quick\n"
        assert _wait_for(lambda: slow.state is State.RUNNING)
        slow.cancel()  # the other process owns it: it gets a request through the registry
        assert other.stdout.readline().strip() == "KILLED"
        assert slow.wait(5) is State.KILLED
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(10) == 0
    finally:
        other.kill()
        other.stdout.close()
        other.stdin.close()


def test_attach_sees_a_retried_dependent_as_it_ran(tmp_path, fresh_default):
    root = str(tmp_path / "root")
    marker = tmp_path / "ok"
    with Session(parallelism=2, root=root) as first:
        base = first.submit(f"test -e {marker}", name="base")
        child = first.array("echo child $NBDIST_STEP", steps=2, name="child", after=[base])
        assert child.wait(10) is State.SKIPPED
        marker.touch()
        base.retry()
        assert child.wait(10) is State.DONE
    again = nbdist.attach(root)
    child = again.get("child")
    assert child.state is State.DONE and [step.stdout() for step in child] == ["child 0\n", "child 1\n"]
    assert again.get("base").attempts[-1].state is State.DONE


def test_which_sessions_count_as_alive():
    import socket

    from nbdist.session.ownership import session_alive

    me = psutil.Process()
    here = {"host": socket.gethostname(), "pid": me.pid, "create_time": me.create_time(), "closed": None}
    assert session_alive(here)
    assert not session_alive({**here, "closed": time.time()})
    assert not session_alive({**here, "create_time": me.create_time() - 100})  # the pid was reused
    assert not session_alive(None)
    elsewhere = {"host": "another-node", "pid": 1, "create_time": 0, "closed": None}
    assert session_alive({**elsewhere, "heartbeat": time.time() - 5})
    assert not session_alive({**elsewhere, "heartbeat": time.time() - 3600})


def test_scaled_resources_survive_attach(tmp_path, fresh_default):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as first:
        job = first.submit("sleep 5", name="slow", runtime=0.5)
        assert job.wait(10) is State.TIMEOUT
        job.retry()
        assert job.wait(10) is State.TIMEOUT and job.attempts[-1].resources["runtime"] == 1
    again = nbdist.attach(root)
    slow = again.get("slow")
    slow.retry()  # scaled from the last attempt's 1 s, not from the first 0.5 s
    assert slow.attempts[-1].number == 3 and slow.attempts[-1].resources["runtime"] == 2
    slow.cancel()
    assert slow.wait(10) is State.KILLED


def test_a_registry_without_scales_gets_the_default_scales(tmp_path, fresh_default, monkeypatch):
    import json
    import sqlite3

    from nbdist.session.records import DEFAULT_SCALES

    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as first:
        assert first.submit("true", name="old").wait(10) is State.DONE
    db = sqlite3.connect(f"{root}/registry.db")
    with db:  # a registry written before scales were stored with the job
        (spec,) = db.execute("SELECT spec FROM jobs").fetchone()
        db.execute("UPDATE jobs SET spec = ?", (json.dumps({k: v for k, v in json.loads(spec).items()
                                                             if k != "scales"}),))
    db.close()
    again = nbdist.attach(root)
    assert again.get("old").record.scales == DEFAULT_SCALES


ORPHAN_KERNEL = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        root, marker = sys.argv[1], sys.argv[2]
        session = Session(parallelism=2, root=root)
        running = session.submit("exec sleep 60", name="running")
        stuck = session.submit(f"test -e {marker} || exec sleep 60", name="stuck")
        while running.state is not running.state.RUNNING or stuck.state is not stuck.state.RUNNING:
            time.sleep(0.02)
        time.sleep(0.3)  # one more poll: the registry has them RUNNING
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_kill_or_retry_takes_over_a_job_whose_kernel_died_after_attach(tmp_path, fresh_default):
    root, marker = str(tmp_path / "root"), tmp_path / "fixed"
    script = tmp_path / "kernel.py"
    script.write_text(ORPHAN_KERNEL)
    kernel = subprocess.Popen([sys.executable, str(script), root, str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline().strip() == "ready"
        tree = psutil.Process(kernel.pid).children(recursive=True)
        # This session never looks at other kernels' jobs on its own: the kill and the retry must
        # take the orphans over themselves.
        session = nbdist.attach(root, poller_options={"registry_check_seconds": 1e9})
        # the kernel is alive: its jobs stay its own
        running, stuck = session.get("running"), session.get("stuck")
        assert running.state is State.RUNNING and stuck.state is State.RUNNING
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
    finally:
        kernel.kill()
        kernel.stdout.close()
    assert _wait_for(lambda: not any(_exists(proc) for proc in tree))

    running.cancel()
    assert running.wait(5) is State.KILLED and str(kernel.pid) in running.message
    marker.touch()
    stuck.retry()
    assert stuck.wait(10) is State.DONE and stuck.attempts[-1].number == 2
    assert session.registry.jobs()[0]["session_id"] == session.id
