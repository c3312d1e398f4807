"""Malformed input across the Python API, the magics, the CLI and resource strings.

Each case must give one clear line (naming what is wrong) and submit nothing: no job in the session
or its registry, no task in the backend, no log file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
from IPython.core.error import UsageError

import nbdist
from nbdist.views.cli import main as cli_main
from nbdist.multiprocess import MultiprocessDistributor


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("bad-input")
    with nbdist.Session(root=str(root / ".nbdist"), parallelism=2) as session:
        yield session


def assert_nothing_submitted(session: Any) -> None:
    assert session.jobs() == []
    assert all(backend.get_submitted_or_running() == set() for backend in session.backends().values())
    logs = Path(session.root, "logs")
    assert not logs.exists() or not any(path.is_file() for path in logs.rglob("*"))


def one_line(message: str) -> str:
    message = message.strip()
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    return message


# (case id, a call on the session, a fragment the message must contain)
API_CASES: list[tuple[str, Callable[[Any], Any], str]] = [
    ("empty command", lambda s: s.submit(""), "command"),
    ("blank command", lambda s: s.submit("   \n"), "command"),
    ("command not a string", lambda s: s.submit(["echo", "hi"]), "command"),
    ("memory word", lambda s: s.submit("true", memory="lots"), "memory"),
    ("memory negative", lambda s: s.submit("true", memory="-1G"), "memory"),
    ("memory unit", lambda s: s.submit("true", memory="3X"), "memory"),
    ("runtime word", lambda s: s.submit("true", runtime="soon"), "runtime"),
    ("runtime zero", lambda s: s.submit("true", runtime=0), "runtime"),
    ("runtime unit", lambda s: s.submit("true", runtime="2w"), "runtime"),
    ("cores zero", lambda s: s.submit("true", cores=0), "cores"),
    ("cores above parallelism", lambda s: s.submit("true", cores=64), "cores"),
    ("cores text", lambda s: s.submit("true", cores="many"), "cores"),
    ("max_attempts zero", lambda s: s.submit("true", max_attempts=0), "max_attempts"),
    ("after unknown name", lambda s: s.submit("true", after=["no-such-job"]), "no-such-job"),
    ("env not a dict", lambda s: s.submit("true", env=["A=1"]), "env"),
    ("env bad name", lambda s: s.submit("true", env={"A=B": "1"}), "environment"),
    ("array negative steps", lambda s: s.array("true", steps=-3), "steps"),
    ("array zero steps", lambda s: s.array("true", steps=0), "steps"),
    ("array steps and over", lambda s: s.array("echo {{x}}", steps=3, over={"x": [1]}), "steps"),
    ("array neither steps nor over", lambda s: s.array("true"), "steps"),
    ("array over not iterable", lambda s: s.array("echo {{x}}", over=42), "over"),
    ("array over empty list", lambda s: s.array("echo {{x}}", over={"x": []}), "x"),
    ("array unknown placeholder", lambda s: s.array("echo {{y}}", over={"x": [1, 2]}), "y"),
    ("array unused parameter", lambda s: s.array("echo hi", over={"x": [1, 2]}), "x"),
    ("array bad parameter name", lambda s: s.array("echo {{a b}}", over={"a b": [1]}), "a b"),
    ("array max_concurrent zero", lambda s: s.array("true", steps=3, max_concurrent=0), "max_concurrent"),
    ("array repeated steps", lambda s: s.array("true", steps=[1, 1, 2]), "step"),
]


@pytest.mark.parametrize("case, call, fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api(session, case, call, fragment):
    with pytest.raises((ValueError, TypeError, KeyError)) as info:
        call(session)
    message = one_line(info.value.args[0] if info.value.args else str(info.value))
    assert fragment.lower() in message.lower(), message
    assert_nothing_submitted(session)


MAGIC_CASES = [
    ("unknown flag", "--frobnicate", "echo hi"),
    ("bad array spec", "--array 5-1", "echo hi"),
    ("array spec letters", "--array abc", "echo hi"),
    ("unknown after", "--after ghost", "echo hi"),
    ("over not iterable", "--over 42", "echo {{x}}"),
    ("over undefined name", "--over no_such_variable", "echo {{x}}"),
    ("bad memory", "--memory lots", "echo hi"),
    ("bad runtime", "--runtime soon", "echo hi"),
    ("empty body", "--name empty", "   \n"),
    ("array and over", "--array 3 --over grid", "echo {{x}}"),
    ("unclosed quote", "--name 'oops", "echo hi"),
]


@pytest.mark.parametrize("case, line, body", MAGIC_CASES, ids=[c[0] for c in MAGIC_CASES])
def test_magics(ip, session, case, line, body):
    magics = ip.magics_manager.registry["NbdistMagics"]
    magics.sessions.use(session)
    ip.user_ns["grid"] = {"x": [1, 2]}
    try:
        with pytest.raises(UsageError) as info:
            ip.run_cell_magic("submit", line, body)
    finally:
        magics.sessions.close_all()
    one_line(str(info.value))
    assert_nothing_submitted(session)


CLI_CASES = [
    ("run without command", ["run"]),
    ("run bad array", ["run", "--array", "x-y", "--", "true"]),
    ("run bad memory", ["run", "--memory", "lots", "--", "true"]),
    ("run bad runtime", ["run", "--runtime", "forever", "--", "true"]),
    ("run zero cores", ["run", "--cores", "0", "--", "true"]),
    ("run unknown after", ["run", "--after", "ghost", "--", "true"]),
    ("logs unknown job", ["logs", "ghost"]),
    ("kill unknown job", ["kill", "ghost"]),
    ("unknown command", ["frobnicate"]),
]


@pytest.mark.parametrize("case, argv", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli(tmp_path, capsys, case, argv):
    root = tmp_path / "root"
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" else _no_exception():
        code = cli_main(["--root", str(root), *argv])
        assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and any(line.startswith(("nbdist", "usage")) for line in err)
    assert not (root / "logs").exists() or not any(p.is_file() for p in (root / "logs").rglob("*"))
    if (root / "registry.sqlite").exists() or os.path.exists(root):
        with nbdist.Session(root=str(root), parallelism=1) as check:
            assert check.jobs() == []


class _no_exception:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return False


DISTRIBUTOR_CASES = [
    ({"memory": "2 gigs"}, "memory"),
    ({"runtime": "-5"}, "runtime"),
    ({"cores": 1.5}, "cores"),
    ({"queue": "x", "gpu": 2}, "unknown resource"),
    ({"env": "A=1"}, "env"),
    ({"max_concurrent": "lots"}, "max_concurrent"),
]


@pytest.mark.parametrize("resources, fragment", DISTRIBUTOR_CASES)
def test_distributor_resources(tmp_path, resources, fragment):
    distributor = MultiprocessDistributor("bad", parallelism=1, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match=fragment) as info:
        distributor.submit_array_to_batch_distributor("true", "bad", resources, 3)
    one_line(str(info.value))
    assert distributor.get_submitted_or_running() == set()
    with pytest.raises(ValueError, match="array_length"):
        distributor.submit_array_to_batch_distributor("true", "bad", {}, 0)
