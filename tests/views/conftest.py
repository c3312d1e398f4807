"""Fixtures of the view tests: IPython's test shell with nbdist loaded, and a session its magics use."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import nbdist


@pytest.fixture(scope="session")
def ip() -> Any:
    """The global test shell with ``%load_ext nbdist`` done (through ``nbdist.load_ipython_extension``)."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nbdist")
    return shell


@pytest.fixture()
def session(ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh session in a temporary root, used by the magics for this test only."""
    monkeypatch.chdir(tmp_path)
    session = nbdist.Session(root=str(tmp_path / ".nbdist"), parallelism=2)
    magics = ip.magics_manager.registry["NbdistMagics"]
    magics.sessions.use(session)
    try:
        yield session
    finally:
        magics.sessions.current().close()
        magics.sessions.close_all()
        nbdist.set_default_session(None)
        session.close()
