"""Python calls through nbdist against its peers, side by side in one run (issue 11, "Speed and memory").

- M(1000): ``map(f, range(1000))`` with a trivial ``f``, parallelism 2: ``nbdist.Executor.map`` against
  ``ProcessPoolExecutor(2).map`` (target <= 3 x), dask ``LocalCluster(n_workers=2, processes=True)``,
  ipyparallel with 2 engines (load-balanced view) and submitit's ``LocalExecutor`` (nbdist must be
  faster than those three). Every result is checked. Start-up is not timed: each peer is started,
  warmed with a small map, then timed. nbdist's ``map`` runs with its default ``chunksize=None``
  (about 4 steps per task slot, at most 100 items each); one run with ``chunksize=1`` (one step,
  one fork, per item) is shown beside it.
- R: one ``submit(f, 1).result()`` round trip, median (target <= 20 ms); R': a call of 10 ms waited on
  through ``concurrent.futures.as_completed`` (the Future itself, as joblib's callbacks and ``wait()`` do).
- H: 20 calls of ~30 ms CPU at parallelism 2 against the ideal measured in the same run: 10 x the
  fastest run of two calls side by side in two forked processes (target <= 1.05 x); also with
  ``chunksize=1``.
- Memory: a 10,000-step map of small results, in a fresh interpreter standing for the kernel: its
  RSS growth from before the submit until every step has ended, results not yet asked for
  (target <= 50 MB); then the results are read and checked.

submitit's ``LocalExecutor`` has no parallelism setting and starts two interpreters per call, so it
runs ``--submitit-n`` calls (default 100) two at a time and its time is scaled to 1000 (marked).

Usage: ``python benchmarks/python_map.py [--n 1000] [--repeat 3] [--submitit-n 100] [--memory-steps 10000]``
(peers missing from the environment are skipped with a line; ``pip install 'nbdist[bench]'``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

import nbdist

BURN = 3_000_000  # sum(range(BURN)): ~30 ms of CPU on these machines
PARALLELISM = 2
NAP_SECONDS = 0.01  # the call of R': long enough to be running when its submit looks


def trivial(x: int) -> int:
    return x + 1


def burn(n: int) -> int:
    return sum(range(n))


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def best_of(repeat: int, run: Callable[[], Any], expected: Any) -> float:
    """Median wall time of ``repeat`` runs, each result checked against ``expected``."""
    times = []
    for _ in range(repeat):
        elapsed, value = timed(run)
        assert value == expected, f"wrong result: {str(value)[:200]}"
        times.append(elapsed)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------- peers
@contextlib.contextmanager
def nbdist_executor(root: Path) -> Iterator[nbdist.Executor]:
    session = nbdist.Session(parallelism=PARALLELISM, root=str(root / ".nbdist"))
    try:
        with nbdist.Executor(session=session) as executor:
            yield executor
    finally:
        session.close()


def nap(x: int) -> int:
    time.sleep(NAP_SECONDS)
    return x


def round_trips(executor: Any) -> tuple[float, float]:
    """Medians of 30 ``submit(f, 1).result()`` and of 30 ``as_completed([submit(nap, 1)])`` (a wait that
    goes to the Future itself, not through ``result()``; ``nap`` sleeps 10 ms, so it is not over by the
    time the submit's own look comes)."""
    trips, completions = [], []
    for _ in range(30):
        elapsed, value = timed(lambda: executor.submit(trivial, 1).result())
        assert value == 2
        trips.append(elapsed)
    for _ in range(30):
        elapsed, done = timed(lambda: next(concurrent.futures.as_completed([executor.submit(nap, 1)])))
        assert done.result() == 1
        completions.append(elapsed)
    return statistics.median(trips), statistics.median(completions)


def peer_nbdist(root: Path, n: int, repeat: int, figures: dict[str, Any]) -> None:
    with nbdist_executor(root) as executor:
        assert list(executor.map(trivial, range(20))) == [trivial(x) for x in range(20)]  # warm
        figures["nbdist"] = best_of(repeat, lambda: list(executor.map(trivial, range(n))),
                                    [trivial(x) for x in range(n)])
        figures["nbdist_per_item"] = best_of(1, lambda: list(executor.map(trivial, range(n), chunksize=1)),
                                             [trivial(x) for x in range(n)])
        figures["nbdist_round_trip"], figures["nbdist_as_completed"] = round_trips(executor)
        figures["nbdist_H"] = best_of(repeat, lambda: list(executor.map(burn, [BURN] * 20)), [burn(BURN)] * 20)
        figures["nbdist_H_per_item"] = best_of(repeat, lambda: list(executor.map(burn, [BURN] * 20, chunksize=1)),
                                               [burn(BURN)] * 20)


def peer_process_pool(n: int, repeat: int, figures: dict[str, Any]) -> None:
    with concurrent.futures.ProcessPoolExecutor(PARALLELISM) as pool:
        assert list(pool.map(trivial, range(20))) == [trivial(x) for x in range(20)]
        figures["ProcessPoolExecutor"] = best_of(repeat, lambda: list(pool.map(trivial, range(n))),
                                                 [trivial(x) for x in range(n)])
        figures["ProcessPoolExecutor_round_trip"], figures["ProcessPoolExecutor_as_completed"] = round_trips(pool)


def peer_dask(n: int, repeat: int, figures: dict[str, Any]) -> None:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=PARALLELISM, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        def run(count: int) -> list[int]:
            return client.gather(client.map(trivial, range(count), pure=False))

        assert run(20) == [trivial(x) for x in range(20)]
        figures["dask"] = best_of(repeat, lambda: run(n), [trivial(x) for x in range(n)])


def peer_ipyparallel(n: int, repeat: int, figures: dict[str, Any]) -> None:
    import ipyparallel

    cluster = ipyparallel.Cluster(n=PARALLELISM, log_level=40)
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(PARALLELISM, timeout=120)
        view = client.load_balanced_view()
        assert view.map_sync(trivial, range(20)) == [trivial(x) for x in range(20)]
        figures["ipyparallel"] = best_of(repeat, lambda: list(view.map_sync(trivial, range(n))),
                                         [trivial(x) for x in range(n)])
    finally:
        client.close()
        cluster.stop_cluster_sync()


def peer_submitit(root: Path, n: int, scaled_to: int, figures: dict[str, Any]) -> None:
    import submitit

    executor = submitit.LocalExecutor(folder=str(root / "submitit"))
    executor.update_parameters(timeout_min=10)

    def one(x: int) -> int:  # two at a time: LocalExecutor itself starts every job at once
        return executor.submit(trivial, x).result()

    with concurrent.futures.ThreadPoolExecutor(PARALLELISM) as threads:
        assert list(threads.map(one, range(2))) == [1, 2]
        elapsed, values = timed(lambda: list(threads.map(one, range(n))))
    assert values == [trivial(x) for x in range(n)]
    figures["submitit"] = elapsed * scaled_to / n


# ------------------------------------------------------------------------------------- ideal and memory
def ideal_pair(repeat: int) -> float:
    """The fastest wall time of two ``burn`` calls side by side in two forked processes."""
    best = float("inf")
    for _ in range(repeat * 3):
        started = time.perf_counter()
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                burn(BURN)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        best = min(best, time.perf_counter() - started)
    return best


def memory_probe(root: Path, steps: int) -> dict[str, float]:
    """The kernel's side of the memory figure (run in a fresh interpreter by :func:`memory`)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # as a notebook's functions travel
    me = psutil.Process()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], me.memory_info().rss)

    with nbdist_executor(root) as executor:
        assert executor.submit(trivial, 1).result() == 2  # the session and its backend are up
        before = me.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        array = executor.array(trivial, range(steps))
        array.wait()
        elapsed = time.perf_counter() - started
        after = me.memory_info().rss
        done.set()
        sampler.join()
        results = array.results()
        assert results == [trivial(x) for x in range(steps)]
        with_results = me.memory_info().rss
    mb = 2**20
    return {"growth_mb": (after - before) / mb, "peak_growth_mb": (max(peak[0], after) - before) / mb,
            "with_results_mb": (with_results - before) / mb, "seconds": elapsed}


def memory(root: Path, steps: int) -> dict[str, float]:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import python_map; "
            f"from pathlib import Path; print(json.dumps(python_map.memory_probe(Path({str(root)!r}), {steps})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- main
def run_peer(name: str, run: Callable[[], None]) -> None:
    try:
        run()
    except ImportError as exc:
        print(f"  ({name} skipped: {exc}; pip install 'nbdist[bench]')")


def report(figures: dict[str, Any], n: int, repeat: int, submitit_n: int, mem: dict[str, float] | None,
           load: str) -> None:
    pool = figures["ProcessPoolExecutor"]
    print(f"M({n}): map(f, range({n})), trivial f, parallelism {PARALLELISM}, median of {repeat}   [{load}]")
    print(f"  ProcessPoolExecutor(2)  {pool:8.3f} s")
    print(f"  nbdist.Executor         {figures['nbdist']:8.3f} s   ratio {figures['nbdist'] / pool:5.2f} x "
          f"ProcessPoolExecutor (target <= 3)")
    print(f"  nbdist, chunksize=1     {figures['nbdist_per_item']:8.3f} s   ratio "
          f"{figures['nbdist_per_item'] / pool:5.2f} x (one step per item; one run)")
    for peer in ("dask", "ipyparallel", "submitit"):
        if peer in figures:
            mark = f" (n={submitit_n}, scaled to {n})" if peer == "submitit" else ""
            verdict = "faster" if figures["nbdist"] < figures[peer] else "SLOWER"
            print(f"  {peer:<23} {figures[peer]:8.3f} s   nbdist is {figures[peer] / figures['nbdist']:5.2f} x "
                  f"faster{mark} ({verdict}; target: faster)")
    print("R: submit(f, 1).result(), median of 30:")
    print(f"  nbdist                  {figures['nbdist_round_trip'] * 1000:8.1f} ms (target <= 20)")
    print(f"  ProcessPoolExecutor(2)  {figures['ProcessPoolExecutor_round_trip'] * 1000:8.1f} ms")
    print(f"R': next(as_completed([submit(nap, 1)])), a {NAP_SECONDS * 1000:.0f} ms call, median of 30 "
          "(the Future waited on, not result()):")
    print(f"  nbdist                  {figures['nbdist_as_completed'] * 1000:8.1f} ms")
    print(f"  ProcessPoolExecutor(2)  {figures['ProcessPoolExecutor_as_completed'] * 1000:8.1f} ms")
    ideal = 10 * figures["pair"]
    print("H: 20 calls of ~30 ms CPU, parallelism 2:")
    print(f"  ideal                   {ideal:8.3f} s   (10 x the fastest run of two calls side by side)")
    print(f"  nbdist                  {figures['nbdist_H']:8.3f} s   ratio {figures['nbdist_H'] / ideal:5.2f} x ideal "
          f"(target <= 1.05)")
    print(f"  nbdist, chunksize=1     {figures['nbdist_H_per_item']:8.3f} s   ratio "
          f"{figures['nbdist_H_per_item'] / ideal:5.2f} x ideal")
    if mem is not None:
        print(f"Memory: {mem['steps']:.0f}-step map of small results, until results are asked for "
              f"({mem['seconds']:.1f} s to run):")
        print(f"  kernel RSS growth       {mem['growth_mb']:8.1f} MB (peak {mem['peak_growth_mb']:.1f} MB; "
              f"target <= 50); with the results read {mem['with_results_mb']:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--submitit-n", type=int, default=100)
    parser.add_argument("--memory-steps", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nbdist-pymap-"))  # a fresh parent folder: see the ext4 caveat
    load = "load average {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    figures: dict[str, Any] = {}
    peer_process_pool(args.n, args.repeat, figures)
    peer_nbdist(root / "nbdist", args.n, args.repeat, figures)
    figures["pair"] = ideal_pair(args.repeat)
    run_peer("dask", lambda: peer_dask(args.n, args.repeat, figures))
    run_peer("ipyparallel", lambda: peer_ipyparallel(args.n, args.repeat, figures))
    if args.submitit_n:
        run_peer("submitit", lambda: peer_submitit(root, args.submitit_n, args.n, figures))
    mem = None
    if args.memory_steps:
        mem = {"steps": args.memory_steps, **memory(root / "memory", args.memory_steps)}
    report(figures, args.n, args.repeat, args.submitit_n, mem, load)
    print(f"(run folder {root})")


if __name__ == "__main__":
    main()
