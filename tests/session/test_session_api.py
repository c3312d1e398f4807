"""More of the public surface: module-level API, options, names, callbacks, concurrency limits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

import nbdist
from nbdist import Session, State


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


def test_module_level_submit_uses_one_default_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbdist.set_default_session(None)
    try:
        job = nbdist.submit("echo default", name="d")
        arr = nbdist.array("echo {{x}}", over={"x": [1, 2]}, name="a")
        session = nbdist.default_session()
        assert session.get("d") is job and session.get("a") is arr
        assert session.root == str(tmp_path / ".nbdist")
        assert job.wait(10) is State.DONE and arr.wait(10) is State.DONE
    finally:
        nbdist.default_session().close()
        nbdist.set_default_session(None)


def test_env_and_cwd(session, tmp_path):
    job = session.submit("echo $GREETING; pwd", name="envcwd", env={"GREETING": "hi"}, cwd=str(tmp_path))
    assert job.wait(10) is State.DONE
    assert job.stdout() == f"hi\n{tmp_path}\n"


def test_max_concurrent_limits_running_steps(session, tmp_path):
    arr = session.array(f"echo start $(date +%s.%N) >> {tmp_path}/log; sleep 0.2; "
                        f"echo end $(date +%s.%N) >> {tmp_path}/log", steps=3, name="one-at-a-time", max_concurrent=1)
    assert arr.wait(10) is State.DONE
    events = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    running = peak = 0
    for kind, _ in sorted(events, key=lambda item: float(item[1])):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1


def test_reused_name_gets_the_newest(session):
    first = session.submit("echo 1", name="same")
    second = session.submit("echo 2", name="same")
    assert session.get("same") is second and session.get(first.id) is first
    assert [job.id for job in session.jobs()] == [first.id, second.id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "use letters, digits"),
        ({"memory": "lots"}, "memory must be like"),
        ({"runtime": "-1"}, "runtime must be"),
        ({"cores": 99}, "parallelism is 2"),
        ({"max_attempts": 0}, "max_attempts must be a positive integer"),
        ({"resource_scales": {"disk": 2}}, "resource_scales"),
        ({"env": {"A=B": "x"}}, "invalid environment variable name"),
    ],
)
def test_bad_options_are_one_clear_error_and_submit_nothing(session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        session.submit("echo", **kwargs)
    assert session.jobs() == [] and session.registry.jobs() == []


def test_empty_command_and_unknown_job(session):
    with pytest.raises(ValueError, match="non-empty"):
        session.submit("  ")
    with pytest.raises(KeyError, match="no job or array named 'ghost'"):
        session.get("ghost")


def test_done_callback_may_call_back_into_the_session(session):
    follow_ups: list[nbdist.Job] = []
    first = session.submit("echo first", name="first")
    first.add_done_callback(lambda job: follow_ups.append(session.submit("echo second", name="second")))
    assert first.wait(10) is State.DONE
    deadline = time.monotonic() + 5
    while not follow_ups and time.monotonic() < deadline:
        time.sleep(0.01)
    assert follow_ups[0].wait(10) is State.DONE


def test_arrays_are_futures_too(session):
    arrays = [session.array("exit {{step}}", steps=[0], name="ok"), session.array("exit {{step}}", steps=[3],
                                                                                    name="bad")]
    finished = list(concurrent.futures.as_completed(arrays, timeout=10))
    assert set(finished) == set(arrays)
    assert arrays[0].result() is arrays[0]
    assert "1 of 1 steps of bad failed" in str(arrays[1].exception())

    async def gather():
        return await arrays[0]

    assert asyncio.run(gather()) is arrays[0]


def test_cancelling_an_await_does_not_kill_the_job(session):
    job = session.submit("sleep 0.5", name="shielded")

    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job, 0.05)

    asyncio.run(impatient())
    assert job.wait(10) is State.DONE


def test_repr_and_running(session):
    job = session.submit("sleep 30", name="r")
    deadline = time.monotonic() + 10
    while not job.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.running() and repr(job) == f"<Job {job.id} 'r' RUNNING>"
    job.cancel()
    assert job.wait(10) is State.KILLED and job.cancelled()  # a True cancel(): a cancelled Future
    assert not job.running()

    async def awaited():
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(awaited())
    assert repr(job) == f"<Job {job.id} 'r' KILLED>"
    done = session.submit("true", name="t")
    done.wait(10)
    assert repr(done) == f"<Job {done.id} 't' DONE exit_code=0>"


def test_windowed_polls_of_many_live_tasks(tmp_path):
    # Make "many" small: the windowed poll (ended tasks + a window of queued ones) does all the work.
    with Session(parallelism=2, root=str(tmp_path / "root"),
                 poller_options=dict(full_report_limit=5, window_per_record=2, full_poll_seconds=1000.0)) as session:
        _windowed_polls(session, tmp_path)


def _windowed_polls(session, tmp_path):
    arr = session.array(f"mkdir {tmp_path}/s$NBDIST_STEP 2>/dev/null && exit 1; sleep 0.02", steps=40, name="many",
                        max_attempts=2)
    slow = session.array("sleep 1", steps=2, name="slow")
    seen_running = False
    deadline = time.monotonic() + 30
    while not (arr.done() and slow.done()) and time.monotonic() < deadline:
        seen_running = seen_running or slow.counts()["RUNNING"] > 0
        time.sleep(0.02)
    assert arr.state is State.DONE and slow.state is State.DONE and seen_running
    assert {job.attempts[-1].number for job in arr} == {2}


def test_env_must_be_a_dict(session):
    with pytest.raises(ValueError, match="env must be a dict of strings"):
        session.submit("true", env=["A=1"])


@pytest.mark.parametrize(("backend", "valid"), [("multiprocess", "kill_grace"), ("slurm", "partition, log_dir")])
def test_unknown_backend_option_is_one_clear_error(tmp_path, backend, valid):
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=f"unknown option 'partiton' for backend '{backend}'; valid options: .*{valid}"):
        Session(backend=backend, root=str(root), partiton="debug")
    assert not root.exists()  # nothing was created


def test_parallelism_goes_only_to_a_backend_that_takes_it(tmp_path):
    slurm = Session(backend="slurm", parallelism=2, root=str(tmp_path / "slurm"), partition="debug")
    try:
        assert slurm.backend_kwargs() == {"partition": "debug"}
    finally:
        slurm.close()
    with Session(parallelism=2, root=str(tmp_path / "local")) as local:
        assert local.backend_kwargs("multiprocess")["parallelism"] == 2


def test_an_end_is_noticed_when_the_backend_tells_not_at_the_next_scheduled_poll(tmp_path, monkeypatch):
    # concurrent.futures.as_completed waits on the Future itself, not through result(): with polls 60 s
    # apart, only the backend telling the poller that tasks ended settles the Future in time.
    import concurrent.futures

    from nbdist.session import poller

    monkeypatch.setattr(poller, "POLL_MIN_SECONDS", 60.0)
    monkeypatch.setattr(poller, "POLL_MAX_SECONDS", 60.0)
    with nbdist.Session(parallelism=2, root=str(tmp_path / "root")) as session:
        for command in ("sleep 0.3", "exit 3"):
            job = session.submit(command)
            done = next(concurrent.futures.as_completed([job], timeout=20))
            assert done is job and job.state in (nbdist.State.DONE, nbdist.State.FAILED)
