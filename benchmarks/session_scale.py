"""Scale of the session: ``array(steps=100_000)`` and snapshots of a 10,000-step array.

- ``array("true", steps=100_000)`` returns in <= 1 s and the process grows by <= 300 MB (RSS).
- A snapshot of a 10,000-step array (counts, one page of 50 rows, 20-line tails of one step's logs)
  costs <= 10 ms; measured while it runs and once it ended, with failures to group.

Usage: ``python benchmarks/session_scale.py [--big 100000] [--steps 10000]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time

import psutil

from nbdist import Session, State


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def big_array(session: Session, n: int) -> tuple[float, float]:
    """Seconds for ``array(steps=n)`` to return, and MB of RSS it added."""
    session.array("true", steps=1, name="warm").wait(60)
    before = rss_mb()
    started = time.perf_counter()
    array = session.array("sleep 10", steps=n, name="big")
    elapsed = time.perf_counter() - started
    time.sleep(1.0)  # a few polls over all live steps
    grown = rss_mb() - before
    array.cancel()
    array.wait(120)
    return elapsed, grown


def snapshot_costs(session: Session, n: int) -> tuple[list[float], list[float]]:
    """Snapshot timings (ms) of an n-step array while it runs, and after it ended."""
    array = session.array("echo step $NBDIST_STEP; echo warn >&2; exit $(( NBDIST_STEP % 7 == 3 ))", steps=n,
                          name="snap")
    running: list[float] = []
    while not array.done():
        started = time.perf_counter()
        session.snapshot(array, page=3, tail_lines=20)
        running.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    array.wait(600)
    assert array.state is State.FAILED
    ended: list[float] = []
    for page in range(20):
        started = time.perf_counter()
        snap = session.snapshot(array, state="FAILED" if page % 2 else None, page=page, tail_lines=20)
        ended.append((time.perf_counter() - started) * 1000)
    assert snap.failure_groups and snap.stdout_tail
    return running, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="nbdist-scale-bench-")
    with Session(parallelism=2, root=f"{folder}/root") as session:
        elapsed, grown = big_array(session, args.big)
        running, ended = snapshot_costs(session, args.steps)
    print(f"array(steps={args.big:_}) returned in {elapsed:.3f} s (target <= 1 s); RSS grew {grown:.0f} MB "
          f"(target <= 300 MB)")
    p95 = sorted(running)[int(len(running) * 0.95)]
    print(f"snapshot of a {args.steps:_}-step array: while running median {statistics.median(running):.2f} ms, "
          f"p95 {p95:.2f} ms, max {max(running):.2f} ms ({len(running)} samples); ended median "
          f"{statistics.median(ended):.2f} ms, max {max(ended):.2f} ms (target <= 10 ms)")


if __name__ == "__main__":
    main()
