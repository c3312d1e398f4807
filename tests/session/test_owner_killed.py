"""Local tasks never outlive the process that owns their session, however it dies.

The owner is killed alone (the OOM killer), or with its whole process group: Jupyter's "Restart
kernel" and "Shut down" SIGKILL the kernel's group when it does not exit in time, as do a terminal's
hangup and ``timeout``. The group case was the hole: consumers shared the kernel's group, died in the
same instant, and nobody was left to kill their tasks (a plain ``sleep`` under ``/bin/sh``, in a
session of its own, ran on to its end).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# The promise docs/RELIABILITY.md states: a task ends within a second of its owner's death (the
# consumer sees its pipe close at once, and gives the task a short grace before SIGKILL).
OWNER_GONE_SECONDS = 1.0

OWNER = textwrap.dedent(
    """
    import sys, time
    from nbdist import Executor, Session

    def nap(seconds):
        time.sleep(seconds)
        return seconds

    if __name__ == "__main__":
        session = Session(parallelism=3, root=sys.argv[1])
        warmup = session.array("echo step $ARRAY_STEP_ID", steps=4, name="warmup")
        warmup.wait(30)
        with Executor(session=session, env={"IDLE_WORKER": "1"}) as idle:  # leaves a warm worker idle
            idle.submit(nap, 0).result()
        shell = session.submit("sleep 60", name="shell")
        daemon = session.submit("setsid sleep 61 & sleep 62", name="daemon")
        with Executor(session=session) as pool:
            call = pool.submit(nap, 63)
            while any(job.state is not job.state.RUNNING for job in (shell, daemon, call)):
                time.sleep(0.02)
            time.sleep(0.3)  # the tasks' own children have started too
            print("ready", flush=True)
            time.sleep(120)
    """
)


def _task_processes(owner: psutil.Process) -> list[psutil.Process]:
    """The owner's descendants that are tasks (not consumers): everything under a consumer."""
    found = []
    for consumer in owner.children():
        found.extend(consumer.children(recursive=True))
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize("how", ["owner alone", "owner's process group"])
def test_tasks_end_within_a_second_of_their_owner(tmp_path, how):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    # A group of its own, as Jupyter starts a kernel (start_new_session), so killing the group
    # kills only the owner and what shares its group.
    owner = subprocess.Popen([sys.executable, str(script), str(tmp_path / "root")], stdout=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
    tasks: list[psutil.Process] = []
    try:
        assert owner.stdout.readline().strip() == "ready"
        tasks = _task_processes(psutil.Process(owner.pid))
        commands = [" ".join(proc.cmdline()) for proc in tasks]
        assert any(cmd == "sleep 60" for cmd in commands), commands
        assert any(cmd == "sleep 61" for cmd in commands), commands
        # Warm workers (one idle, one running the call) are under consumers too: they must go as well.
        assert sum("callworker" in cmd for cmd in commands) == 2, commands
        killed_at = time.monotonic()
        if how == "owner alone":
            owner.send_signal(signal.SIGKILL)
        else:
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(5)
        while any(_alive(proc) for proc in tasks) and time.monotonic() - killed_at < 10:
            time.sleep(0.01)
        survived = time.monotonic() - killed_at
        left = [" ".join(proc.cmdline()) for proc in tasks if _alive(proc)]
        assert not left, f"tasks outlived their owner by {survived:.1f} s: {left}"
        assert survived < OWNER_GONE_SECONDS, f"the tasks took {survived:.2f} s to end"
    finally:
        owner.kill()
        owner.stdout.close()
        for proc in tasks:
            if _alive(proc):
                proc.kill()
