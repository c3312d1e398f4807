"""W(N) through ``Session.array`` (registry, poller and all) against ``xargs -P 2``, side by side in one run.

W(N): N tasks ``echo task $i``, parallelism 2, each task's stdout and stderr in its own file, done when
every step's exit code is known to the session (``array.wait()`` returned). Target: W(1000) <= 1.5 x xargs.

Usage: ``python benchmarks/session_throughput.py [--n 1000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from throughput import run_xargs  # the same peer as the backend benchmark

from nbdist import Session, State


def run_session(session: Session, n: int, name: str) -> float:
    """The same work as one array of the session; done when the session knows every exit code."""
    started = time.perf_counter()
    array = session.array("echo task $NBDIST_STEP", steps=n, name=name)
    state = array.wait(600)
    elapsed = time.perf_counter() - started
    assert state is State.DONE, array.counts()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nbdist-session-bench-"))  # fresh folders only (ext4 caveat)
    times: dict[str, list[float]] = {"xargs": [], "session": []}
    with Session(parallelism=2, root=str(folder / "root")) as session:
        run_session(session, 50, "warm")
        for rep in range(args.repeat):
            target = folder / f"xargs-{rep}"
            target.mkdir()
            times["xargs"].append(run_xargs(args.n, target, "echo task $1"))
            times["session"].append(run_session(session, args.n, f"w{rep}"))
    med = {key: statistics.median(values) for key, values in times.items()}
    ratio = med["session"] / med["xargs"]
    print(f"W({args.n}), parallelism 2, median of {args.repeat}:")
    print(f"  xargs -P 2        {med['xargs']:.3f} s")
    print(f"  Session.array     {med['session']:.3f} s   ratio {ratio:.2f} x xargs (target <= 1.5)")


if __name__ == "__main__":
    main()
