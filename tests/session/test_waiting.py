"""A waiter pays no fixed poll period: while someone waits, the session polls often (real processes)."""

from __future__ import annotations

import statistics
import time

import nbdist
from nbdist import Session, State


def test_a_waited_job_is_noticed_soon_after_it_ends(tmp_path):
    # With no one waiting the poller has backed off to 0.5 s by then: the end could be noticed ~0.5 s late.
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        assert session.submit("true", name="warm").wait(30) is State.DONE  # the backend is up
        late = []
        for _ in range(3):
            submitted = time.perf_counter()
            job = session.submit("sleep 1.5", name="sleeper")
            time.sleep(0.8)
            assert job.wait(30) is State.DONE
            late.append(time.perf_counter() - submitted - job.usage["wall_s"])
        assert max(late) < 0.2, f"noticed up to {max(late):.3f} s after the job ended"


def test_round_trips_of_a_python_call_are_short(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session, \
            nbdist.Executor(session=session) as pool:
        assert pool.submit(abs, -1).result(30) == 1  # the backend and its consumers are up
        trips = []
        for _ in range(10):
            started = time.perf_counter()
            assert pool.submit(abs, -2).result(30) == 2
            trips.append(time.perf_counter() - started)
        # 20 ms locally on a quiet machine (benchmarks/python_map.py); loose here for a busy one.
        assert statistics.median(trips) < 0.1, f"median round trip {statistics.median(trips) * 1000:.0f} ms"


def test_a_failing_poll_is_retried_after_half_a_second_however_often_it_is_woken(tmp_path, monkeypatch, caplog):
    # A backend that tells of every end wakes the poller at once; while its polls fail (a backend
    # that cannot be reached), the wakes must not turn into a poll each, waited on or not.
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        poller = session._poller
        polls = []

        def failing_poll() -> bool:
            polls.append(time.monotonic())
            raise OSError("the backend cannot be reached")

        monkeypatch.setattr(poller, "poll", failing_poll)
        with session.waiting():
            poller.ensure_started()
            deadline = time.monotonic() + 1.2
            while time.monotonic() < deadline:
                poller.wake()
                time.sleep(0.01)
        assert 1 <= len(polls) <= 4, f"{len(polls)} polls in 1.2 s"
        assert all(later - earlier >= 0.45 for earlier, later in zip(polls, polls[1:])), polls
        assert "retrying in 0.5 s" in caplog.text
