"""Chunked maps with real processes: ``chunksize`` consecutive items per step, one outcome per step.

The values come back in item order; an item that raises is raised when the iteration reaches it
(the items before it yielded first); the other items of its chunk still ran; a retry of a failed
chunk step runs that chunk again.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

import nbdist
from nbdist import JobFailed, Session, State
from nbdist.cluster_protocol.pycall import RemoteTraceback, chunk_range, chunk_steps
from nbdist.session.executor import MAX_AUTO_CHUNK, auto_chunksize


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


@pytest.fixture
def pool(session):
    with nbdist.Executor(session=session) as pool:
        yield pool


class ChunkError(Exception):
    """Raised by one item in the middle of a chunk."""


def test_chunk_ranges_cover_every_item_once_in_order():
    for count in (1, 2, 7, 10, 101):
        for chunk in (1, 3, 4, 100):
            ranges = [chunk_range(step, chunk, count) for step in range(chunk_steps(count, chunk))]
            assert [i for r in ranges for i in r] == list(range(count))
            assert all(len(r) == chunk for r in ranges[:-1]) and 1 <= len(ranges[-1]) <= chunk
    with pytest.raises(IndexError):
        chunk_range(4, 3, 10)


def test_the_default_chunksize_gives_about_four_steps_per_slot_and_at_most_the_cap():
    assert auto_chunksize(1000, 2) == MAX_AUTO_CHUNK
    assert auto_chunksize(400, 2) == 50
    assert auto_chunksize(20, 2) == 2
    assert auto_chunksize(5, 2) == 1 and auto_chunksize(1, 8) == 1
    assert auto_chunksize(10**6, 16) == MAX_AUTO_CHUNK


def test_map_yields_every_value_in_order_with_few_steps(pool, session):
    values = list(pool.map(lambda x, y: (x, y, os.environ["NBDIST_STEP"]), range(400), range(400, 800)))
    assert [(x, y) for x, y, _ in values] == [(x, x + 400) for x in range(400)]
    array = session.jobs()[-1]
    assert len(array) == 8 and array.counts()["DONE"] == 8  # 4 steps per slot at parallelism 2: 50 items each
    assert [int(step) for _, _, step in values] == [x // 50 for x in range(400)]
    assert array[1].result() == [(x, x + 400, "1") for x in range(50, 100)]  # a step's value: its items'


def test_an_exception_in_the_middle_of_a_chunk_comes_after_the_items_before_it(pool, session):
    def picky(x):
        if x == 4:
            raise ChunkError(f"item {x}")
        return x * x

    got = []
    with pytest.raises(ChunkError, match="item 4") as caught:
        for value in pool.map(picky, range(9), chunksize=3):
            got.append(value)
    assert got == [0, 1, 4, 9]  # items 0-3: the first chunk and the item before 4 in the second
    assert isinstance(caught.value.__cause__, RemoteTraceback) and "item 4" in caught.value.__cause__.text
    assert len(session.jobs()[-1]) == 3
    # Every item of the failed chunk ran (one step per item would have run them all too).
    array = pool.array(picky, range(9), chunksize=3)
    assert array.wait(60) is State.FAILED and array.counts()["FAILED"] == 1 and array[1].exit_code == 1
    values = array.results(return_exceptions=True)
    assert values[:4] == [0, 1, 4, 9] and isinstance(values[4], ChunkError) and values[5:] == [25, 36, 49, 64]
    assert "ChunkError: item 4" in array[1].stderr()
    with pytest.raises(ChunkError):
        array.results()
    assert isinstance(array.exception(), ChunkError) and isinstance(array[1].exception(), ChunkError)


def test_chunksize_one_keeps_one_step_per_item(pool, session):
    assert list(pool.map(str, range(5), chunksize=1)) == ["0", "1", "2", "3", "4"]
    assert len(session.jobs()[-1]) == 5
    array = pool.array(str, range(5))  # array() is one step per item unless told
    assert len(array) == 5 and array.results(60) == ["0", "1", "2", "3", "4"]
    chunked = pool.array(str, range(5), chunksize=2)
    assert len(chunked) == 3 and chunked.results(60) == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(str, range(5), chunksize=0)


def test_a_decorated_function_maps_and_sweeps_in_chunks(session):
    @nbdist.function(session=session, chunksize=2)
    def power(base, exponent=2):
        return base ** exponent

    squares = power.map(range(5))
    assert len(squares) == 3 and squares.results(60) == [0, 1, 4, 9, 16]
    grid = power.over({"base": [2, 3], "exponent": [1, 2, 3]})
    assert len(grid) == 3 and grid.results(60) == [2, 4, 8, 3, 9, 27]
    assert len(nbdist.function(session=session)(abs).map([-1, -2])) == 2  # the default: one step per item


def test_map_timeout_covers_chunks_and_cancels_those_not_started(session):
    with nbdist.Executor(session=session, max_concurrent=1) as pool:
        started = time.monotonic()
        mapped = pool.map(time.sleep, [0, 0, 30, 30, 30, 30], chunksize=2, timeout=1)
        assert next(mapped) is None and next(mapped) is None  # the first chunk ends in time
        with pytest.raises(TimeoutError):
            next(mapped)
        assert time.monotonic() - started < 10
        array = session.jobs()[-1]
        assert array[2].wait(30) is State.KILLED  # not started: cancelled as the iterator was left
        array.cancel()
        array.wait(30)


def test_a_retry_of_a_failed_chunk_step_runs_that_chunk_again(session, tmp_path):
    ran = tmp_path / "ran"
    marker = tmp_path / "failed-once"

    def flaky(x):
        with open(ran, "a") as handle:
            handle.write(f"{x}\n")
        if x == 3 and not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first attempt")
        return x * 10

    array = nbdist.Executor(session=session).array(flaky, range(6), chunksize=2)
    assert array.wait(60) is State.FAILED and array.failed() == [array[1]]
    assert array.results(return_exceptions=True)[:2] == [0, 10]
    array.retry_failed()
    assert array.results(timeout=60) == [0, 10, 20, 30, 40, 50]
    assert len(array[1].attempts) == 2
    assert sorted(int(line) for line in ran.read_text().split()) == [0, 1, 2, 2, 3, 3, 4, 5]


def test_a_chunk_whose_item_exits_or_returns_what_cannot_travel(pool):
    def odd(x):
        if x == 1:
            return threading.Lock()  # cannot be pickled
        if x == 4:
            sys.exit(3)
        return x

    array = pool.array(odd, range(6), chunksize=3)
    values = array.results(timeout=60, return_exceptions=True)
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], TypeError) and "cannot be pickled" in str(values[1])
    # sys.exit ends its step there, with no outcome: each of its items says how the step ended.
    assert all(isinstance(value, JobFailed) for value in values[3:]) and array[1].exit_code == 3
