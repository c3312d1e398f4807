"""Helpers for the tests that run against the real single-node Slurm of ``scripts/slurm-local.sh``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

from nbdist.slurm import SlurmDistributor

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-local.sh"
SLURM_DIR = os.environ.get("NBDIST_SLURM_DIR", "/tmp/nbdist-slurm")
SLURM_TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


def slurm_unreachable_reason() -> str | None:
    """None when ``sinfo`` answers; otherwise why the Slurm tests cannot run."""
    if shutil.which("sinfo") is None:
        return "the Slurm client (sinfo) is not installed; run scripts/slurm-local.sh start (needs root + apt)"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if result.returncode != 0 or not result.stdout.strip():
        return (f"no Slurm controller answers (SLURM_CONF={os.environ.get('SLURM_CONF')}): "
                f"{result.stderr.strip()[:200]}; start one with scripts/slurm-local.sh start")
    return None


def use_local_slurm() -> Iterator[None]:
    """Module fixture body: the cluster of scripts/slurm-local.sh (SLURM_CONF from the environment,
    else its default folder), or a skip saying why there is none (a failure under NBDIST_REQUIRE_ALL)."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        default_conf = os.path.join(SLURM_DIR, "slurm.conf")
        if "SLURM_CONF" not in os.environ and os.path.exists(default_conf):
            patch.setenv("SLURM_CONF", default_conf)
        reason = slurm_unreachable_reason()
        if reason:
            pytest.skip(reason)
        yield


def live_jobs() -> list[str]:
    """Jobs still pending, running or completing on the cluster (squeue's default states)."""
    result = subprocess.run(["squeue", "-h", "-o", "%i %T"], check=False, capture_output=True, text=True, timeout=30)
    return [line for line in result.stdout.splitlines() if line.strip()]


def wait_no_live_jobs(timeout: float = 30.0) -> list[str]:
    """Wait until squeue lists no live job; return what is still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = live_jobs()
        if not jobs or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def cancel_all_jobs() -> None:
    """scancel whatever is left (a failed test must not leave work for the next one)."""
    ids = sorted({line.split()[0].split("_")[0] for line in live_jobs()})
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=30)


def wait_done(distributor: SlurmDistributor, ids: list[str], timeout: float = 60.0) -> dict[str, dict]:
    """Wait until none of ``ids`` is queued or running; return their reports."""
    deadline = time.monotonic() + timeout
    while distributor.get_submitted_or_running(ids):
        if time.monotonic() > deadline:
            live = distributor.get_task_reports(distributor.get_submitted_or_running(ids))
            raise AssertionError(f"still live after {timeout} s: {live}")
        time.sleep(0.1)
    return distributor.get_task_reports(ids)


def wait_state(distributor: SlurmDistributor, distributor_id: str, state: str, timeout: float = 30.0) -> None:
    """Wait until a task reaches ``state`` (e.g. ``R``)."""
    deadline = time.monotonic() + timeout
    while distributor.get_remote_exit_info(distributor_id)[0] != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{distributor_id} not {state} after {timeout} s: "
                                 f"{distributor.get_task_reports([distributor_id])}")
        time.sleep(0.1)


def counting_wrappers(folder: Path, log: Path) -> None:
    """Put ``sbatch``/``squeue``/… wrappers in ``folder`` that log one line per call and exec the real tool."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in SLURM_TOOLS:
        real = shutil.which(tool)
        assert real is not None, tool
        wrapper = folder / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $#" >> \'{log}\'\nexec \'{real}\' "$@"\n')
        wrapper.chmod(0o755)


def cli_calls(log: Path) -> dict[str, int]:
    """How many times each wrapped tool ran."""
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def kill_node(node: str) -> None:
    """A node dies: ``slurm-local.sh kill-node`` SIGKILLs its slurmd, and here its slurmstepds too.

    The script looks for ``SLURMD_NODENAME`` in slurmstepd's own environment, which slurmstepd does
    not have (its jobs do), so on Slurm 22.05 it leaves them running; they are found here through the
    environment of their children. Killed with SIGKILL, as by a power cut: the ``nbdist-worker`` under
    each then kills its task (it asked the kernel to be told when its slurmstepd dies).
    """
    subprocess.run([str(SCRIPT), "kill-node", node], check=True, capture_output=True, timeout=60)
    mark = f"SLURMD_NODENAME={node}".encode()
    for stepd in Path("/proc").glob("[0-9]*"):
        try:
            if stepd.joinpath("comm").read_text().strip() != "slurmstepd":
                continue
            children = stepd.joinpath("task", stepd.name, "children").read_text().split()
            if any(mark in Path(f"/proc/{child}/environ").read_bytes().split(b"\0") for child in children):
                os.kill(int(stepd.name), 9)
        except (OSError, ValueError):
            continue
