"""``nbdist-worker --steps-per-task``: cancelling one packed step by its marker, without Slurm.

The worker takes its array task from ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` (set here by hand), so
a packed task runs locally; a marker ``{name}.k{id}`` is what the Slurm distributor writes to cancel a step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from process_helpers import pid_alive

from nbdist.backends._task.worker import CANCEL_POLL_SECONDS
from nbdist.cluster_protocol.naming import cancel_marker_path, write_json_atomic

WORKER = shutil.which("nbdist-worker", path=os.path.dirname(sys.executable))
PACK = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0"}


def packed_worker(tmp_path: Path, command: str, steps: int = 3) -> list[str]:
    return [WORKER, "--stdout-dir", str(tmp_path), "--name", "pack", f"--steps-per-task={steps}",
            f"--array-length={steps}", "--", command]


def exit_info(tmp_path: Path, step: int) -> dict | None:
    path = tmp_path / f"pack.x77_{step}"
    return json.loads(path.read_text()) if path.exists() else None


def test_a_step_cancelled_before_its_turn_never_runs(tmp_path):
    write_json_atomic(cancel_marker_path(str(tmp_path), "pack", "77_1"), {})
    result = subprocess.run(packed_worker(tmp_path, "echo ran $ARRAY_STEP_ID"), env={**os.environ, **PACK},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr  # a skipped step is not a failure of its task
    skipped = exit_info(tmp_path, 1)
    assert skipped["status"] == "K" and skipped["message"].startswith("cancelled before it started")
    assert skipped["distributor_id"] == "77_1" and not skipped["terminated"]
    assert not (tmp_path / "pack.o77_1").exists()  # it never ran
    for step in (0, 2):
        assert exit_info(tmp_path, step)["status"] == "D"
        assert (tmp_path / f"pack.o77_{step}").read_text() == f"ran {step}\n"


def test_a_running_step_is_killed_by_its_marker_and_the_next_step_runs(tmp_path):
    pids = tmp_path / "pids"
    command = f'[ $ARRAY_STEP_ID != 1 ] || {{ sleep 60 & echo $! > {pids}; wait; }}; echo done $ARRAY_STEP_ID'
    worker = subprocess.Popen(packed_worker(tmp_path, command), env={**os.environ, **PACK})
    try:
        deadline = time.monotonic() + 15
        while not (pids.exists() and pids.read_text().strip()):
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.01)
        child = int(pids.read_text())
        marked = time.monotonic()
        write_json_atomic(cancel_marker_path(str(tmp_path), "pack", "77_1"), {})
        while exit_info(tmp_path, 1) is None:
            assert time.monotonic() < deadline + 5
            time.sleep(0.01)
        latency = time.monotonic() - marked
        assert worker.wait(15) == 128 + signal.SIGTERM  # the task reports a failed step (for sacct)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    killed = exit_info(tmp_path, 1)
    assert killed["status"] == "K" and "cancelled while it ran" in killed["message"]
    assert not killed["terminated"]  # the worker went on: this exit info is the step's verdict
    assert latency < CANCEL_POLL_SECONDS + 1.5, latency
    assert not pid_alive(child)  # the step's whole tree was killed
    assert exit_info(tmp_path, 0)["status"] == "D" and exit_info(tmp_path, 2)["status"] == "D"
    assert (tmp_path / "pack.o77_2").read_text() == "done 2\n"


def test_a_single_task_worker_ignores_markers(tmp_path):
    # Single tasks are scancelled, so their worker never pays for looking.
    write_json_atomic(cancel_marker_path(str(tmp_path), "one", "5"), {})
    result = subprocess.run([WORKER, "--stdout-dir", str(tmp_path), "--name", "one", "--id", "5", "--", "true"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert json.loads((tmp_path / "one.x5").read_text())["status"] == "D"
