"""Python calls that use real libraries: nbdist's warm workers against ProcessPoolExecutor, side by side in one run.

As in a notebook, the functions are defined in ``__main__`` and use numpy, pandas and scikit-learn
imported at the top (the kernel has them loaded; ``ProcessPoolExecutor``'s forked workers inherit
them, nbdist's workers import them on their first call and keep them). Parallelism 2, every result
checked against the value computed here, best of ``--repeat`` rounds (the first round of nbdist
includes its workers' start and imports):

- ``map`` of a numpy function (200 items), a pandas one (200) and a scikit-learn fit (50):
  ``nbdist.Executor.map`` with default chunks and with ``chunksize=1`` against
  ``ProcessPoolExecutor(2)`` (fork; its ``map`` runs one item per task). Targets (issue 22):
  <= 1.3 x with default chunks, <= 2.5 x with ``chunksize=1``.
- the trivial ``map(f, range(1000))``: <= 0.6 x ``ProcessPoolExecutor(2)``.

A JSON line of the figures ends the output.

Usage: ``python benchmarks/python_libraries.py [--repeat 2] [--scale 1.0]`` (``--scale`` multiplies the
item counts, for a quick look).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

import nbdist

PARALLELISM = 2
TARGETS = {"default": 1.3, "chunksize=1": 2.5, "trivial": 0.6}


def numpy_step(seed: int) -> float:
    """A least-squares fit and an SVD of a 200x50 matrix: BLAS and LAPACK."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((200, 50))
    b = rng.standard_normal(200)
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    return round(float(np.linalg.svd(a, compute_uv=False)[0] + coef.sum()), 6)


def pandas_step(seed: int) -> float:
    """A group-by over a 5,000-row frame."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"key": rng.integers(0, 20, 5000), "value": rng.standard_normal(5000)})
    return round(float(frame.groupby("key")["value"].agg(["mean", "std"]).to_numpy().sum()), 6)


def sklearn_step(seed: int) -> float:
    """A logistic regression fitted to 500 samples of 20 features."""
    features, labels = make_classification(n_samples=500, n_features=20, random_state=seed)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    return round(float(model.score(features, labels)), 6)


def trivial(x: int) -> int:
    return x + 1


WORKLOADS: dict[str, tuple[Callable[[int], Any], int]] = {
    "numpy": (numpy_step, 200), "pandas": (pandas_step, 200), "sklearn": (sklearn_step, 50),
}


def best_of(repeat: int, run: Callable[[], list[Any]], expected: list[Any]) -> float:
    """The fastest of ``repeat`` runs, each result checked."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        values = run()
        elapsed = time.perf_counter() - started
        assert values == expected, f"wrong result: {str(values)[:200]}"
        best = min(best, elapsed)
    return best


def measure(repeat: int, scale: float) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    work = {name: (fn, max(4, int(count * scale))) for name, (fn, count) in WORKLOADS.items()}
    expected = {name: [fn(item) for item in range(count)] for name, (fn, count) in work.items()}
    trivial_expected = [trivial(x) for x in range(1000)]
    with tempfile.TemporaryDirectory(prefix="nbdist-bench-") as folder:
        session = nbdist.Session(parallelism=PARALLELISM, root=str(Path(folder) / ".nbdist"))
        try:
            with nbdist.Executor(session=session) as pool:
                assert list(pool.map(trivial, range(20))) == trivial_expected[:20]  # the backend is up
                for name, (fn, count) in work.items():
                    items = range(count)
                    figures[name] = {
                        "nbdist": best_of(repeat, lambda: list(pool.map(fn, items)), expected[name]),
                        "nbdist_chunksize1": best_of(repeat, lambda: list(pool.map(fn, items, chunksize=1)),
                                                     expected[name]),
                    }
                figures["trivial"] = {"nbdist": best_of(repeat, lambda: list(pool.map(trivial, range(1000))),
                                                        trivial_expected)}
        finally:
            session.close()
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(PARALLELISM, mp_context=context) as peer:
        assert list(peer.map(trivial, range(20))) == trivial_expected[:20]
        for name, (fn, count) in work.items():
            figures[name]["ProcessPoolExecutor"] = best_of(repeat, lambda: list(peer.map(fn, range(count))),
                                                           expected[name])
        figures["trivial"]["ProcessPoolExecutor"] = best_of(repeat, lambda: list(peer.map(trivial, range(1000))),
                                                            trivial_expected)
    return figures


def report(figures: dict[str, dict[str, float]]) -> None:
    print(f"parallelism {PARALLELISM}; best of the rounds; ratio = nbdist / ProcessPoolExecutor(2, fork)")
    print(f"{'work':<10} {'nbdist':>9} {'chunksize=1':>12} {'PPE(2)':>9} {'ratio':>7} {'ratio cs=1':>11}")
    for name, row in figures.items():
        peer = row["ProcessPoolExecutor"]
        ratio = row["nbdist"] / peer
        target = TARGETS["trivial" if name == "trivial" else "default"]
        line = f"{name:<10} {row['nbdist']:>8.3f}s "
        line += f"{row['nbdist_chunksize1']:>11.3f}s " if "nbdist_chunksize1" in row else f"{'':>12} "
        line += f"{peer:>8.3f}s {ratio:>6.2f}x{'' if ratio <= target else '!'}"
        if "nbdist_chunksize1" in row:
            per_item = row["nbdist_chunksize1"] / peer
            line += f" {per_item:>9.2f}x{'' if per_item <= TARGETS['chunksize=1'] else '!'}"
        print(line)
    print("targets: default chunks <= 1.3x, chunksize=1 <= 2.5x, trivial <= 0.6x ('!' marks a miss)")
    print(json.dumps(figures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    report(measure(args.repeat, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
