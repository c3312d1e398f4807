"""Load: a 100,000-step array of trivial tasks through the distributor, against ``xargs -P 2``.

Checks that exactly N exit codes are recorded (none lost, none duplicated), and prints the time
ratio against xargs doing the same work (per-task .out/.err/.rc files) and the distributor's
memory growth. Usage: ``python benchmarks/load_100k.py [--n 100000]``
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import tempfile
import time
from pathlib import Path

import psutil
from throughput import run_xargs

from nbdist.multiprocess import MultiprocessDistributor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nbdist-load-"))
    (root / "xargs").mkdir()
    xargs_s = run_xargs(args.n, root / "xargs", "true")

    rss_before = psutil.Process().memory_info().rss
    distributor = MultiprocessDistributor("load", parallelism=2, log_dir=str(root / "nbdist"))
    distributor.start()
    started = time.perf_counter()
    ids = distributor.submit_array_to_batch_distributor("true", "load", {}, args.n)
    submit_s = time.perf_counter() - started
    while distributor.get_submitted_or_running():
        time.sleep(0.05)
    nbdist_s = time.perf_counter() - started
    reports = distributor.get_task_reports(ids.values())
    rss_after = psutil.Process().memory_info().rss
    distributor.stop()

    letters = collections.Counter(report["status"] for report in reports.values())
    exit_codes = [report["exit_code"] for report in reports.values()]
    logs = len(list((root / "nbdist").glob("load.o*")))
    figures = {
        "n": args.n,
        "xargs_s": round(xargs_s, 2),
        "nbdist_s": round(nbdist_s, 2),
        "ratio": round(nbdist_s / xargs_s, 2),
        "submit_s": round(submit_s, 3),
        "exit_codes": len(exit_codes),
        "exit_code_0": exit_codes.count(0),
        "stdout_files": logs,
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"{args.n} steps of `true`, parallelism 2")
    print(f"  xargs -P 2   {xargs_s:.2f} s")
    print(f"  nbdist       {nbdist_s:.2f} s   ratio {figures['ratio']:.2f} x xargs; submit took {submit_s * 1000:.0f} ms")
    print(f"  exit codes recorded {len(exit_codes)} (exit 0: {figures['exit_code_0']}), states {dict(letters)}, "
          f"stdout files {logs}")
    print(f"  memory growth of the distributor's process {figures['rss_growth_mb']} MB")
    assert len(reports) == args.n == figures["exit_code_0"] == logs, "a step was lost or duplicated"
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
