"""A 10,000-step map of small results does not grow the kernel while it runs (nothing per step is made)."""

from __future__ import annotations

import time

import psutil

import nbdist
from nbdist import Session, State

# The bound of the issue for a 10,000-step map until its results are asked for.
GROWTH_LIMIT_MB = 50


def small(x: int) -> int:
    return x + 1


def test_a_ten_thousand_step_map_grows_the_kernel_by_less_than_fifty_mb(tmp_path):
    me = psutil.Process()
    with Session(parallelism=2, root=str(tmp_path / "root")) as session, nbdist.Executor(session=session) as pool:
        assert list(pool.map(small, range(4))) == [1, 2, 3, 4]  # warm: imports, backend, poller
        base = me.memory_info().rss
        values = pool.map(small, range(10_000), chunksize=1)  # a 10,000-step map
        array = session.jobs()[-1]
        deadline = time.monotonic() + 5
        while array.counts()["DONE"] < 50 and time.monotonic() < deadline:  # steps end and are polled
            time.sleep(0.1)
        growth = (me.memory_info().rss - base) / 2**20
        assert array.counts()["DONE"] >= 1 and len(array) == 10_000
        assert growth < GROWTH_LIMIT_MB, f"the kernel grew {growth:.1f} MB"
        array.cancel()
        values.close()
        assert array.wait(60) is not State.RUNNING
