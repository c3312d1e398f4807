"""A chunked map on a real Slurm: each array task runs its chunk of items (from ``SLURM_ARRAY_TASK_ID``).

Skips without a reachable Slurm (``scripts/slurm-local.sh start``), like ``test_session_slurm.py``.
"""

from __future__ import annotations

import pytest
from slurm_helpers import use_local_slurm

import nbdist
from nbdist import State

pytestmark = pytest.mark.slurm

slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


class ItemError(Exception):
    pass


def test_a_chunked_map_runs_each_chunk_as_one_array_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbdist.set_default_session(None)

    def on_node(x):
        import os

        if x == 3:
            raise ItemError("item 3")
        return x * 10, os.environ["SLURM_ARRAY_TASK_ID"]

    with nbdist.Executor(backend="slurm") as pool:
        got = []
        with pytest.raises(ItemError, match="item 3"):
            for value in pool.map(on_node, range(5), chunksize=2, timeout=180):
                got.append(value)
        assert [value for value, _ in got] == [0, 10, 20]
        assert len({task for _, task in got[:2]}) == 1 and got[2][1] != got[0][1]  # one task per chunk
        array = pool.session.jobs()[-1]
        assert len(array) == 3 and array.wait(180) in (State.FAILED, State.KILLED)
