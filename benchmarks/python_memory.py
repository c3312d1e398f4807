"""How much a 10,000-step map of small results grows the kernel, until and after its results are read.

    .venv/bin/python benchmarks/python_memory.py [--steps 10000] [--parallelism 2]

Prints JSON: the kernel's RSS growth (MB) right after ``Executor.map`` returned, when every step
ended (results not asked for yet; the bound is 50 MB), and after ``list(values)``; plus wall times.
A fresh temporary root per run (see environment-traps: a reused folder is slower to fill).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import psutil

import nbdist


def small(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()
    me = psutil.Process()
    with tempfile.TemporaryDirectory() as root, nbdist.Session(parallelism=args.parallelism, root=root) as session:
        with nbdist.Executor(session=session) as pool:
            assert list(pool.map(small, range(4))) == [1, 2, 3, 4]  # imports and the backend are warm
            base = me.memory_info().rss
            start = time.perf_counter()
            values = pool.map(small, range(args.steps), chunksize=1)  # one step per item
            submitted = me.memory_info().rss
            array = session.jobs()[-1]
            array.wait()
            ended = time.perf_counter()
            finished = me.memory_info().rss
            results = list(values)
            read = me.memory_info().rss
            assert results == [x + 1 for x in range(args.steps)]
    mb = 1024 * 1024
    print(json.dumps({
        "steps": args.steps, "parallelism": args.parallelism,
        "rss_growth_mb": {"after_submit": round((submitted - base) / mb, 1),
                          "all_ended_results_not_read": round((finished - base) / mb, 1),
                          "after_reading_results": round((read - base) / mb, 1)},
        "wall_s": {"map_to_all_ended": round(ended - start, 2), "reading_results": round(time.perf_counter() - ended, 2)},
    }))


if __name__ == "__main__":
    main()
