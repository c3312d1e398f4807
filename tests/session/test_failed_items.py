"""``Array.failed_items()``: a retry runs the call as submitted; new code runs on the failed steps' arguments.

Issue 18 point 6: ``normalize.map([0, 1, 2, 5])`` fails on 0, the user redefines ``normalize`` and
retries: the same error comes back, because a retry runs the function pickled at submit time. The
way to run the new definition on what failed is ``fixed.map(array.failed_items())``. Real processes.
"""

from __future__ import annotations

import time

import pytest

import nbdist
from nbdist import Session, State

WAIT_S = 60


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


def test_a_retry_runs_the_old_code_and_failed_items_run_the_new(session):
    def normalize(x):
        return 10 / x

    array = nbdist.function(normalize, session=session).map([0, 1, 2, 5])
    assert array.wait(WAIT_S) is State.FAILED
    assert array.failed_items() == [0]

    def normalize(x):  # noqa: F811 - the fix, defined after the submit as in a notebook
        return 10 / x if x else 0.0

    array.retry_failed()
    assert array.wait(WAIT_S) is State.FAILED  # as submitted: the old definition ran again
    with pytest.raises(ZeroDivisionError):
        array.results(WAIT_S)
    fixed = nbdist.function(normalize, session=session).map(array.failed_items())
    assert fixed.results(WAIT_S) == [0.0]


def test_a_chunk_gives_only_its_items_that_raised(session):
    def flaky(x):
        if x in (3, 4):
            raise ValueError(x)
        return x

    array = nbdist.Executor(session=session).array(flaky, range(6), chunksize=2)
    assert array.wait(WAIT_S) is State.FAILED and [job.step for job in array.failed()] == [1, 2]
    assert array.failed_items() == [3, 4]  # not 2 and 5, which ran fine in the same steps


def test_killed_steps_follow_the_retry_rule(session):
    def slow_or_bad(x):
        import time

        if x == 0:
            raise ValueError("bad")
        if x == 2:
            time.sleep(60)
        return x

    array = nbdist.function(slow_or_bad, session=session).map([0, 1, 2])
    deadline = time.monotonic() + WAIT_S
    while not (array[0].done() and array[2].state is State.RUNNING):
        assert time.monotonic() < deadline, array.counts()
        time.sleep(0.02)
    assert array[2].cancel() and array.wait(WAIT_S) is State.FAILED
    assert array.failed_items() == [0]  # the kill was on purpose: spared, as by retry_failed()
    assert array.failed_items(killed=True) == [0, 2]


def test_grids_give_their_rows_and_plain_arrays_their_step_ids(session):
    def score(a, b):
        return b / a

    grid = nbdist.function(score, session=session).over({"a": [0, 1, 2], "b": [1]})
    words = session.array("test {{word}} != two", over={"word": ["one", "two", "three"]}, name="words")
    plain = session.array("test $NBDIST_STEP != 2", steps=range(1, 4), name="plain")
    for array in (grid, words, plain):
        assert array.wait(WAIT_S) is State.FAILED
    assert grid.failed_items() == [{"a": 0, "b": 1}]
    assert words.failed_items() == [{"word": "two"}]
    assert plain.failed_items() == [2]
    # Each is what the same call takes again, so new code runs on exactly what failed.
    assert nbdist.function(lambda a, b: b / (a + 1), session=session).over(grid.failed_items()).results(WAIT_S) == [1.0]
    again = session.array("echo {{word}}", over=words.failed_items(), name="again")
    assert again.wait(WAIT_S) is State.DONE and again[0].stdout() == "two\n"
    assert session.array("echo $NBDIST_STEP", steps=plain.failed_items(), name="redo").wait(WAIT_S) is State.DONE
