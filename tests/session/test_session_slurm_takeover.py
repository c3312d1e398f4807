"""The session on the real Slurm of ``scripts/slurm-local.sh``: what a kernel held back (the distributor's
array calls, the session's retries) is launched by the session that attaches after it died, and running
steps show live CPU/RSS on the dashboard (``sstat``).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from slurm_helpers import live_jobs, use_local_slurm

import nbdist
from nbdist import Array, Session, State

pytestmark = pytest.mark.slurm

slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)

# Six steps, at most two at once, two tasks per sbatch call: after the first call the rest is held back
# by the distributor (max_concurrent across calls), the kernel dies, and attach must make those calls.
KERNEL = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        root, spans = sys.argv[1], sys.argv[2]
        session = Session(backend="slurm", root=root, max_array_size=2, poll_interval=0.2, max_poll_interval=0.5)
        arr = session.array(
            f's=$(date +%s.%N); sleep 2; echo "$s $(date +%s.%N)" > {spans}/$ARRAY_STEP_ID; echo step {{{{x}}}}',
            over={"x": list(range(6))}, name="held", max_concurrent=2)
        while arr[0].state is not arr[0].state.RUNNING:
            time.sleep(0.05)
        time.sleep(0.5)  # polls: the registry has it RUNNING
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_steps_a_dead_kernel_held_back_are_launched_by_attach(tmp_path):
    root, spans = str(tmp_path / "root"), tmp_path / "spans"
    spans.mkdir()
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    kernel = subprocess.Popen([sys.executable, str(script), root, str(spans)], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert kernel.stdout.readline().strip() == "ready"
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
        session = nbdist.attach(root)
        arr = session.get("held")
        assert arr.counts()["LOST"] == 0, [step.message for step in arr]
        assert arr.wait(120) is State.DONE, [(step.state, step.message) for step in arr]
        assert [step.stdout() for step in arr] == [f"step {x}\n" for x in range(6)]
        assert all(len(step.attempts) == 1 for step in arr)  # launched once each, not retried
        runs = sorted(tuple(map(float, path.read_text().split())) for path in spans.iterdir())
        assert len(runs) == 6 and _most_at_once(runs) <= 2  # max_concurrent held after the takeover too
    finally:
        kernel.kill()
        kernel.stdout.close()
        _close(session)


# Step 0 fails on its first attempt while steps 1 and 2 take both slots of max_concurrent=2: the session
# holds its automatic retry back, and dies before submitting it.
KERNEL_RETRY = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        root, marker = sys.argv[1], sys.argv[2]
        session = Session(backend="slurm", root=root, poll_interval=0.2, max_poll_interval=0.5)
        arr = session.array(f'if [ {{{{x}}}} = 0 ]; then test -e {marker} && echo again || exit 3; else sleep 6; fi',
                            over={"x": [0, 1, 2]}, name="retried", max_concurrent=2, max_attempts=2)
        # The retry is held: the step is QUEUED on its second attempt while no task of it is at Slurm.
        while "waiting for a free slot" not in (arr[0].message or ""):
            time.sleep(0.05)
        time.sleep(0.5)  # polls: the registry has it
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_a_retry_a_dead_kernel_held_back_is_submitted_by_attach(tmp_path):
    root, marker = str(tmp_path / "root"), tmp_path / "fixed"
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL_RETRY)
    kernel = subprocess.Popen([sys.executable, str(script), root, str(marker)], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert kernel.stdout.readline().strip() == "ready"
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
        marker.touch()
        session = nbdist.attach(root)
        arr = session.get("retried")
        assert arr.wait(120) is State.DONE, [(step.state, step.message) for step in arr]
        step = arr[0]
        assert step.stdout() == "again\n"
        attempts = step.attempts
        assert [a.state for a in attempts] == [State.FAILED, State.DONE], attempts
        assert attempts[0].distributor_id != attempts[1].distributor_id  # a new submission, not the old one
    finally:
        kernel.kill()
        kernel.stdout.close()
        _close(session)


def test_a_running_slurm_step_shows_live_cpu_and_rss(tmp_path):
    session = Session(backend="slurm", root=str(tmp_path / "root"), poll_interval=0.2, max_poll_interval=1.0)
    try:
        busy = (f"{shlex.quote(sys.executable)} -c \"import time; ballast = bytearray(150 * 2**20); "
                f"end = time.time() + 12\nwhile time.time() < end: pass\"")
        job = session.submit(busy, name="busy")
        live = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and job.state in (State.QUEUED, State.RUNNING):
            row = session.snapshot(job).rows[0]
            if row.state is State.RUNNING and row.cpu_percent and (row.max_rss_mb or 0) > 120:
                live = row
                break
            time.sleep(0.25)
        assert live is not None, session.snapshot(job).rows[0]
        assert 0 < live.cpu_percent <= 200 and live.max_rss_mb < 400
        job.cancel()
        assert job.wait(30) is State.KILLED
    finally:
        _close(session)


def _most_at_once(runs: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in runs] + [(end, -1) for _, end in runs])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def _close(session: Session | None) -> None:
    """Close the session, cancel what is left of its jobs, and wait until squeue lists none of them."""
    if session is None:
        return
    steps = [job for handle in session.jobs() for job in (handle if isinstance(handle, Array) else [handle])]
    ours = {job.distributor_id.split("_")[0] for job in steps if job.distributor_id}
    for job in steps:
        if not job.done():
            job.cancel()
    session.close()
    nbdist.set_default_session(None)
    deadline = time.monotonic() + 30
    while any(line.split()[0].split("_")[0] in ours for line in live_jobs()) and time.monotonic() < deadline:
        time.sleep(0.2)

