"""Torch calls on an NVIDIA GPU: nbdist's warm workers against ProcessPoolExecutor(4, spawn), in one run.

The reference is issue 22's table (an H200, parallelism 4): 16 small calls that each make a 1024²
tensor on the GPU (``map(chunksize=1)``), 8 heavy calls of 20 bf16 8192² matmuls, and one such call
through ``submit(...).result()`` twice. A warm worker keeps torch and its CUDA context, so only the
first call of a worker pays them. Targets: the maps <= 1.2 x ``ProcessPoolExecutor(4, spawn)``; the
second ``submit(...).result()`` <= 0.3 s. Every result is checked; a JSON line of the figures ends the
output. The functions are defined in ``__main__``, as in a notebook.

``--gpus-per-call 1`` gives each call a GPU of its own (``gpus=1``: on a machine with fewer GPUs than
the parallelism, calls then wait for one); the default 0 lets every call see the machine's GPUs, as
``ProcessPoolExecutor``'s workers do.

Usage (a machine with an NVIDIA GPU and torch): ``python benchmarks/gpu_calls.py [--gpus-per-call 0]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbdist

PARALLELISM = 4
SMALL_CALLS = 16
HEAVY_CALLS = 8
TARGETS = {"small": 1.2, "heavy": 1.2, "second_submit_s": 0.3}


def small(i: int) -> tuple[float, int]:
    """A 1024x1024 tensor on the GPU; its sum (checked) and the process that made it."""
    import torch

    tensor = torch.full((1024, 1024), float(i), device="cuda")
    return float(tensor.sum().item()), os.getpid()


def heavy(i: int) -> int:
    """20 bf16 8192x8192 matmuls."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
    return i


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def check_small(values: list[tuple[float, int]]) -> set[int]:
    assert [value for value, _ in values] == [float(i) * 1024 * 1024 for i in range(SMALL_CALLS)], values
    return {pid for _, pid in values}


def run_nbdist(folder: str, gpus: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    session = nbdist.Session(parallelism=PARALLELISM, root=str(Path(folder) / ".nbdist"))
    try:
        options = {"gpus": gpus} if gpus else {}
        with nbdist.Executor(session=session, **options) as pool:
            elapsed, values = timed(lambda: list(pool.map(small, range(SMALL_CALLS), chunksize=1)))
            figures["small_s"], figures["small_pids"] = elapsed, len(check_small(values))
            elapsed, values = timed(lambda: list(pool.map(heavy, range(HEAVY_CALLS), chunksize=1)))
            assert values == list(range(HEAVY_CALLS)), values
            figures["heavy_s"] = elapsed
            first, value = timed(lambda: pool.submit(small, 1).result())
            assert value[0] == 1024.0 * 1024
            second, value = timed(lambda: pool.submit(small, 1).result())
            assert value[0] == 1024.0 * 1024
            figures["first_submit_s"], figures["second_submit_s"] = first, second
    finally:
        session.close()
    return figures


def run_process_pool() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with concurrent.futures.ProcessPoolExecutor(PARALLELISM, mp_context=context) as pool:
        elapsed, values = timed(lambda: list(pool.map(small, range(SMALL_CALLS))))
        figures["small_s"], figures["small_pids"] = elapsed, len(check_small(values))
        elapsed, values = timed(lambda: list(pool.map(heavy, range(HEAVY_CALLS))))
        assert values == list(range(HEAVY_CALLS)), values
        figures["heavy_s"] = elapsed
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-call", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to measure")
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, parallelism {PARALLELISM}")
    with tempfile.TemporaryDirectory(prefix="nbdist-gpu-bench-") as folder:
        ours = run_nbdist(folder, args.gpus_per_call)
    peer = run_process_pool()
    for key in ("small", "heavy"):
        ratio = ours[f"{key}_s"] / peer[f"{key}_s"]
        print(f"{key:<6} nbdist {ours[f'{key}_s']:.2f} s  ProcessPoolExecutor(4, spawn) {peer[f'{key}_s']:.2f} s  "
              f"{ratio:.2f}x (target <= {TARGETS[key]}x){'' if ratio <= TARGETS[key] else ' MISSED'}")
    print(f"small calls ran in {ours['small_pids']} nbdist worker(s), {peer['small_pids']} pool process(es)")
    print(f"submit(...).result(): first {ours['first_submit_s']:.3f} s, second {ours['second_submit_s']:.3f} s "
          f"(target <= {TARGETS['second_submit_s']} s)")
    print(json.dumps({"nbdist": ours, "ProcessPoolExecutor": peer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
