"""A Python call is typed end to end: the record carries it, the registry keeps it, the backend runs it warm.

Real sessions and processes: a retried map step (which once got a shell prologue that silently sent
it cold through ``/bin/sh``) runs in a warm worker; the registry row keeps the call so an attached
session finds its results; ``max_calls_per_worker`` and ``pre_import`` reach the workers.
"""

from __future__ import annotations

import os
import sys

import pytest

import nbdist
from nbdist import Session, State
from nbdist.cluster_protocol.pycall import PythonCall

WORKER_MODULE = "nbdist.backends._task.callworker"


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=1, root=str(tmp_path / "root")) as session:
        yield session


def test_a_retried_map_step_runs_warm_with_its_own_item(session, tmp_path):
    marker = tmp_path / "tried"

    def flaky(x):
        if x == 2 and not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first attempt")
        return x * 10, WORKER_MODULE in sys.modules, os.getpid()

    array = nbdist.Executor(session=session, max_attempts=2).array(flaky, [1, 2, 3])
    values = array.results(timeout=60)
    assert [value for value, _, _ in values] == [10, 20, 30]
    assert array[1].attempts[0].state is State.FAILED and len(array[1].attempts) == 2
    assert all(warm for _, warm, _ in values)  # the retry too: no shell, no cold interpreter
    assert len({pid for _, _, pid in values}) == 1  # parallelism 1: one worker made every call


def test_the_record_and_the_registry_carry_the_call_as_data(session):
    job = nbdist.Executor(session=session).submit(pow, 2, 10)
    assert job.result(timeout=60) == 1024
    call = job.record.call
    assert isinstance(call, PythonCall) and call.items is None and job.record.command == call.command()
    [(spec,)] = session.registry.query("SELECT spec FROM jobs WHERE id = ?", (job.record.id,))
    assert '"call"' in str(spec)
    with nbdist.attach(session.root) as attached:
        again = attached.get(job.record.name)
        assert again.record.call == call and again.result(timeout=30) == 1024


def test_max_calls_per_worker_per_executor_gives_a_fresh_interpreter_per_call(session):
    reused = [job.result(timeout=60) for job in [nbdist.Executor(session=session).submit(os.getpid)
                                                 for _ in range(3)]]
    assert len(set(reused)) == 1
    with nbdist.Executor(session=session, max_calls_per_worker=1) as fresh_pool:
        fresh = list(fresh_pool.map(lambda _: os.getpid(), range(3)))
    assert len(set(fresh)) == 3 and not set(fresh) & set(reused)
    with pytest.raises(ValueError, match="max_calls_per_worker"):
        nbdist.Executor(session=session, max_calls_per_worker=0).submit(os.getpid)


def test_session_options_reach_the_workers(tmp_path):
    with Session(parallelism=1, root=str(tmp_path / "root"), pre_import=["json.tool"], max_calls_per_worker=2) as session:
        jobs = [nbdist.Executor(session=session).submit(lambda: (os.getpid(), "json.tool" in sys.modules))
                for _ in range(3)]
        values = [job.result(timeout=60) for job in jobs]
    assert all(loaded for _, loaded in values)
    assert values[0][0] == values[1][0] != values[2][0]
