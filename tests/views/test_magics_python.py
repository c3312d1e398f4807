"""``%%submit --python``, the cell form: ``--in`` variables, the last expression as the result, live output."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from nbdist import State

WAIT_S = 60


def test_in_ships_variables_and_the_last_expression_is_the_result(ip: Any, session: Any) -> None:
    ip.user_ns.update(table={"a": [1, 2, 3]}, factor=lambda values: sum(values) * 10)
    ip.run_cell_magic("submit", "--python --in table,factor --name fit --out fit --quiet",
                      "total = factor(table['a'])\nprint('computing')\n{'total': total, 'name': __name__}\n")
    job = ip.user_ns["fit"]
    assert job is session.get("fit")
    assert job.result(timeout=WAIT_S) == {"total": 60, "name": "__main__"}
    assert job.stdout() == "computing\n"
    ip.run_cell_magic("submit", "--python --name quiet --out q --quiet", "x = 1\nx + 1;\n")
    assert ip.user_ns["q"].result(timeout=WAIT_S) is None  # a trailing ; shows no value, as in IPython
    ip.run_cell_magic("submit", "--python --name stmt --out s --quiet", "x = 1\n")
    assert ip.user_ns["s"].result(timeout=WAIT_S) is None


def test_a_missing_in_name_or_in_without_python_submits_nothing(ip: Any, session: Any) -> None:
    ip.user_ns.pop("nowhere", None)
    with pytest.raises(UsageError, match="no notebook variable named nowhere"):
        ip.run_cell_magic("submit", "--python --in nowhere --quiet", "nowhere\n")
    with pytest.raises(UsageError, match="add --python"):
        ip.run_cell_magic("submit", "--in table --quiet", "echo hi\n")
    assert session.jobs() == []


def test_parameters_are_python_values_never_code(ip: Any, session: Any) -> None:
    words = ["$(touch pwned)", "__import__('os').system('touch pwned')", "1/0", "it's"]
    ip.user_ns["grid"] = {"w": words, "n": [3]}
    ip.run_cell_magic("submit", "--python --over grid --name lit --out lit --wait --quiet",
                      "print(repr({{w}}))\n({{w}}, {{n}} * 2, {{step}})\n")
    array = ip.user_ns["lit"]
    assert array.results(timeout=WAIT_S) == [(word, 6, index) for index, word in enumerate(words)]
    assert [job.stdout() for job in array] == [f"{word!r}\n" for word in words]
    ip.run_cell_magic("submit", "--python --array 0-4:2 --name steps --out steps --quiet", "{{step}} * 10\n")
    assert ip.user_ns["steps"].results(timeout=WAIT_S) == [0, 20, 40]
    assert not Path("pwned").exists()


def test_an_exception_in_the_cell_comes_back_with_the_cell_line(ip: Any, session: Any) -> None:
    ip.run_cell_magic("submit", "--python --name broken --out broken --quiet", "x = 1\nraise KeyError('no such column')\n")
    with pytest.raises(KeyError, match="no such column") as caught:
        ip.user_ns["broken"].result(timeout=WAIT_S)
    assert "raise KeyError('no such column')" in caught.value.__cause__.text
    assert ip.user_ns["broken"].state is State.FAILED


def test_a_python_cell_prints_live_without_pythonunbuffered(ip: Any, session: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    ip.run_cell_magic("submit", "--python --name talk --out talk --quiet",
                      "import time\nprint('first line')\ntime.sleep(20)\n")
    job = ip.user_ns["talk"]
    deadline = time.monotonic() + 15
    while "first line" not in job.stdout() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.stdout() == "first line\n" and not job.done()  # printed while it runs, not at its end
    job.cancel()
    assert job.wait(WAIT_S) is State.KILLED
