"""joblib's ``nbdist`` backend against joblib's default ``loky``, side by side in one run (issue 19, "Speed").

- P(10,000): ``Parallel(n_jobs=2)(delayed(f)(i) for i in range(10_000))`` with a trivial ``f``, every
  result checked (target: nbdist <= 2 x loky). Each backend is timed cold (its first call: loky
  starts its workers, nbdist's session its consumer) and warm (the best of ``--repeat`` further
  calls: loky's workers reused, nbdist's session and warm workers reused). The ratio is given for both.
- G: ``GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1, 10]}, cv=5, n_jobs=2)`` on a
  2,000-row synthetic set (``make_classification``), best of ``--repeat`` after one warm-up fit,
  scores checked equal (target: nbdist <= 1.3 x loky).
- How many nbdist jobs each call made (joblib's auto-batching: far fewer than the calls).

nbdist's session root is a fresh folder under ``--root-parent`` (default: the system's temporary folder).
Each nbdist job creates four files there (its call, its two logs, its result), loky none: where
creating a file is slow, P measures the file system as much as nbdist. Some disks take 0.1-0.4 ms a
file for minutes after many deletions (a settled SSD: 10-30 µs; tmpfs: ~5 µs), so the benchmark
measures it where the root is and prints it beside the figures.

Usage: ``python benchmarks/joblib_backend.py [--n 10000] [--repeat 3] [--root-parent DIR]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from joblib import Parallel, delayed, parallel_config

import nbdist


def trivial(x: int) -> int:
    return x + 1


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def parallel_map(n: int) -> list[int]:
    values = Parallel(n_jobs=2)(delayed(trivial)(i) for i in range(n))
    assert values == [i + 1 for i in range(n)], "a wrong or missing value"
    return values


def grid_search(X: Any, y: Any) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1, 10]}, cv=5, n_jobs=2).fit(X, y)
    return search.cv_results_["mean_test_score"]


def file_creation_seconds(folder: str, files: int = 200) -> float:
    """Seconds to create (and write a byte to) one new file in ``folder`` (made here; left to the caller
    to remove: deleting files is what slows creation on some disks)."""
    os.makedirs(folder)
    start = time.perf_counter()
    for index in range(files):
        with open(os.path.join(folder, f"f{index}"), "wb") as handle:
            handle.write(b"x")
    return (time.perf_counter() - start) / files


def measure(backend: str, n: int, repeat: int, X: Any, y: Any, **config: Any) -> dict[str, Any]:
    """Cold and warm P(n), warm G, under ``parallel_config(backend=backend, **config)``."""
    with parallel_config(backend=backend, **config):
        cold, _ = timed(lambda: parallel_map(n))
        warm = min(timed(lambda: parallel_map(n))[0] for _ in range(repeat))
        scores = grid_search(X, y)  # warm-up
        grid = min(timed(lambda: grid_search(X, y))[0] for _ in range(repeat))
    return {"cold": cold, "warm": warm, "grid": grid, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="calls of the trivial function")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs of each (the best counts)")
    parser.add_argument("--root-parent", default=None, help="where the nbdist session's root is made "
                        "(default: the system's temporary folder)")
    args = parser.parse_args()
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    loky = measure("loky", args.n, args.repeat, X, y)
    with tempfile.TemporaryDirectory(prefix="nbdist-joblib-bench-", dir=args.root_parent) as folder:
        with nbdist.Session(root=f"{folder}/root", parallelism=2) as session:
            ours = measure("nbdist", args.n, args.repeat, X, y, session=session)
            jobs = session.jobs()
            p_jobs = sum(job.name == "trivial" for job in jobs) / (1 + args.repeat)
            g_jobs = sum(job.name == "fit_and_score" for job in jobs) / (1 + args.repeat)
        creation = file_creation_seconds(os.path.join(folder, "probe"))  # after the runs: they saw the same disk
    np.testing.assert_allclose(ours["scores"], loky["scores"])

    def ratio(key: str) -> str:
        return f"{ours[key] / loky[key]:6.2f} x"

    print(f"{'':28} {'loky':>9} {'nbdist':>9} {'ratio':>8}  target")
    print(f"{f'P({args.n:,}) cold':28} {loky['cold']:8.3f}s {ours['cold']:8.3f}s {ratio('cold')}  <= 2 x")
    print(f"{f'P({args.n:,}) warm (best of {args.repeat})':28} {loky['warm']:8.3f}s {ours['warm']:8.3f}s "
          f"{ratio('warm')}  <= 2 x")
    print(f"{f'G 4 C x 5 folds (best of {args.repeat})':28} {loky['grid']:8.3f}s {ours['grid']:8.3f}s "
          f"{ratio('grid')}  <= 1.3 x")
    print(f"nbdist jobs per call: P {p_jobs:.0f} for {args.n:,} calls, G {g_jobs:.0f} for 20 fits; "
          "every value and score checked")
    print(f"creating a file where the session root was ({folder}): {creation * 1e6:.0f} µs "
          "(nbdist: 4 a job; a settled SSD: 10-30 µs)")


if __name__ == "__main__":
    main()
