"""A function's grid has the parameter columns of a shell sweep: its snapshot rows, ``--where`` filter
and timeline labels (real processes; ``%nbdist status`` through IPython's test shell)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import nbdist
from nbdist import Session

GRID = {"lr": [0.1, 0.01], "depth": [2, 4]}
ROWS = [{"lr": 0.1, "depth": 2}, {"lr": 0.1, "depth": 4}, {"lr": 0.01, "depth": 2}, {"lr": 0.01, "depth": 4}]


def score(lr: float, depth: int) -> float:
    return lr * depth


def area(row: dict[str, Any]) -> float:
    return row["lr"] * row["depth"]


@pytest.fixture(scope="module")
def ip() -> Any:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nbdist")
    return shell


@pytest.fixture()
def session(ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A fresh session the magics use for this test only."""
    monkeypatch.chdir(tmp_path)
    session = Session(root=str(tmp_path / ".nbdist"), parallelism=2)
    magics = ip.magics_manager.registry["NbdistMagics"]
    magics.sessions.use(session)
    try:
        yield session
    finally:
        magics.sessions.close_all()
        nbdist.set_default_session(None)
        session.close()


@pytest.fixture()
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Everything the magics display."""
    from nbdist.views import magics

    items: list[Any] = []
    monkeypatch.setattr(magics, "display", lambda item, **kw: items.append(item))
    return items


def test_a_functions_grid_has_parameter_columns_a_filter_and_labels(ip: Any, session: Session,
                                                                   shown: list[Any]) -> None:
    grid = nbdist.function(score, session=session, name="scores").over(GRID)
    assert grid.results(timeout=120) == [0.2, 0.4, 0.02, 0.04]
    assert grid.params == ROWS
    snapshot = session.snapshot(grid)
    assert snapshot.param_names == ("lr", "depth")
    assert [row.params for row in snapshot.rows] == ROWS
    labels = {bar.step: bar.label for bar in snapshot.progress.timeline.bars}
    assert labels == {0: "lr=0.1 depth=2", 1: "lr=0.1 depth=4", 2: "lr=0.01 depth=2", 3: "lr=0.01 depth=4"}
    ip.run_line_magic("nbdist", "status scores --where lr=0.1")
    text = shown[-1]["text/plain"]
    header = next(line for line in text.splitlines() if "state" in line)
    assert header.split()[-3:] == ["lr", "depth", "message"]
    rows = [line.split() for line in text.splitlines() if "DONE" in line.split()[1:2]]
    assert [row[6:8] for row in rows] == [["0.1", "2"], ["0.1", "4"]]
    assert "where lr=0.1" in text


def test_a_map_over_dicts_and_an_executor_grid_have_them_too(session: Session) -> None:
    mapped = nbdist.function(area, session=session).map(iter(ROWS))  # an iterator: read once, rows still noted
    with nbdist.Executor(session=session) as pool:
        swept = pool.array(score, over=GRID)
        assert swept.results(timeout=120) == [0.2, 0.4, 0.02, 0.04]
    assert mapped.results(timeout=120) == [0.2, 0.4, 0.02, 0.04]
    for array in (mapped, swept):
        assert [row.params for row in session.snapshot(array, where={"depth": "4"}).rows] == [ROWS[1], ROWS[3]]


def test_items_that_are_not_rows_of_scalars_give_no_columns(session: Session) -> None:
    plain = nbdist.function(abs, session=session).map([-1, 2])
    holding = nbdist.function(len, session=session).map([{"data": [1, 2, 3]}, {"data": [4]}])
    chunked = nbdist.function(score, session=session, chunksize=2).over(GRID)
    assert plain.results(timeout=120) == [1, 2] and holding.results(timeout=120) == [1, 1]
    assert chunked.results(timeout=120) == [0.2, 0.4, 0.02, 0.04]
    for array in (plain, holding, chunked):
        assert array.params is None and session.snapshot(array).param_names == ()


def test_a_python_cells_step_id_is_not_a_parameter_column(ip: Any, session: Session, shown: list[Any]) -> None:
    """A ``%%submit --python`` cell's rows carry ``step`` for its ``{{step}}``; the step column already
    shows it, so neither the columns nor the timeline labels repeat it."""
    ip.run_cell_magic("submit", "--name words --over \"{'word': ['a', 'b']}\" --python --wait --out words",
                      "print({{word}}, {{step}})\n")
    ip.run_cell_magic("submit", "--name fifths --array 0-10:5 --python --wait --out fifths", "print({{step}})\n")
    words, fifths = ip.user_ns["words"], ip.user_ns["fifths"]
    assert [job.stdout().strip() for job in words] == ["a 0", "b 1"]
    assert session.snapshot(words).param_names == ("word",)
    assert {bar.label for bar in session.snapshot(words).progress.timeline.bars} == {"word=a", "word=b"}
    assert session.snapshot(fifths).param_names == ()
    assert {bar.label for bar in session.snapshot(fifths).progress.timeline.bars} == {""}
