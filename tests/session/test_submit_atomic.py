"""A submit is all or nothing: a process killed at any moment of it leaves its job whole, or no job.

The hole: the job row was committed before the per-step scripts' pointer (and the manifest), so a
kernel killed in between left a PENDING row that a later ``attach()`` ran with every ``{{x}}``
unfilled — each step printing the literal ``x={{x}}``, and ending DONE.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from nbdist import Session, State

STEPS = 400
ROUNDS = 12

SUBMITTER = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    root, tag, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    session = Session(parallelism=2, root=root)
    values = [f"{tag}s{i}" for i in range(steps)]
    print("ready", flush=True)
    started = time.perf_counter()
    session.array("echo x={{x}}", over={"x": values}, name=tag)
    print(f"submitted {time.perf_counter() - started}", flush=True)
    time.sleep(60)
    """
)


def _start(root: str, tag: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SUBMITTER, root, tag, str(STEPS)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the submitter's whole group: its consumers die with it, as with a kernel restart."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def _submit_seconds(root: str) -> float:
    """How long one submit takes here (a whole one, left as a job like the others)."""
    proc = _start(root, "calibrate")
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    _kill(proc)
    return float(line[1])


def _script_output(array, index: int) -> str:
    """What the step's own script prints, run as the backend would run it (for steps that never ran)."""
    rec = array.record
    assert rec.script_dir is not None, f"{array.name}: no per-step scripts"
    script = os.path.join(rec.script_dir, f"{index // rec.script_chunk}.sh")
    done = subprocess.run(["/bin/sh", "-c", f"NBDIST_INDEX={index}; . {script}"], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip()


def test_a_submit_killed_at_random_moments_leaves_each_job_whole_or_absent(tmp_path):
    root = str(tmp_path / "nbdist")
    seconds = _submit_seconds(root)
    rng = random.Random()
    delays = sorted(rng.uniform(0, seconds * 1.2) for _ in range(ROUNDS))
    for number, delay in enumerate(delays):
        proc = _start(root, f"round{number}")
        time.sleep(delay)
        _kill(proc)

    with Session(parallelism=2, root=root) as session:
        session.attach()
        arrays = {array.name: array for array in session.jobs()}
        assert set(arrays) <= {"calibrate"} | {f"round{number}" for number in range(ROUNDS)}
        for name, array in sorted(arrays.items()):
            array.wait(120)
            assert len(array) == STEPS
            checked_scripts = 0
            for index in range(STEPS):
                step = array[index]
                expected = f"x={name}s{index}"
                if step.state is State.DONE:
                    assert step.stdout().strip() == expected, f"{name}:{index} (delays {delays})"
                else:
                    # Launched, then killed with its owner before it ran: the job is whole all the same.
                    assert step.state is State.KILLED, f"{name}:{index} {step.state} {step.message}"
                    if checked_scripts < 20 or index == STEPS - 1:
                        assert _script_output(array, index) == expected, f"{name}:{index}"
                        checked_scripts += 1
            manifest = os.path.join(array.record.log_dir, f"manifest-{array.record.id}.json")
            with open(manifest) as handle:
                assert len(json.load(handle)) == STEPS, f"{name}: a partial manifest"
        # The rounds killed before their commit left no job (and the calibration run always leaves one).
        print(f"{len(arrays) - 1} of {ROUNDS} killed submits left a job; submit {seconds * 1000:.0f} ms; "
              f"kills at {[round(delay * 1000) for delay in delays]} ms")


def _interrupted_row(root: str) -> int:
    """The row an interrupted submit left before this fix: PENDING, no script_dir, owner long gone."""
    with Session(parallelism=1, root=root) as session:
        session.submit("true", name="first").wait(30)  # a registry with the schema, and a closed session
    db = sqlite3.connect(os.path.join(root, "registry.db"))
    with db:
        db.execute("INSERT INTO sessions (id, pid, host, started, create_time, backend, closed, heartbeat) "
                   "VALUES ('dead', 1, 'nowhere', 0, 0, 'multiprocess', NULL, 0)")
        cursor = db.execute(
            "INSERT INTO jobs (name, kind, command, backend, session_id, created, n_steps, steps, initial_state, "
            "spec, params, log_dir, after) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("sweep", "array", "echo x={{x}}", "multiprocess", "dead", time.time(), 3,
             json.dumps({"range": [0, 3, 1]}), "PENDING", json.dumps({"resources": {"cores": 1}}),
             json.dumps([{"x": 1}, {"x": 2}, {"x": 3}]), os.path.join(root, "logs", "sweep"), "[]"))
        job_id = cursor.lastrowid
    db.close()
    return job_id


def test_a_row_without_its_scripts_never_runs_and_fails_with_one_line(tmp_path):
    root = str(tmp_path / "nbdist")
    _interrupted_row(root)
    with Session(parallelism=2, root=root) as session:
        session.attach()
        sweep = session.get("sweep")
        sweep.wait(30)
        assert [step.state for step in sweep] == [State.FAILED] * 3
        message = sweep[0].message
        assert "interrupted" in message and "\n" not in message, message
        assert all(step.attempts[-1].exit_code is None for step in sweep)
        assert not any(step.stdout() for step in sweep)  # nothing ran: no step printed x={{x}}


def test_a_job_whose_scripts_were_deleted_before_it_launched_fails_with_one_line(tmp_path):
    root = str(tmp_path / "nbdist")
    with Session(parallelism=1, root=root) as session:
        blocker = session.submit("sleep 0.5", name="blocker")
        sweep = session.array("echo x={{x}}", over={"x": [1, 2]}, name="sweep", after=[blocker])
        for name in os.listdir(sweep.record.script_dir):
            os.unlink(os.path.join(sweep.record.script_dir, name))
        sweep.wait(30)
        assert blocker.state is State.DONE
        assert [step.state for step in sweep] == [State.FAILED] * 2
        message = sweep[0].message
        assert "missing" in message and sweep.record.script_dir in message and "\n" not in message, message
        assert not any(step.stderr() or step.stdout() for step in sweep)  # nothing ran


def test_partial_files_of_a_killed_submit_are_removed_once_stale_and_only_then(tmp_path):
    root = str(tmp_path / "nbdist")
    partial = {}
    for tag, age in (("stale", 7200), ("fresh", 10)):  # fresh ones may be another kernel's submit, in flight
        scripts = os.path.join(root, "scripts", f".partial-{tag}")
        manifest = os.path.join(root, "logs", "sweep", f".manifest-{tag}.partial")
        os.makedirs(scripts)
        os.makedirs(os.path.dirname(manifest), exist_ok=True)
        open(os.path.join(scripts, "0.sh"), "w").close()
        open(manifest, "w").close()
        then = time.time() - age
        for path in (scripts, manifest):
            os.utime(path, (then, then))
        partial[tag] = (scripts, manifest)
    with Session(parallelism=1, root=root) as session:
        session.array("echo x={{x}}", over={"x": [1]}, name="sweep").wait(30)
    assert not any(os.path.exists(path) for path in partial["stale"])
    assert all(os.path.exists(path) for path in partial["fresh"])
