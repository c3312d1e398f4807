"""The session on a real single-node Slurm: jobs outlive a SIGKILLed kernel and are adopted by attach.

Skips without a reachable Slurm (``scripts/slurm-local.sh start``), like ``tests/test_slurm.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from slurm_helpers import live_jobs, use_local_slurm

import nbdist
from nbdist import Array, State

pytestmark = pytest.mark.slurm

KERNEL = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        session = Session(backend="slurm", root=sys.argv[1])
        job = session.submit("sleep 2; echo adopted", name="survivor")
        arr = session.array("echo step {{x}}", over={"x": ["a", "b"]}, name="sweep")
        dependent = session.submit("echo after", name="dependent", after=[job])
        while job.state is not job.state.RUNNING:
            time.sleep(0.05)
        time.sleep(0.3)
        print("ready", flush=True)
        time.sleep(60)
    """
)


slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


def test_slurm_jobs_survive_the_kernel_and_are_adopted(tmp_path):
    root = str(tmp_path / "root")
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    kernel = subprocess.Popen([sys.executable, str(script), root], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert kernel.stdout.readline().strip() == "ready"
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
        session = nbdist.attach(root)
        survivor = session.get("survivor")
        assert survivor.state in (State.RUNNING, State.DONE)  # not KILLED: Slurm jobs outlive the kernel
        assert survivor.wait(60) is State.DONE and survivor.stdout() == "adopted\n"
        sweep = session.get("sweep")
        assert sweep.wait(60) is State.DONE and [step.stdout() for step in sweep] == ["step a\n", "step b\n"]
        dependent = session.get("dependent")  # held by the dead kernel's session: taken over, then run
        assert dependent.wait(60) is State.DONE and dependent.stdout() == "after\n"
    finally:
        kernel.kill()
        kernel.stdout.close()
        ours = set()
        if session is not None:
            steps = [job for handle in session.jobs() for job in (handle if isinstance(handle, Array) else [handle])]
            ours = {job.distributor_id.split("_")[0] for job in steps if job.distributor_id}
            session.close()
        nbdist.set_default_session(None)
        _no_job_of_ours_left(ours)


def _no_job_of_ours_left(ours: set[str], timeout: float = 30.0) -> None:
    """Only this test's jobs are checked (and cancelled): other work may share the cluster."""
    deadline = time.monotonic() + timeout
    while True:
        left = [line for line in live_jobs() if line.split()[0].split("_")[0] in ours]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if left:
        subprocess.run(["scancel", *sorted(ours)], check=False, capture_output=True, timeout=30)
    assert not left, f"jobs left in squeue: {left}"
