"""joblib's ``nbdist`` backend with real processes: scikit-learn's n_jobs, the generator modes, errors,
aborts, auto-batching, nested calls, options, and the registration that ``import nbdist`` makes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config

import nbdist
from nbdist import JobFailed, Session, State


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


# scikit-learn's runs, with loky in a process of its own (loky's workers and resource trackers outlive a
# call by design) and with nbdist here: the same data, the same seeds.
SKLEARN_RUN = textwrap.dedent("""
    import json
    from joblib import parallel_config
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    def run():
        X, y = make_classification(n_samples=300, n_features=8, random_state=0)
        search = GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1.0]}, cv=3, n_jobs=2).fit(X, y)
        scores = cross_val_score(LogisticRegression(C=0.5), X, y, cv=4, n_jobs=2)
        return search.best_params_, list(search.cv_results_["mean_test_score"]), list(scores)
""")


def square(x):
    return x * x


def slow_identity(x, seconds):
    time.sleep(seconds)
    return x


def boom_at(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def sleep_or_fail(x):
    if x == 0:
        time.sleep(0.5)
        raise KeyError("the first call fails")
    time.sleep(60)
    return x


def inner_pids(n):
    backend, n_jobs = joblib.parallel.get_active_backend()
    pids = Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(n))
    return type(backend).__name__, set(pids), os.getpid()


def environment(name):
    print(f"reading {name}")
    return os.environ.get(name)


# ---------------------------------------------------------------------------- registration


def test_import_nbdist_registers_the_backend_in_either_order_without_importing_joblib():
    code = textwrap.dedent("""
        import sys
        import nbdist
        assert "joblib" not in sys.modules, "import nbdist imported joblib"
        import joblib
        from joblib.parallel import BACKENDS
        assert "nbdist" in BACKENDS, sorted(BACKENDS)
        assert sys.modules["joblib"].__spec__.loader.__class__.__name__ != "_RegisterAfterImport"
        with joblib.parallel_config(backend="nbdist", n_jobs=3, memory="1G"):
            backend, n_jobs = joblib.parallel.get_active_backend()
        print(type(backend).__name__, n_jobs, backend.options)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "NbdistBackend 3 {'memory': '1G'}"
    joblib_first = "import joblib, nbdist; from joblib.parallel import BACKENDS; print('nbdist' in BACKENDS)"
    assert subprocess.run([sys.executable, "-c", joblib_first], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"


def test_a_bad_option_is_one_clear_error_before_anything_runs(session):
    with pytest.raises(ValueError, match="no option 'mem'; its options: name, cores, memory"):
        parallel_config(backend="nbdist", session=session, mem="1G")
    assert session.jobs() == []


# ---------------------------------------------------------------------------- scikit-learn


def test_grid_search_and_cross_val_score_give_loky_s_results(session):
    loky = SKLEARN_RUN + "with parallel_config(backend='loky'):\n    print(json.dumps(run()))\n"
    expected = json.loads(subprocess.run([sys.executable, "-c", loky], capture_output=True, text=True,
                                         check=True).stdout)
    namespace: dict = {}
    exec(SKLEARN_RUN, namespace)
    with parallel_config(backend="nbdist", session=session):
        got = namespace["run"]()
    assert got[0] == expected[0]
    np.testing.assert_allclose(got[1], expected[1])
    np.testing.assert_allclose(got[2], expected[2])
    names = {job.name for job in session.jobs()}
    assert names == {"fit_and_score"}, names  # named after scikit-learn's function, not "batch"
    assert all(job.state is State.DONE for job in session.jobs())


# ---------------------------------------------------------------------------- joblib's modes


def test_auto_batching_makes_fewer_jobs_than_calls_and_every_value_comes_back(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        values = Parallel()(delayed(square)(i) for i in range(3000))
    assert values == [i * i for i in range(3000)]
    jobs = session.jobs()
    assert 1 < len(jobs) < 300, len(jobs)  # joblib's batches grew: 3,000 calls, far fewer jobs
    assert {job.name for job in jobs} == {"square"}


def test_batches_bound_by_a_job_s_fixed_cost_wait_for_a_slot_and_go_joined_as_one_job(session):
    from nbdist.integrations.joblib import NbdistBackend

    backend = NbdistBackend(session=session)
    parallel = Parallel(backend=backend, n_jobs=2)
    assert parallel(delayed(square)(i) for i in range(10_000)) == [i * i for i in range(10_000)]
    # joblib's tail rule alone makes 20 batches; held while both slots are busy, they share jobs.
    assert len(backend.jobs) < parallel.n_dispatched_batches, (len(backend.jobs), parallel.n_dispatched_batches)
    ran = [job.result() for job in backend.jobs]  # each batch's values and the seconds its calls took
    assert all(isinstance(values, list) and 0 < seconds < 5 for batches in ran for values, seconds in batches)
    assert any(len(batches) >= 2 for batches in ran), [len(batches) for batches in ran]
    assert {job.state for job in session.jobs()} == {State.DONE}
    # An exception late in the call, where batches may go joined, is raised as itself, as for a batch alone.
    with pytest.raises(ValueError, match="item 9000 is bad") as caught:
        Parallel(backend=backend, n_jobs=2)(delayed(boom_at)(i, 9_000) for i in range(10_000))
    assert "boom_at" in str(caught.value.__cause__)


def test_held_batches_that_cannot_be_submitted_reach_joblib_as_their_error(session):
    import functools
    import threading

    from nbdist.integrations.joblib import NbdistBackend
    from nbdist.integrations.joblib_batches import BatchHandle

    backend = NbdistBackend(session=session)
    backend.configure(n_jobs=2)
    called: list[BatchHandle] = []
    unpicklable = functools.partial(len, threading.Lock())
    backend._held = [BatchHandle(unpicklable, called.append), BatchHandle(unpicklable, called.append)]
    backend._release_held()  # no job can be submitted: joblib must not wait for these batches for ever
    assert len(called) == 2 and backend._held == [] and backend.jobs == [] and session.jobs() == []
    for handle in called:
        with pytest.raises(TypeError, match="pickle"):
            backend.retrieve_result_callback(handle)


def busy(x, seconds):
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass
    return x


def test_pre_dispatch_all_holds_nearly_every_batch_and_still_runs_them_a_slot_at_a_time(session):
    from nbdist.integrations.joblib import NbdistBackend

    backend = NbdistBackend(session=session)
    calls = 4000  # 0.5 ms each: 2 s of work, which must not end up in one serial job
    parallel = Parallel(backend=backend, n_jobs=2, pre_dispatch="all")
    assert parallel(delayed(busy)(i, 0.0005) for i in range(calls)) == list(range(calls))
    ran = [job.result() for job in backend.jobs]
    assert any(len(batches) >= 2 for batches in ran), "no batch was held and joined"
    per_job = [sum(len(values) for values, _ in batches) for batches in ran]
    assert sum(per_job) == calls
    # A joined job takes at most joblib's ideal batch duration (0.2 s: ~400 of these calls).
    assert max(per_job) < calls / 4, sorted(per_job)[-5:]


def test_a_batch_that_cannot_be_submitted_from_a_callback_is_raised_by_parallel(session):
    import threading

    from nbdist.integrations.joblib import NbdistBackend

    # Batches of one slow call go one job each; the 7th is dispatched by a batch's callback, on the
    # backend's thread, and cannot be pickled: Parallel raises that, not a timeout.
    items: list[Any] = list(range(10))
    items[6] = threading.Lock()
    with pytest.raises(TypeError, match="pickle"):
        Parallel(backend=NbdistBackend(session=session), n_jobs=2, batch_size=1, timeout=60)(
            delayed(slow_identity)(item, 0.05) for item in items)
    assert all(job.state.is_terminal for job in session.jobs())


def test_a_batch_without_a_callback_is_never_held(session):
    from nbdist.integrations.joblib import NbdistBackend

    backend = NbdistBackend(session=session)
    backend.configure(n_jobs=1)
    backend.start_call()
    backend._join_batches = True  # as after a batch bound by a job's fixed cost
    ended: list[Any] = []
    try:
        first = backend.submit(lambda: [slow_identity(1, 1.0)], ended.append)  # fills the one slot
        handle = backend.submit(lambda: [square(3)])  # no callback: nothing would ask for it if it were held
        assert first.job is not None and handle.job is not None and backend._held == []
        assert handle.result(30) == [9] and first.result(30) == [1]
    finally:
        backend.terminate()


def test_a_batch_submitted_as_the_call_aborts_or_that_cannot_be_watched_is_killed(session, monkeypatch):
    from nbdist.integrations.joblib import NbdistBackend

    backend = NbdistBackend(session=session)
    backend.configure(n_jobs=2)
    backend.start_call()
    try:
        # A batch a callback dispatched, submitted while joblib aborted the call: abort_everything had
        # already taken the list of live jobs, so the submit kills its own job.
        backend.abort_everything()
        with pytest.raises(RuntimeError, match="aborted"):
            backend.submit(lambda: [slow_identity(1, 60)], lambda handle: None)
        backend.start_call()
        # The session cannot be told someone waits: the job would run on unwatched.
        monkeypatch.setattr(session, "waiting", lambda: (_ for _ in ()).throw(OSError("no watch")))
        with pytest.raises(OSError, match="no watch"):
            backend.submit(lambda: [slow_identity(2, 60)], lambda handle: None)
        monkeypatch.undo()
        killed = session.jobs()
        assert len(killed) == 2
        for job in killed:
            job.wait(30)
        assert {job.state for job in killed} == {State.KILLED}, [job.state for job in killed]
        assert backend._live == set()
    finally:
        backend.terminate()


def test_a_closed_session_raises_and_nothing_runs_elsewhere(tmp_path):
    from nbdist.integrations.joblib import NbdistBackend
    from nbdist.session.defaults import current_default

    default = current_default()
    session = Session(parallelism=2, root=str(tmp_path / "root"))
    backend = NbdistBackend(session=session)
    session.close()
    with pytest.raises(RuntimeError, match="this session is closed"):
        Parallel(backend=backend, n_jobs=2)(delayed(square)(i) for i in range(4))
    assert current_default() is default  # no default session was made to run it instead


def test_the_generator_modes_yield_in_order_and_as_calls_end(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        ordered = Parallel(return_as="generator", batch_size=1)(
            delayed(slow_identity)(i, 0.05 * (3 - i)) for i in range(4))
        assert not isinstance(ordered, list)
        assert list(ordered) == [0, 1, 2, 3]
        unordered = Parallel(return_as="generator_unordered", batch_size=1)(
            delayed(slow_identity)(i, seconds) for i, seconds in enumerate([3.0, 0.1, 0.1]))
        assert list(unordered)[-1] == 0  # the slow first call ends last


def test_an_exception_is_raised_as_itself_with_the_remote_traceback(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        with pytest.raises(ValueError, match="item 3 is bad") as caught:
            Parallel(batch_size=1)(delayed(boom_at)(i, 3) for i in range(6))
    remote = str(caught.value.__cause__)
    assert "boom_at" in remote and "raise ValueError" in remote and "test_joblib_backend.py" in remote
    failed = [job for job in session.jobs() if job.state is State.FAILED]
    assert len(failed) == 1 and "item 3 is bad" in failed[0].stderr()  # the batch's log has it too


def test_an_error_cancels_the_calls_still_running_and_leaves_no_process(session):
    start = time.monotonic()
    with parallel_config(backend="nbdist", session=session, n_jobs=3):
        with pytest.raises(KeyError, match="the first call fails"):
            Parallel(batch_size=1)(delayed(sleep_or_fail)(i) for i in range(3))
    assert time.monotonic() - start < 30  # not the 60 s the other calls sleep
    states = sorted(job.state.value for job in session.jobs())
    assert states == ["FAILED", "KILLED", "KILLED"], states  # ended before Parallel raised


def test_a_timeout_raises_and_kills_the_late_call(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises for every backend
            Parallel(timeout=1.0, batch_size=1)(delayed(slow_identity)(i, 60 * i) for i in range(2))
    assert {job.state for job in session.jobs()} <= {State.DONE, State.KILLED}
    assert any(job.state is State.KILLED for job in session.jobs())


def test_nested_parallel_calls_run_sequentially_inside_the_task(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        results = Parallel(batch_size=1)(delayed(inner_pids)(4) for _ in range(2))
    for backend, pids, task_pid in results:
        assert backend == "SequentialBackend" and pids == {task_pid} and task_pid != os.getpid()


def test_nbdist_options_reach_the_jobs_and_the_logs_keep_the_output(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2, name="probe", runtime="5m",
                         env={"NBDIST_JOBLIB_PROBE": "yes"}):
        assert Parallel(batch_size=1)(delayed(environment)("NBDIST_JOBLIB_PROBE") for _ in range(2)) == ["yes"] * 2
    jobs = session.jobs()
    assert {job.name for job in jobs} == {"probe"}
    assert all("reading NBDIST_JOBLIB_PROBE" in job.stdout() for job in jobs)


def test_the_default_session_and_the_old_parallel_backend_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbdist.set_default_session(None)
    try:
        with joblib.parallel_backend("nbdist", n_jobs=2):
            assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
        assert {job.name for job in nbdist.default_session().jobs()} == {"square"}
        assert os.path.samefile(nbdist.default_session().root, tmp_path / ".nbdist")
    finally:
        nbdist.default_session().close()
        nbdist.set_default_session(None)


def test_a_job_that_dies_is_a_job_failed_naming_it(session):
    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        with pytest.raises(JobFailed):
            Parallel(batch_size=1)(delayed(os._exit)(3) for _ in range(2))



# ---------------------------------------------------------------------------- one dashboard per call


def test_a_slow_parallel_call_is_one_group_shown_once_with_its_batches(session):
    from nbdist.session import LIVE_AFTER_SECONDS, JobGroup, set_wait_display
    from nbdist.views.overview import GroupView

    shown: list[JobGroup] = []
    ends: list[str] = []

    def hook(handle):
        shown.append(handle)
        return lambda: ends.append(handle.name)

    set_wait_display(hook)
    try:
        with parallel_config(backend="nbdist", session=session, n_jobs=2):
            assert Parallel()(delayed(square)(i) for i in range(400)) == [i * i for i in range(400)]  # a blink
            fast_jobs = {str(job.id) for job in session.jobs()}
            seconds = LIVE_AFTER_SECONDS * 0.8
            assert Parallel(batch_size=1)(delayed(slow_identity)(i, seconds) for i in range(4)) == [0, 1, 2, 3]
    finally:
        set_wait_display(None)
    # Shown as a slow wait is: the call that lasted over LIVE_AFTER_SECONDS, once, named after its function.
    assert [group.name for group in shown] == ["slow_identity"], shown
    assert ends == ["slow_identity"]  # its end drawn when the call ended
    slow = shown[0]
    assert isinstance(slow, JobGroup) and slow.kind == "joblib Parallel"
    assert len(slow.jobs()) == 4 and slow.done() and slow.counts() == {"DONE": 4}  # batch_size=1: a job a call
    assert {str(job.id) for job in slow.jobs()} == {str(job.id) for job in session.jobs()} - fast_jobs
    view = GroupView(slow)
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"].splitlines()[0] == "slow_identity · joblib Parallel · 4 jobs · DONE 4"
    assert bundle["text/html"].count('class="nbdist-overview-row"') == 4
    assert {f'data-pick="{job.id}"' in bundle["text/html"] for job in slow.jobs()} == {True}
    assert not view.changed()  # done: the dashboards' thread lets it rest


def test_a_parallel_call_shows_nothing_without_the_hook_and_a_drawing_error_does_not_break_it(session):
    from nbdist.session import set_wait_display

    with parallel_config(backend="nbdist", session=session, n_jobs=2):
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]

    def broken(handle):
        raise ImportError("no ipywidgets here")

    set_wait_display(broken)
    try:
        with parallel_config(backend="nbdist", session=session, n_jobs=2):
            assert Parallel(batch_size=1)(delayed(slow_identity)(i, 0.8) for i in range(4)) == [0, 1, 2, 3]
    finally:
        set_wait_display(None)


def _batch_job(values: list, run_seconds: float | None) -> Any:
    """A batch as the backend's callback sees it: its ended job's value, its values and their run time."""
    from types import SimpleNamespace

    from nbdist.integrations.joblib_batches import BatchHandle

    handle = BatchHandle(None, None)
    ended = SimpleNamespace(result=lambda timeout=None: [(values, run_seconds)])
    handle.joined(ended, 0, SimpleNamespace(take=lambda timeout: ended.result()))
    return handle


def test_batches_bound_by_a_job_s_fixed_cost_grow_fast_by_their_run_time_and_others_as_joblib_grows_them():
    from types import SimpleNamespace

    from nbdist.integrations.joblib import FAST_BATCH_GROWTH, NbdistBackend

    backend = NbdistBackend()
    backend.parallel = SimpleNamespace(verbose=0)

    def measured(size: int, duration: float, run: float | None = None) -> float:
        """A batch of ``size`` calls ended after ``duration`` from its dispatch: what joblib's estimate becomes."""
        backend.reset_batch_stats()  # joblib's public reset: no estimate yet
        backend._effective_batch_size = size
        assert backend.retrieve_result_callback(_batch_job([size], run)) == [size]  # read just before, as joblib does
        backend.batch_completed(size, duration)
        return backend._smoothed_batch_duration

    def next_size(size: int, duration: float, run: float | None = None) -> int:
        measured(size, duration, run)
        return backend.compute_batch_size()

    # Ran 0.5 ms of a 3 ms job: measured by its run time, it grows to half the size filling 0.2 s.
    assert measured(8, 0.003, run=0.0005) == 0.0005
    assert next_size(8, 0.003, run=0.0005) == int(8 * 0.2 / 0.0005) // 2
    assert next_size(8, 0.003, run=0.00001) == FAST_BATCH_GROWTH * 8  # no more than FAST_BATCH_GROWTH at once
    assert measured(8, 0.003, run=0.0) == 0.003  # a zero is a coarse clock's (Slurm's accounting): joblib's measure
    # A fit that ran 10 of its 15 ms, and batches without a run time: joblib's own rule, on its measure.
    assert measured(1, 0.015, run=0.010) == 0.015
    assert next_size(1, 0.015, run=0.010) == 2
    assert next_size(8, 0.001) == 2 * 8  # far too fast, measured from dispatch: joblib's doubling
    assert next_size(8, 0.5) == 8  # in the ideal range: unchanged
    assert next_size(8, 5.0) == max(2 * int(8 * 0.2 / 5.0), 1)  # too slow: joblib's own shrinking
    # A run time counts for its own batch only; a new size starts a new estimate.
    measured(8, 0.003, run=0.0005)
    backend.batch_completed(8, 0.5)
    assert backend._smoothed_batch_duration == 0.8 * 0.0005 + 0.2 * 0.5
    assert backend.compute_batch_size() == 16 and backend._fast_batch_seconds == 0.0


def test_terminate_ends_the_call_s_dashboard_for_a_joblib_that_never_calls_stop_call(session):
    from nbdist.integrations.joblib import NbdistBackend
    from nbdist.session import LIVE_AFTER_SECONDS, set_wait_display

    shown: list = []
    set_wait_display(shown.append)
    try:
        backend = NbdistBackend(session=session)
        backend.configure(n_jobs=2)
        batch = backend.submit(lambda: 41 + 1)  # no start_call first, as an older joblib
        assert batch.result(30) == 42 and backend.group is not None and backend.group.jobs() == [batch.job]
        backend.terminate()
        assert backend.group is None
        time.sleep(LIVE_AFTER_SECONDS + 0.3)
        assert shown == []  # its pending dashboard was cancelled with the call
    finally:
        set_wait_display(None)
