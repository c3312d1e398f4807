"""Dependencies and retries with resource scaling, with real processes."""

from __future__ import annotations

import shlex
import sys
import time

import pytest

from nbdist import Session, State


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


def test_dependent_waits_pending_until_dependency_done(session, tmp_path):
    flag = tmp_path / "flag"
    first = session.submit(f"sleep 0.4; touch {flag}", name="first")
    second = session.submit(f"test -e {flag}", name="second", after=[first])
    assert second.state is State.PENDING and second.log_paths is None
    time.sleep(0.2)
    assert second.state is State.PENDING
    assert second.wait(10) is State.DONE


def test_dependency_on_array_and_by_name(session):
    arr = session.array("exit 0", steps=3, name="prep")
    job = session.submit("echo go", name="go", after="prep")
    assert job.wait(10) is State.DONE and arr.state is State.DONE


def test_failure_skips_dependents_transitively(session):
    bad = session.submit("exit 4", name="bad")
    child = session.submit("echo never", name="child", after=[bad])
    grandchild = session.array("echo never", steps=2, name="grandchild", after=[child])
    assert grandchild.wait(10) is State.SKIPPED
    assert child.state is State.SKIPPED and "dependency bad ended FAILED" in child.message
    assert "dependency child ended SKIPPED" in grandchild[0].message
    assert grandchild.counts()["SKIPPED"] == 2


def test_dependency_on_one_step(session):
    arr = session.array("exit {{step}}", steps=2, name="mixed")
    ok = session.submit("echo ok", name="ok", after=[arr[0]])
    skipped = session.submit("echo no", name="no", after=[arr[1]])
    assert ok.wait(10) is State.DONE and skipped.wait(10) is State.SKIPPED


def test_unknown_and_cyclic_dependencies_are_errors(session):
    with pytest.raises(ValueError, match="no job or array named 'ghost'"):
        session.submit("echo", name="x", after=["ghost"])
    with pytest.raises(ValueError, match="cycle"):
        session.submit("echo", name="loop", after=["loop"])
    assert session.jobs() == []


def test_cancel_pending_skips_dependents(session):
    blocker = session.submit("sleep 30", name="blocker")
    waiting = session.submit("echo", name="waiting", after=[blocker])
    after_waiting = session.submit("echo", name="after-waiting", after=[waiting])
    assert waiting.cancel()
    assert waiting.state is State.KILLED
    assert after_waiting.wait(5) is State.SKIPPED
    blocker.cancel()
    assert blocker.wait(5) is State.KILLED


def test_retry_after_timeout_scales_runtime(session):
    job = session.submit("sleep 0.8", name="slow", runtime=0.5, max_attempts=2)
    assert job.wait(15) is State.DONE
    attempts = job.attempts
    assert [a.state for a in attempts] == [State.TIMEOUT, State.DONE]
    assert attempts[0].resources["runtime"] == 0.5 and attempts[1].resources["runtime"] == 1  # ceil(0.5 × 1.5)
    assert attempts[0].log_paths != attempts[1].log_paths
    assert job.message == "exit code 0"


def test_retry_after_out_of_memory_scales_memory(session):
    grow = f"{shlex.quote(sys.executable)} -c \"import os, time; b = bytearray(int(os.environ['MB']) * 2**20); time.sleep(0.5)\""
    job = session.submit(grow, name="hungry", memory="60M", max_attempts=3, env={"MB": "70"},
                         resource_scales={"memory": 2})
    assert job.wait(20) is State.DONE
    attempts = job.attempts
    assert attempts[0].state is State.OUT_OF_MEMORY
    assert attempts[1].resources["memory"] == 120


def test_failed_attempts_keep_their_own_logs(session, tmp_path):
    counter = tmp_path / "count"
    job = session.submit(f"echo run >> {counter}; n=$(wc -l < {counter}); echo attempt $n; test $n -ge 3",
                         name="flaky", max_attempts=3)
    assert job.wait(10) is State.DONE
    attempts = job.attempts
    assert [a.state for a in attempts] == [State.FAILED, State.FAILED, State.DONE]
    assert [_read(a.log_paths.stdout) for a in attempts] == ["attempt 1\n", "attempt 2\n", "attempt 3\n"]
    assert job.stdout() == "attempt 3\n"


def test_manual_retry_and_retry_failed(session, tmp_path):
    marker = tmp_path / "fixed"
    arr = session.array(f"test $NBDIST_STEP -eq 0 || test -e {marker}", steps=3, name="fixme")
    assert arr.wait(10) is State.FAILED
    assert [job.step for job in arr.failed()] == [1, 2]
    marker.touch()
    retried = arr.retry_failed()
    assert [job.step for job in retried] == [1, 2]
    assert not arr.done()
    assert arr.wait(10) is State.DONE and arr.result(1) is arr
    assert arr[1].attempts[-1].number == 2
    with pytest.raises(ValueError, match="only finished steps"):
        session.submit("sleep 5", name="busy").retry()


def test_retry_revives_skipped_dependents(session, tmp_path):
    marker = tmp_path / "ok"
    base = session.submit(f"test -e {marker}", name="base")
    child = session.submit("echo child", name="child", after=[base])
    assert child.wait(10) is State.SKIPPED
    marker.touch()
    base.retry()
    assert child.state is State.PENDING
    assert child.wait(10) is State.DONE


def test_a_lost_attempt_is_retried(session, tmp_path):
    import os
    import signal

    marker, ppid = tmp_path / "ran-once", tmp_path / "consumer.pid"
    job = session.submit(f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; echo $PPID > {ppid}; sleep 30",
                         name="lost-once", max_attempts=2)
    deadline = time.monotonic() + 10
    while not (ppid.exists() and ppid.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(int(ppid.read_text()), signal.SIGKILL)  # the consumer running it dies: the attempt is lost
    assert job.wait(15) is State.DONE
    attempts = job.attempts
    assert [a.state for a in attempts] == [State.LOST, State.DONE]
    assert "consumer" in attempts[0].message


def test_manual_retry_with_explicit_scales(session):
    job = session.submit("exit 1", name="scaled", memory="100M", runtime="10s")
    assert job.wait(10) is State.FAILED
    job.retry(scale={"memory": 2, "runtime": 3})
    assert job.wait(10) is State.FAILED
    first, second = job.attempts
    assert first.resources == {"cores": 1, "memory": "100M", "runtime": "10s"}
    assert second.resources == {"cores": 1, "memory": 200, "runtime": 30}
    job.retry(scale=2.0)  # a plain factor scales what the failure calls for: nothing after exit 1
    assert job.wait(10) is State.FAILED and job.attempts[2].resources == second.resources


def _peak(log) -> int:
    """Most steps running at once, from "start T" / "end T" lines."""
    events = sorted((float(time_), kind) for kind, time_ in (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


TIMED = "echo start $(date +%s.%N) >> {log}; sleep 0.3; echo end $(date +%s.%N) >> {log}; "


def test_retry_failed_respects_max_concurrent(tmp_path):
    log, marker = tmp_path / "log", tmp_path / "fixed"
    with Session(parallelism=4, root=str(tmp_path / "root")) as session:
        arr = session.array(TIMED.format(log=log) + f"test -e {marker}", steps=6, name="limited", max_concurrent=2)
        assert arr.wait(20) is State.FAILED and _peak(log) == 2
        log.unlink()
        marker.touch()
        assert len(arr.retry_failed()) == 6
        assert arr.counts()["QUEUED"] + arr.counts()["RUNNING"] == 6
        assert arr.wait(20) is State.DONE and _peak(log) == 2
        assert {job.attempts[-1].number for job in arr} == {2}


def test_automatic_retries_respect_max_concurrent(tmp_path):
    log = tmp_path / "log"
    first_time = f"mkdir {tmp_path}/s$NBDIST_STEP 2>/dev/null && exit 1; "
    with Session(parallelism=4, root=str(tmp_path / "root")) as session:
        arr = session.array(TIMED.format(log=log) + first_time + "true", steps=6, name="auto", max_concurrent=2,
                            max_attempts=2)
        assert arr.wait(30) is State.DONE and _peak(log) == 2
        assert {job.attempts[-1].number for job in arr} == {2}


def test_cancel_drops_retries_held_by_max_concurrent(tmp_path):
    # The retried attempt sleeps: an instant one could end FAILED before the cancel reaches it.
    first_time = f"mkdir {tmp_path}/s$NBDIST_STEP 2>/dev/null && exit 1; "
    with Session(parallelism=4, root=str(tmp_path / "root")) as session:
        arr = session.array(first_time + "sleep 30", steps=4, name="held", max_concurrent=1)
        assert arr.wait(10) is State.FAILED
        arr.retry_failed()
        assert arr.cancel()
        assert arr.wait(10) is State.KILLED and arr.counts()["KILLED"] == 4


def test_a_retried_step_has_a_plain_jobs_identity(session, tmp_path):
    import sys

    marker = tmp_path / "fixed"
    whoami = f"{sys.executable} -c 'from nbdist.multiprocess import MultiprocessWorkerNode as W; print(W().distributor_id)'"
    arr = session.array(f"{whoami}; echo step $ARRAY_STEP_ID $NBDIST_STEP; test -e {marker}", steps=range(5, 7),
                        name="who")
    assert arr.wait(10) is State.FAILED
    assert arr[1].stdout() == f"{arr[1].distributor_id}\nstep 1 6\n"
    marker.touch()
    arr.retry_failed()
    assert arr.wait(10) is State.DONE
    # The retry is a plain job for the backend: its worker node says so; $ARRAY_STEP_ID still expands.
    assert "_" not in arr[1].distributor_id
    assert arr[1].stdout() == f"{arr[1].distributor_id}\nstep 1 6\n"
