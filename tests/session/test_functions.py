"""Notebook functions as jobs, with real processes: values, exceptions, the Executor, maps, attach."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest

import nbdist
from nbdist import JobFailed, RemoteError, Session, State
from nbdist.cluster_protocol.pycall import PythonCall, RemoteTraceback
from nbdist.session.outcomes import UnsafeOutcome


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


@pytest.fixture
def pool(session):
    with nbdist.Executor(session=session) as pool:
        yield pool


class NotebookError(Exception):
    """An exception type defined where the function is (travels by value or by reference)."""


class Unrebuildable(Exception):
    def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{a}-{b}")


def test_a_closure_over_a_notebook_variable_and_a_lambda_return_their_values(pool):
    offset = {"value": 100}

    def shifted(x, *, scale=1):
        return (x + offset["value"]) * scale

    job = pool.submit(shifted, 1, scale=2)
    assert job.result(timeout=30) == 202
    assert pool.submit(lambda: [os.getpid(), "λ"]).result(30)[1] == "λ"
    assert job.state is State.DONE and job.exit_code == 0 and job.name == "shifted"
    assert isinstance(job.record.call, PythonCall) and job.record.command == job.record.call.command()


def test_code_that_only_knows_concurrent_futures_runs_unchanged(pool):
    def workload(executor: concurrent.futures.Executor) -> tuple[list[int], list[int], int]:
        futures = [executor.submit(pow, 2, n) for n in range(4)]
        finished = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60))
        done, _ = concurrent.futures.wait(futures, timeout=60)
        return finished, list(executor.map(max, [1, 5, 3], [4, 2, 6])), len(done)

    assert isinstance(pool, concurrent.futures.Executor)
    assert workload(pool) == ([1, 2, 4, 8], [4, 5, 6], 4)


def test_an_exception_comes_back_as_its_type_with_the_remote_traceback(pool):
    def fails(kind):
        raise kind("bad input")

    job = pool.submit(fails, NotebookError)
    with pytest.raises(NotebookError, match="bad input") as caught:
        job.result(30)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "in fails" in caught.value.__cause__.text and "NotebookError: bad input" in job.stderr()
    assert job.state is State.FAILED and job.exit_code == 1
    assert isinstance(job.exception(), NotebookError)

    other = pool.submit(fails, lambda message: Unrebuildable(message, 2))
    with pytest.raises(RemoteError, match="Unrebuildable") as caught:
        other.result(30)
    assert caught.value.type_name.endswith("Unrebuildable")


def test_sys_exit_is_failed_with_its_code_and_a_cancelled_running_call_is_killed(pool, session):
    exits = pool.submit(sys.exit, 3)
    with pytest.raises(JobFailed) as caught:
        exits.result(30)
    assert caught.value.state is State.FAILED and exits.exit_code == 3

    sleeper = pool.submit(time.sleep, 30)
    deadline = time.monotonic() + 20
    while sleeper.state is not State.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeper.cancel() and sleeper.cancelled()  # killed, and a cancelled Future (not JobFailed)
    with pytest.raises(concurrent.futures.CancelledError):
        sleeper.result(30)
    assert sleeper.wait(30) is State.KILLED


def test_an_argument_that_cannot_be_pickled_is_refused_and_nothing_is_submitted(pool, session):
    import threading

    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.submit(print, threading.Lock())
    with pytest.raises(TypeError, match="item 1 cannot be pickled"):
        pool.array(print, [1, threading.Lock()])
    assert session.jobs() == []
    assert session.registry.query("SELECT COUNT(*) FROM jobs") == [(0,)]
    logs = os.path.join(session.root, "logs")
    assert not os.path.exists(logs) or all(not files for _, _, files in os.walk(logs))


def test_a_result_that_cannot_be_pickled_fails_the_step_with_the_reason(pool):
    import threading

    job = pool.submit(threading.Lock)
    with pytest.raises(TypeError, match="cannot be pickled"):
        job.result(30)
    assert job.state is State.FAILED


def test_map_over_items_and_a_grid_keeps_step_order_and_the_array_is_a_future(pool):
    shared = list(range(1000))  # one pickle for every step

    def scaled(x, table, *, factor):
        return x * factor + table[x]

    array = pool.array(scaled, [3, 1, 2], args=(shared,), kwargs={"factor": 10})
    assert array.results(timeout=60) == [33, 11, 22]
    assert array.result() == [33, 11, 22]
    assert asyncio.run(_awaited(array)) == [33, 11, 22]
    called = []
    array.add_done_callback(lambda handle: called.append(handle.results()))
    assert called == [[33, 11, 22]]
    assert sorted(job.result() for job in concurrent.futures.as_completed(array)) == [11, 22, 33]

    grid = pool.array(lambda lr, depth: f"{lr}/{depth}", over={"lr": [0.1, 0.01], "depth": [3]})
    assert grid.results(60) == ["0.1/3", "0.01/3"] and len(grid) == 2


async def _awaited(handle):
    return await handle


def test_a_failed_step_raises_its_exception_first_in_step_order_or_takes_its_place(pool):
    def inverse(x):
        return 1 / x

    array = pool.array(inverse, [1, 0, 2, 0])
    with pytest.raises(ZeroDivisionError):
        array.results(60)
    values = array.results(return_exceptions=True)
    assert values[0] == 1 and values[2] == 0.5
    assert isinstance(values[1], ZeroDivisionError) and isinstance(values[3], ZeroDivisionError)
    assert isinstance(array.exception(), ZeroDivisionError)
    assert array.counts()["FAILED"] == 2
    mapped = pool.map(inverse, [1, 0])
    assert next(mapped) == 1
    with pytest.raises(ZeroDivisionError):
        next(mapped)


def test_map_timeout_raises_from_the_iterator_and_cancels_steps_not_started(session):
    with nbdist.Executor(session=session, max_concurrent=1) as pool:
        values = pool.map(time.sleep, [0, 30, 30])
        started = time.monotonic()
        mapped = pool.map(time.sleep, [5, 30], timeout=0.5)
        with pytest.raises(TimeoutError):
            list(mapped)
        assert time.monotonic() - started < 5
        values.close()  # leaving the iterator cancels what has not started
        for array in session.jobs():
            array.cancel()


def test_options_never_collide_with_the_functions_own_keywords(session):
    @nbdist.function(session=session, name="opts", cores=1, runtime="1m")
    def described(*, name, cores, memory="none", after=None):
        return f"{name}:{cores}:{memory}:{after}"

    assert described(name="local", cores=7) == "local:7:none:None"  # a plain call runs here
    job = described.submit(name="remote", cores=9, memory="64G", after="x")
    assert job.result(30) == "remote:9:64G:x"
    assert job.name == "opts" and job.record.resources["cores"] == 1
    assert described.over({"name": ["m"], "after": [1]}, cores=2).results(30) == ["m:2:none:1"]


def test_decorated_map_and_over(session):
    @nbdist.function(session=session)
    def power(base, exponent=2, *, plus=0):
        return base ** exponent + plus

    assert power.map([2, 3], 3, plus=1).results(60) == [9, 28]
    assert power.over({"base": [2, 3], "exponent": [1, 2]}, plus=0).results(60) == [2, 4, 3, 9]
    assert power.submit(5).result(30) == 25


def test_module_level_call_and_map_use_the_default_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbdist.set_default_session(None)
    try:
        assert nbdist.call(divmod, 7, 2).result(30) == (3, 1)
        assert nbdist.map(abs, [-1, -2]).results(60) == [1, 2]
        assert nbdist.default_session().root == str(tmp_path / ".nbdist")
    finally:
        nbdist.default_session().close()
        nbdist.set_default_session(None)


def test_shutdown_waits_cancels_what_has_not_started_and_refuses_new_work(session):
    pool = nbdist.Executor(session=session, max_concurrent=1)
    first = pool.submit(time.sleep, 0.5)
    array = pool.array(time.sleep, [0.5, 30, 30])
    deadline = time.monotonic() + 20
    while State.QUEUED in (first.state, array[0].state) and time.monotonic() < deadline:
        time.sleep(0.02)
    pool.shutdown(wait=True, cancel_futures=True)  # what runs goes on; what waits is dropped
    assert first.state is State.DONE
    assert array[0].state is State.DONE and {array[1].state, array[2].state} == {State.KILLED}
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, 1)


def test_live_output_without_pythonunbuffered(session, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    with Session(parallelism=1, root=session.root + "-live") as live:

        def talk():
            print("first line")
            time.sleep(20)

        job = nbdist.Executor(session=live).submit(talk)
        deadline = time.monotonic() + 15
        while "first line" not in job.stdout() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.stdout() == "first line\n" and not job.done()  # printed while it runs, not at its end
        job.cancel()


def test_an_outcome_that_links_outside_the_log_folder_is_never_unpickled(pool, session, tmp_path):
    job = pool.submit(abs, -4)
    assert job.result(30) == 4
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(b"V" + pickle.dumps(_Boom(str(marker))))
    outcome = _outcome_file(job)
    os.unlink(outcome)
    os.symlink(evil, outcome)
    with pytest.raises(UnsafeOutcome, match="outside the session's log folder"):
        job.result()
    assert not marker.exists()


class _Boom:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _outcome_file(job) -> str:
    return job.record.call.result_path(job.distributor_id)


ATTACHED = textwrap.dedent("""
    import sys, nbdist
    session = nbdist.attach(sys.argv[1])
    job = session.get("answer")
    print(repr(job.result(timeout=30)), job.state.value)
    try:
        session.get("broken").result(timeout=30)
    except ValueError as exc:
        print("raised", type(exc).__name__, exc, type(exc.__cause__).__name__)
    print(session.get("squares").results(timeout=30))
    session.close()
""")


def test_results_come_back_after_attach_in_a_new_process(tmp_path):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as first:
        pool = nbdist.Executor(session=first)

        def broken():
            raise ValueError("from the first kernel")

        jobs = [nbdist.Executor(session=first, name="answer").submit(lambda: {"answer": 42}),
                nbdist.Executor(session=first, name="broken").submit(broken),
                nbdist.Executor(session=first, name="squares").array(lambda x: x * x, [1, 2, 3])]
        concurrent.futures.wait(jobs, timeout=60)
        del pool
    done = subprocess.run([sys.executable, "-c", ATTACHED, root], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'answer': 42} DONE",
                                        "raised ValueError from the first kernel RemoteTraceback", "[1, 4, 9]"]


def test_a_failed_step_retried_by_max_attempts_reads_its_own_item_and_returns(session, tmp_path):
    marker = tmp_path / "tried"

    def flaky(x):
        if x == 2 and not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first attempt")
        return x * 10

    array = nbdist.Executor(session=session, max_attempts=2).array(flaky, [1, 2, 3])
    assert array.results(timeout=60) == [10, 20, 30]
    assert array[1].attempts[0].state is State.FAILED and len(array[1].attempts) == 2


def test_over_its_runtime_a_call_is_timeout_as_a_shell_job(session):
    job = nbdist.Executor(session=session, runtime="1s").submit(time.sleep, 30)
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=60)
    assert caught.value.state is State.TIMEOUT


def test_session_submit_python_prints_live_without_pythonunbuffered(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    with Session(parallelism=1, root=str(tmp_path / "live")) as live:
        job = live.submit("import time\nprint('first line')\ntime.sleep(20)\n", python=True)
        deadline = time.monotonic() + 15
        while "first line" not in job.stdout() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.stdout() == "first line\n" and not job.done()
        assert job.name == "python"
        job.cancel()
