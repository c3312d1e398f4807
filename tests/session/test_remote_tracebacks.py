"""A notebook function that raises in a task: its traceback shows the cell's lines, names the step and
item, and holds none of nbdist's own frames (real IPython cells, real task processes)."""

from __future__ import annotations

import os
import textwrap
import traceback
from typing import Any

import pytest

import nbdist
from nbdist import Session
from nbdist.cluster_protocol.pycall import RemoteTraceback

NBDIST_DIR = os.path.dirname(os.path.abspath(nbdist.__file__))


@pytest.fixture(scope="module")
def ip() -> Any:
    from IPython.testing.globalipapp import get_ipython

    return get_ipython()


@pytest.fixture
def session(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        yield session


@pytest.fixture
def fragile(ip):
    """``fragile`` defined in a cell, calling ``check`` defined in another: their files are the kernel's alone."""
    ip.run_cell(textwrap.dedent("""
        def check(x):
            if x == 7:
                raise ValueError(f"item {x} is bad")  # check's failing line
    """), store_history=True)
    ip.run_cell(textwrap.dedent("""
        def fragile(x):
            scale = 10
            check(x)  # fragile's calling line
            return x * scale
    """), store_history=True)
    function = ip.user_ns["fragile"]
    assert not os.path.exists(function.__code__.co_filename)  # a cell: no file a task could read
    return function


def _remote_text(exc: BaseException) -> str:
    assert isinstance(exc.__cause__, RemoteTraceback)
    return exc.__cause__.text


def _assert_points_at_the_cells(text: str, fragile: Any) -> None:
    assert "check(x)  # fragile's calling line" in text
    assert 'raise ValueError(f"item {x} is bad")  # check\'s failing line' in text
    assert fragile.__code__.co_filename in text and "<dynamic-code>" not in text
    assert NBDIST_DIR not in text, text  # the task runner's frames are nbdist's, not the user's
    assert text.startswith("Traceback (most recent call last):") and text.rstrip().endswith("ValueError: item 7 is bad")


def test_a_maps_failure_shows_the_cells_lines_and_names_its_step_and_item(session, fragile):
    array = nbdist.function(fragile, session=session).map(range(12))
    with pytest.raises(ValueError, match="item 7 is bad") as info:
        array.results(timeout=120)
    _assert_points_at_the_cells(_remote_text(info.value), fragile)
    assert info.value.__notes__ == [f"nbdist: raised in step 7 of array {array.id} 'fragile', item 7: 7"]
    shown = "".join(traceback.format_exception(info.value))  # what IPython prints: the note under the error
    assert shown.rstrip().endswith(f"ValueError: item 7 is bad\nnbdist: raised in step 7 of array {array.id} "
                                   "'fragile', item 7: 7")
    with pytest.raises(ValueError) as again:  # read again from the outcome: one note, not two
        array[7].result()
    assert len(again.value.__notes__) == 1
    # The step's own stderr log shows the same lines.
    _assert_points_at_the_cells(array[7].stderr(), fragile)


def test_a_chunked_steps_failure_names_the_item_within_the_step(session, fragile):
    with nbdist.Executor(session=session) as pool:
        with pytest.raises(ValueError) as info:
            list(pool.map(fragile, range(12), chunksize=4))
        array = session.jobs()[-1]
    _assert_points_at_the_cells(_remote_text(info.value), fragile)
    assert info.value.__notes__ == [f"nbdist: raised in step 1 of array {array.id} 'fragile', item 7: (7,)"]


def test_a_single_calls_failure_names_its_job(session, fragile):
    job = nbdist.function(fragile, session=session).submit(7)
    with pytest.raises(ValueError) as info:
        job.result(timeout=120)
    _assert_points_at_the_cells(_remote_text(info.value), fragile)
    assert info.value.__notes__ == [f"nbdist: raised in job {job.id} 'fragile'"]
