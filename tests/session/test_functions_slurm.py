"""The same function API on a real Slurm: calls and maps run on the compute nodes, results come back
through the shared log folder, and after the kernel is gone ``attach()`` gives them back.

Skips without a reachable Slurm (``scripts/slurm-local.sh start``), like ``test_session_slurm.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
from slurm_helpers import use_local_slurm

import nbdist
from nbdist import Session, State

pytestmark = pytest.mark.slurm

slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


class NodeError(Exception):
    pass


def test_a_function_and_a_map_run_on_slurm_with_the_kernels_interpreter_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbdist.set_default_session(None)
    threshold = 10

    def where(x):
        import os

        if x > threshold:
            raise NodeError(f"{x} > {threshold}")
        return x * 2, sys.executable, os.environ.get("SLURM_JOB_ID") is not None, list(sys.path)

    with nbdist.Executor(backend="slurm") as pool:  # a Slurm session of its own, on the default root
        value, python, on_slurm, path = pool.submit(where, 4).result(timeout=120)
        assert (value, python, on_slurm) == (8, sys.executable, True)
        assert set(sys.path) <= set(path)  # the kernel's sys.path reaches the node
        assert [item[0] for item in pool.map(where, [1, 2, 3], timeout=120)] == [2, 4, 6]
        failing = pool.submit(where, 11)
        with pytest.raises(NodeError, match="11 > 10"):
            failing.result(timeout=120)
        assert failing.state is State.FAILED and failing.exit_code == 1
        assert pool.session.backend_name == "slurm" and pool.session.root == str(tmp_path / ".nbdist")
    assert pool.session.closed  # shutdown closed the session it made


LATER = textwrap.dedent("""
    import sys, nbdist
    session = nbdist.attach(sys.argv[1])
    print(session.get("late").result(timeout=120), session.get("later").results(timeout=120))
    session.close()
""")


def test_work_that_finishes_while_the_kernel_is_gone_is_read_after_attach(tmp_path):
    root = str(tmp_path / "root")
    with Session(backend="slurm", root=root) as first:
        pool = nbdist.Executor(session=first, name="late")
        job = pool.submit(lambda: (__import__("time").sleep(2), socket.gethostname() != "")[1])
        array = nbdist.Executor(session=first, name="later").array(lambda x: x + 1, [1, 2])
        assert not job.done() and not array.done()
    # The first kernel is gone (its session closed): Slurm goes on; a new process reads the values.
    done = subprocess.run([sys.executable, "-c", LATER, root], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True [2, 3]"
