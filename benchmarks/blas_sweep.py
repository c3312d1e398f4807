"""A numpy sweep whose steps use BLAS: threads follow ``cores``, side by side in one run.

12 least-squares bootstraps (``numpy.linalg.lstsq`` on resampled rows), ``cores=1``, parallelism 2:

- nbdist as it is: the task's thread-count variables (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, …) are
  set to its ``cores``;
- nbdist with ``OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1`` set by hand in ``env`` (target: the first
  is <= 1.1 x this);
- ``ProcessPoolExecutor(2)`` (fork) left to its defaults: every worker's BLAS starts one thread per core
  (target: nbdist is faster).

Each result is checked against the same bootstrap computed here. Best of ``--repeat`` rounds, after one
warm-up round each (nbdist's workers import numpy once). The gap to ProcessPoolExecutor grows with the
machine's cores: on 2 cores two tasks can oversubscribe by at most 2 x.

Usage: ``python benchmarks/blas_sweep.py [--repeat 2] [--rows 4000] [--cols 400]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import tempfile
import time

import numpy as np

import nbdist

STEPS = 12
ROWS, COLS = 4000, 400


def bootstrap(seed: int, rows: int = ROWS, cols: int = COLS) -> float:
    """One bootstrap of a least-squares fit: resample rows, solve, return the coefficients' norm."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols))
    y = x @ rng.standard_normal(cols) + rng.standard_normal(rows)
    pick = np.random.default_rng(seed).integers(0, rows, rows)
    total = 0.0
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(x[pick], y[pick], rcond=None)
        total += float(np.linalg.norm(coef))
    return total


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--cols", type=int, default=COLS)
    args = parser.parse_args()
    seeds = list(range(STEPS))
    expected = [bootstrap(seed, args.rows, args.cols) for seed in seeds[:2]]

    def check(values: list[float]) -> None:
        assert len(values) == STEPS and np.allclose(values[:2], expected), values[:2]

    root = tempfile.mkdtemp(prefix="nbdist-blas-")
    by_hand = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {"nbdist": [], "nbdist_by_hand": [], "ppe_defaults": []}
    with nbdist.Session(parallelism=2, root=f"{root}/.nbdist") as session:
        def run_nbdist(env: dict[str, str] | None) -> None:
            with nbdist.Executor(session=session, cores=1, env=env) as pool:
                check(list(pool.map(bootstrap, seeds, [args.rows] * STEPS, [args.cols] * STEPS, chunksize=1)))

        def run_ppe() -> None:
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
                check(list(pool.map(bootstrap, seeds, [args.rows] * STEPS, [args.cols] * STEPS)))

        runs = {"nbdist": lambda: run_nbdist(None), "nbdist_by_hand": lambda: run_nbdist(by_hand),
                "ppe_defaults": run_ppe}
        for run in runs.values():
            run()  # warm-up: workers start and import numpy
        for _ in range(args.repeat):
            for name, run in runs.items():
                times[name].append(timed(run))
    best = {name: min(values) for name, values in times.items()}
    print(f"{STEPS} lstsq bootstraps ({args.rows}x{args.cols}), cores=1, parallelism 2, best of {args.repeat}:")
    print(f"  nbdist (threads follow cores)        {best['nbdist']:.2f} s   "
          f"{best['nbdist'] / best['nbdist_by_hand']:.2f} x by hand (target <= 1.1)")
    print(f"  nbdist, thread variables set by hand {best['nbdist_by_hand']:.2f} s")
    print(f"  ProcessPoolExecutor(2), defaults     {best['ppe_defaults']:.2f} s   "
          f"nbdist is {best['ppe_defaults'] / best['nbdist']:.2f} x faster (target > 1)")
    print(json.dumps({name: round(value, 3) for name, value in best.items()}))


if __name__ == "__main__":
    main()
