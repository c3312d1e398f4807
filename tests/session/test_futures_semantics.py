"""``nbdist.Executor``'s futures keep ``concurrent.futures``' meaning, with real processes.

The checks CPython's own executor tests make (``test_concurrent_futures``: cancel of a pending and of a
running future, ``cancelled()``, ``CancelledError`` from ``result()`` and ``exception()``, ``wait`` and
``as_completed`` with cancelled futures, ``shutdown(cancel_futures=True)``, callbacks called once),
and a stress test that ``done()`` True means ``result(timeout=0)`` answers. nbdist's one chosen
difference: ``cancel()`` of a running call kills it and returns True (a cancelled future), where
``ProcessPoolExecutor`` returns False and lets it run.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from pathlib import Path

import psutil
import pytest

import nbdist
from nbdist import Session, State

CancelledError = concurrent.futures.CancelledError


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=1, root=str(tmp_path / "root")) as session:
        yield session


@pytest.fixture
def pool(session):
    with nbdist.Executor(session=session) as pool:
        yield pool


def _running(job, seconds=20.0):
    deadline = time.monotonic() + seconds
    while job.state is not State.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state is State.RUNNING
    return job


def _sleeper(pool, seconds=30):
    return _running(pool.submit(time.sleep, seconds))


def test_cancel_of_a_queued_future_makes_it_cancelled_and_it_never_runs(pool, tmp_path):
    blocker = _sleeper(pool)  # parallelism=1: what follows waits in the queue
    marker = tmp_path / "ran"
    queued = pool.submit(Path.touch, marker)
    assert queued.state in (State.PENDING, State.QUEUED)
    called = []
    queued.add_done_callback(called.append)

    assert queued.cancel() is True
    assert queued.cancelled() and queued.done() and not queued.running()
    assert called == [queued]  # once, with a cancelled future
    assert queued.cancel() is True and called == [queued]  # cancelling again: True, no second call
    for ask in (queued.result, queued.exception):
        with pytest.raises(CancelledError):
            ask(timeout=0)
        with pytest.raises(CancelledError):
            ask()
    late = []
    queued.add_done_callback(late.append)  # added after it was cancelled: called at once
    assert late == [queued]

    blocker.cancel()
    assert blocker.wait(10) is State.KILLED
    assert queued.wait(10) is State.KILLED and "cancelled before it started" in queued.message
    time.sleep(0.3)
    assert not marker.exists()  # nothing ran

    finished = pool.submit(abs, -3)
    assert finished.result(30) == 3
    assert finished.cancel() is False and not finished.cancelled() and finished.result(0) == 3


def test_cancel_of_a_running_call_kills_it_and_the_future_is_cancelled(pool, tmp_path):
    pid_file = tmp_path / "pid"

    def record_pid_then_sleep():
        partial = pid_file.with_suffix(".partial")  # renamed into place: never read half-written
        partial.write_text(str(os.getpid()))
        partial.replace(pid_file)
        time.sleep(30)

    job = _running(pool.submit(record_pid_then_sleep))
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(pid_file.read_text())

    started = time.monotonic()
    assert job.cancel() is True
    assert job.cancelled() and job.done() and not job.running()  # at once, while the process may still die
    with pytest.raises(CancelledError):
        job.result(timeout=0)
    with pytest.raises(CancelledError):
        job.exception(timeout=0)
    assert job.wait(10) is State.KILLED and time.monotonic() - started < 5  # wait(): until it is gone
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert job.cancelled() and job.cancel() is True  # the record's KILLED does not turn it into a failure


def test_wait_and_as_completed_return_cancelled_futures(pool):
    blocker = _sleeper(pool)
    queued = [pool.submit(abs, -n) for n in range(4)]
    for future in queued[:2]:
        assert future.cancel()

    done, not_done = concurrent.futures.wait(queued, timeout=0)
    assert done == set(queued[:2]) and not_done == set(queued[2:])
    done, _ = concurrent.futures.wait(queued, timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
    assert set(queued[:2]) <= done
    assert set(concurrent.futures.as_completed(queued[:2], timeout=5)) == set(queued[:2])
    assert all(future.cancelled() for future in concurrent.futures.as_completed(queued[:2], timeout=5))

    # A running call cancelled: as_completed gives it back without waiting for its process to die.
    started = time.monotonic()
    assert blocker.cancel()
    assert next(concurrent.futures.as_completed([blocker], timeout=5)) is blocker and blocker.cancelled()
    assert time.monotonic() - started < 2
    assert sorted(f.result() for f in concurrent.futures.as_completed(queued[2:], timeout=30)) == [2, 3]
    assert blocker.wait(10) is State.KILLED


def test_an_array_cancelled_before_it_ran_is_a_cancelled_future(pool):
    blocker = _sleeper(pool)
    array = pool.array(abs, [-1, -2, -3])
    assert array.cancel() is True
    assert array.cancelled() and array.done() and not array.running()
    with pytest.raises(CancelledError):
        array.result(0)
    with pytest.raises(CancelledError):
        array.results(0)
    assert array.wait(10) is State.KILLED
    blocker.cancel()
    blocker.wait(10)


def test_shutdown_cancel_futures_cancels_what_has_not_started(session):
    pool = nbdist.Executor(session=session)
    blocker = _running(pool.submit(time.sleep, 1))
    queued = [pool.submit(abs, -n) for n in range(3)]
    values = pool.map(abs, [-1, -2, -3], chunksize=1)
    called = []
    for future in queued:
        future.add_done_callback(called.append)

    pool.shutdown(wait=True, cancel_futures=True)
    assert blocker.result(0) is None  # the running call ran to its end
    assert all(future.cancelled() for future in queued)
    assert sorted(map(id, called)) == sorted(map(id, queued))  # each callback once
    for future in queued:
        with pytest.raises(CancelledError):
            future.result(0)
    with pytest.raises(CancelledError):  # as ProcessPoolExecutor.map after shutdown(cancel_futures=True)
        list(values)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, 1)


def test_a_retry_reopens_a_cancelled_future_and_callbacks_are_not_called_again(pool):
    blocker = _sleeper(pool)
    queued = pool.submit(abs, -7)
    called = []
    queued.add_done_callback(called.append)
    assert queued.cancel() and queued.cancelled() and called == [queued]
    blocker.cancel()
    assert queued.wait(10) is State.KILLED

    queued.retry()  # the one documented way back: a new attempt of a finished job
    assert not queued.cancelled() and queued.result(30) == 7 and called == [queued]


def test_a_callback_that_raises_is_logged_and_the_others_still_run(pool, caplog):
    blocker = _sleeper(pool)
    queued = pool.submit(abs, -1)
    seen = []

    def boom(future):
        raise ValueError(f"bad callback, cancelled={future.cancelled()}")

    queued.add_done_callback(boom)
    queued.add_done_callback(seen.append)
    with caplog.at_level(logging.ERROR, logger="nbdist"):
        assert queued.cancel() is True
    assert seen == [queued] and queued.cancelled()
    assert "exception calling callback" in caplog.text and "cancelled=True" in caplog.text
    blocker.cancel()
    blocker.wait(10)


@pytest.mark.parametrize("kind", ["call", "shell"])
def test_done_means_result_with_no_wait_answers(session, pool, kind):
    """Spin on done(); the moment it is True, result(timeout=0) must answer (never TimeoutError).

    Before, done() read the record, which turns terminal a registry write before the Future is settled:
    2-4 of 60 such tries raised TimeoutError.
    """
    failures = []
    tries = 60
    for n in range(tries):
        future = pool.submit(abs, -n) if kind == "call" else session.submit("true", name=f"t{n}")
        while not future.done():
            pass
        try:
            future.result(timeout=0)
            assert future.exception(timeout=0) is None
        except concurrent.futures.TimeoutError:
            failures.append(n)
    assert not failures, f"{len(failures)} of {tries}: done() was True and result(timeout=0) timed out"
