"""Session, Job and Array with real processes (multiprocess backend)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import pytest

import nbdist
from nbdist import Array, Job, JobFailed, Session, Snapshot, State, StepRow


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


def test_state_enum_maps_backend_letters():
    assert State.from_backend("D") is State.DONE
    assert State.from_backend("E", "exit code 3") is State.FAILED
    assert State.from_backend("K") is State.KILLED
    assert State.from_backend("U") is State.LOST
    assert State.from_backend("W", "could not start") is State.FAILED
    assert State.from_backend("Z", "runtime limit of 1s exceeded") is State.TIMEOUT
    assert State.from_backend("Z", "memory limit of 10M exceeded") is State.OUT_OF_MEMORY
    assert State.from_backend("Q") is State.QUEUED
    assert State.from_backend("R") is State.RUNNING
    assert State.DONE.is_terminal and State.SKIPPED.is_terminal
    assert not State.PENDING.is_terminal and not State.RUNNING.is_terminal
    assert isinstance(State.DONE, str) and State.DONE == "DONE"


def test_submit_runs_and_reports_everything(session):
    job = session.submit("echo out; echo err >&2", name="hello")
    assert isinstance(job, Job) and isinstance(job, concurrent.futures.Future)
    assert job.wait(10) is State.DONE
    assert job.done() and job.exit_code == 0
    assert job.stdout() == "out\n" and job.stderr() == "err\n"
    assert job.usage["wall_s"] >= 0 and "max_rss_mb" in job.usage
    out, err = job.log_paths
    assert out.startswith(os.path.join(session.root, "logs", "hello"))
    assert os.path.exists(out) and os.path.exists(err)
    assert job.result(1) is job
    assert [a.state for a in job.attempts] == [State.DONE]
    assert session.get("hello") is job and session.get(job.id) is job


def test_failed_job_raises_from_result_with_log_hint(session):
    job = session.submit("echo boom >&2; exit 3", name="bad")
    with pytest.raises(JobFailed) as info:
        job.result(10)
    assert job.state is State.FAILED and job.exit_code == 3
    assert "exit code 3" in str(info.value) and job.log_paths.stderr in str(info.value)
    assert job.stderr(tail=1) == "boom\n"


def test_futures_wait_and_as_completed_and_callbacks(session):
    jobs = [session.submit(f"sleep 0.{i}; exit {i % 2}", name=f"f{i}") for i in range(4)]
    seen = []
    jobs[0].add_done_callback(lambda job: seen.append(job.state))
    done, not_done = concurrent.futures.wait(jobs, timeout=10)
    assert len(done) == 4 and not not_done
    assert {job.name for job in concurrent.futures.as_completed(jobs, timeout=10)} == {f"f{i}" for i in range(4)}
    assert [job.exception() is None for job in jobs] == [True, False, True, False]
    assert seen == [State.DONE]


def test_job_is_awaitable_in_a_running_loop(session):
    async def main():
        ok = await session.submit("exit 0", name="aw")
        with pytest.raises(JobFailed):
            await session.submit("exit 1", name="aw2")
        return ok

    job = asyncio.run(asyncio.wait_for(main(), 10))
    assert job.state is State.DONE


def test_array_steps_and_counts(session):
    arr = session.array("echo step $NBDIST_STEP {{step}} $ARRAY_STEP_ID", steps=range(10, 14), name="arr")
    assert isinstance(arr, Array) and len(arr) == 4
    assert arr.wait(10) is State.DONE
    assert arr.counts()["DONE"] == 4 and sum(arr.counts().values()) == 4
    assert set(arr.counts()) == {state.value for state in State}
    assert arr[1].stdout() == "step 11 11 1\n"
    assert arr.step(13).name == "arr:13" and arr.step(13).id == f"{arr.id}:13"
    assert session.get("arr:12") is arr[2]
    assert [job.step for job in arr] == [10, 11, 12, 13]


def test_cancel_kills_running_and_drops_queued(session):
    arr = session.array("sleep 30", steps=6, name="long")
    deadline = time.monotonic() + 5
    while arr.counts()["RUNNING"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert arr.cancel()
    assert arr.wait(5) is State.KILLED
    assert time.monotonic() - started < 4
    assert arr.counts()["KILLED"] == 6
    with pytest.raises(concurrent.futures.CancelledError):  # the Array's Future was cancelled
        arr.result(0)
    with pytest.raises(JobFailed):  # its steps were killed (their own cancel() was not called)
        arr[0].result(0)


def test_snapshot_shape(session):
    arr = session.array("echo {{x}}; exit {{code}}", over=[{"x": "a", "code": 0}, {"x": "b", "code": 2}], name="snap")
    arr.wait(10)
    snap = session.snapshot(arr)
    assert isinstance(snap, Snapshot) and snap.kind == "array" and snap.total == 2
    assert snap.counts["DONE"] == 1 and snap.counts["FAILED"] == 1 and snap.all_terminal
    assert snap.done_fraction == 1.0 and snap.pages == 1
    assert all(isinstance(row, StepRow) for row in snap.rows)
    assert snap.log_step == 1 and snap.stdout_tail == "b\n"
    assert snap.failure_groups == [("FAILED: exit code 2", [1])]
    only = session.snapshot(arr, state="FAILED")
    assert [row.step for row in only.rows] == [1] and only.filter_state is State.FAILED
    job = session.submit("echo x", name="one")
    job.wait(10)
    single = session.snapshot("one")
    assert single.kind == "job" and single.rows[0].step is None and single.stdout_tail == "x\n"


def test_close_leaves_no_process_and_marks_killed(tmp_path):
    session = Session(parallelism=2, root=str(tmp_path / "r"))
    job = session.submit("sleep 30", name="sleeper")
    deadline = time.monotonic() + 5
    while job.state is not State.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    session.close()
    assert time.monotonic() - started < 3
    assert job.state is State.KILLED and job.done()


def test_module_level_api_is_complete():
    for name in nbdist.__all__:
        assert hasattr(nbdist, name), name
    public = {name for name in dir(nbdist) if not name.startswith("_") and callable(getattr(nbdist, name))}
    assert public - {"annotations"} <= set(nbdist.__all__)
    assert set(nbdist.__all__) <= set(dir(nbdist))


def test_a_retry_just_before_the_future_is_resolved_keeps_it_pending(session, tmp_path, monkeypatch):
    marker = tmp_path / "fixed"
    job = session.submit(f"test -e {marker}", name="raced")
    write, retried = session.registry.write, []

    def retry_in_between(*args):
        # The poller recorded FAILED and has not resolved the Future yet: a retry comes in just now.
        if job.state is State.FAILED and not retried:
            retried.append(True)
            marker.touch()
            job.retry()
        return write(*args)

    monkeypatch.setattr(session.registry, "write", retry_in_between)
    assert job.result(10) is job and retried
    assert [attempt.state for attempt in job.attempts] == [State.FAILED, State.DONE]


def test_resolving_from_many_threads_finishes_the_future_once(session):
    import sys
    import threading

    old_interval = sys.getswitchinterval()
    job = session.submit("exit 3", name="once")
    assert job.wait(10) is State.FAILED
    errors: list[BaseException] = []
    calls: list[int] = []
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for round_ in range(300):
            job.reopen()  # what the session does for a retry
            job.add_done_callback(lambda _job, round_=round_: calls.append(round_))
            barrier = threading.Barrier(4)

            def resolve():
                barrier.wait()
                try:
                    job.finish_from_record()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=resolve) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert not errors and calls == list(range(300))
    assert isinstance(job.exception(0), JobFailed)
