"""Slurm the way real sites run it, on the 2-node test cluster (``scripts/slurm-local.sh start``): arrays
split at MaxArraySize, packed steps, GPUs (GRES) and site options, requeue, the warning signal, a submit
limit that holds an array back. Node failure is in ``tests/session/test_session_slurm.py``.

Every test ends with none of its jobs in ``squeue`` and no local process left behind.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import cli_calls, counting_wrappers, use_local_slurm, wait_done, wait_state

from nbdist.slurm import SlurmDistributor

pytestmark = pytest.mark.slurm
PY = shlex.quote(sys.executable)

slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


@pytest.fixture
def make_dist(tmp_path):
    made = []

    def make(**options):
        options.setdefault("log_dir", str(tmp_path / "logs"))
        distributor = SlurmDistributor(poll_interval=0.2, max_poll_interval=0.5, **options)
        distributor.start()
        made.append(distributor)
        return distributor

    yield make
    for distributor in made:
        distributor.stop(cancel=True)
    for distributor in made:  # none of this test's jobs may be left in squeue
        assert not distributor.get_submitted_or_running()


def spans(folder: Path) -> dict[int, list[tuple[float, float, str]]]:
    """``{step: [(start, end, host), …]}`` that the steps themselves wrote (one line per run)."""
    found: dict[int, list[tuple[float, float, str]]] = {}
    for path in folder.glob("*.span"):
        for line in path.read_text().splitlines():
            start, end, host = line.split()
            found.setdefault(int(path.stem), []).append((float(start), float(end), host))
    return found


def timed(folder: Path, body: str) -> str:
    """A step command that runs ``body`` and appends its own start and end time and node to ``{step}.span``."""
    return (f"s=$(date +%s.%N); ( {body} ); rc=$?; echo \"$s $(date +%s.%N) $SLURMD_NODENAME\" "
            f">> {shlex.quote(str(folder))}/$ARRAY_STEP_ID.span; exit $rc")


def most_at_once(runs: list[tuple[float, float, str]]) -> int:
    events = sorted([(start, 1) for start, _, _ in runs] + [(end, -1) for _, end, _ in runs])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def test_an_array_longer_than_max_array_size_is_one_array_of_several_calls(make_dist, tmp_path, monkeypatch):
    wrappers, log = tmp_path / "bin", tmp_path / "calls.log"
    counting_wrappers(wrappers, log)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    dist = make_dist(max_array_size=10)  # below the site's 1001, so the test is quick
    (tmp_path / "spans").mkdir()
    ids = dist.submit_array_to_batch_distributor(
        timed(tmp_path / "spans", "sleep 0.3; exit $(( ARRAY_STEP_ID % 4 == 3 ))"), "long",
        {"max_concurrent": 3, "steps_per_task": 1}, 25)
    base = ids[0].split("_")[0]
    assert ids == {step: f"{base}_{step}" for step in range(25)}  # step ids unchanged across the calls
    reports = wait_done(dist, list(ids.values()), timeout=120)
    assert {step: reports[ids[step]]["exit_code"] for step in range(25)} == \
        {step: int(step % 4 == 3) for step in range(25)}
    assert cli_calls(log)["sbatch"] == 3  # 10 + 10 + 5 tasks
    runs = [run for found in spans(tmp_path / "spans").values() for run in found]
    assert len(runs) == 25 and most_at_once(runs) <= 3  # max_concurrent held across the three calls
    assert {run[2] for run in runs} <= {"n1", "n2"}


def test_packed_steps_have_their_own_logs_exit_codes_and_live_states(make_dist, tmp_path):
    dist = make_dist()
    gate = tmp_path / "gate"
    command = (f"echo out $ARRAY_STEP_ID; echo err $ARRAY_STEP_ID >&2; "
               f"if [ $ARRAY_STEP_ID = 1 ]; then while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.1; done; fi; "
               f"exit $(( ARRAY_STEP_ID == 2 ? 5 : 0 ))")
    ids = dist.submit_array_to_batch_distributor(command, "packed", {"steps_per_task": 4}, 6)
    slurm_ids = {dist.tasks.records[i].slurm_id for i in ids.values()}
    assert len(slurm_ids) == 2  # 6 steps, 4 a task: two Slurm array tasks
    wait_state(dist, ids[1], "R", timeout=60)
    # Live while the task runs: step 0 is over, 1 runs, 2 and 3 wait their turn in the same task.
    assert dist.get_remote_exit_info(ids[0]) == ("D", "exit code 0")
    assert dist.get_remote_exit_info(ids[2])[0] == "Q"
    gate.touch()
    reports = wait_done(dist, list(ids.values()), timeout=60)
    assert [reports[ids[s]]["exit_code"] for s in range(6)] == [0, 0, 5, 0, 0, 0]  # step 2 did not stop 3
    for step in range(6):
        out, err = dist.log_paths(ids[step])
        assert Path(out).read_text() == f"out {step}\n" and Path(err).read_text() == f"err {step}\n"
        assert reports[ids[step]]["usage"]["wall_s"] >= 0


def test_a_killed_or_timed_out_packed_step_ends_alone(make_dist, tmp_path):
    dist = make_dist()
    gate = shlex.quote(str(tmp_path / "gate"))
    # Three packed tasks at once: a step killed while it runs, one killed while it waits its turn, all of one.
    cut = dist.submit_array_to_batch_distributor("[ $ARRAY_STEP_ID != 1 ] || sleep 30", "cut",
                                                 {"steps_per_task": 3}, 3)
    skip = dist.submit_array_to_batch_distributor(
        f"[ $ARRAY_STEP_ID != 0 ] || while [ ! -e {gate} ]; do sleep 0.1; done", "skip", {"steps_per_task": 3}, 3)
    whole = dist.submit_array_to_batch_distributor("sleep 30", "whole", {"steps_per_task": 3}, 3)
    wait_state(dist, cut[1], "R", timeout=60)
    wait_until(lambda: os.path.exists(dist.log_paths(cut[1])[0]))  # the worker has started step 1
    killed = time.monotonic()
    dist.terminate_task_instances([cut[1]])
    wait_until(lambda: dist.get_remote_exit_info(cut[1])[0] == "K")
    latency = time.monotonic() - killed
    wait_state(dist, skip[0], "R", timeout=60)
    dist.terminate_task_instances([skip[1]])
    wait_until(lambda: "skipped when its turn comes" in dist.get_remote_exit_info(skip[1])[1])
    assert dist.get_remote_exit_info(skip[1])[0] == "Q"  # it waits its turn, then ends without running
    (tmp_path / "gate").touch()
    wait_state(dist, whole[0], "R", timeout=60)
    dist.terminate_task_instances(list(whole.values()))
    killed_whole = time.monotonic()
    reports = wait_done(dist, [*whole.values()], timeout=30)
    assert time.monotonic() - killed_whole < 10  # one scancel for the whole task: no step waits for a marker
    reports.update(wait_done(dist, [*cut.values(), *skip.values()], timeout=60))
    # Only the killed step ends K; its pack-mates run on and end as they would have.
    assert [reports[cut[s]]["status"] for s in range(3)] == ["D", "K", "D"]
    assert "cancelled while it ran" in reports[cut[1]]["message"]
    assert latency < 5, latency  # the worker looks for the marker every second; the poller every 0.5 s
    assert [reports[skip[s]]["status"] for s in range(3)] == ["D", "K", "D"]
    assert reports[skip[1]]["message"].startswith("cancelled before it started")
    assert not os.path.exists(dist.log_paths(skip[1])[0])  # it never ran
    # Every unfinished step of a pack killed: the task is scancelled, as one.
    assert [reports[whole[s]]["status"] for s in range(3)] == ["K", "K", "K"]
    assert "not finished when its packed task ended" in reports[whole[2]]["message"]
    # A step over its own runtime is that step's failure (the worker holds each step to its limit).
    ids = dist.submit_array_to_batch_distributor("[ $ARRAY_STEP_ID != 1 ] || sleep 30", "slow",
                                                 {"steps_per_task": 3, "runtime": 2}, 3)
    reports = wait_done(dist, list(ids.values()), timeout=60)
    assert [reports[ids[s]]["status"] for s in range(3)] == ["D", "Z", "D"]
    assert reports[ids[1]]["limit"] == "runtime"


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                          check=True).stdout


def test_gpus_site_options_and_the_session_prologue(make_dist, tmp_path):
    dist = make_dist(prologue="GREETING='from the prologue'; export GREETING", sbatch=["--comment=nbdist-site"])
    job = dist.submit_to_batch_distributor('echo "$GREETING"; echo "gpus=${SLURM_GPUS_ON_NODE:-none}"', "gpu",
                                           {"gpus": 1, "sbatch": ["#SBATCH --nice=5"], "exclusive": False})
    wait_done(dist, [job], timeout=60)
    assert dist.get_remote_exit_info(job)[0] == "D"
    out = Path(dist.log_paths(job)[0]).read_text().splitlines()
    # Slurm allocated one GRES GPU (CUDA_VISIBLE_DEVICES stays empty without device cgroups).
    assert out == ["from the prologue", "gpus=1"]
    shown = scontrol_job(job)
    assert "TresPerNode=gres:gpu:1" in shown
    assert "Comment=nbdist-site" in shown and "Nice=5" in shown


def test_requeue_keeps_one_step_with_its_attempts(make_dist, tmp_path):
    dist = make_dist()
    runs = tmp_path / "runs"
    job = dist.submit_to_batch_distributor(f"echo run >> {shlex.quote(str(runs))}; sleep 4", "preemptible",
                                           {"requeue": True})
    wait_state(dist, job, "R", timeout=60)
    time.sleep(0.5)
    # What preemption with PreemptMode=REQUEUE does to a job: back to the queue, then run again.
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    # Slurm holds a requeued job back ~2 minutes (BeginTime); a test need not wait for that.
    deadline = time.monotonic() + 30
    while "BeginTime" not in dist.get_remote_exit_info(job)[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)
    reports = wait_done(dist, [job], timeout=120)
    assert reports[job]["status"] == "D"
    assert "requeued 1x by Slurm" in reports[job]["message"]
    assert runs.read_text() == "run\nrun\n"


def test_the_warning_signal_reaches_the_task_for_a_checkpoint(make_dist, tmp_path):
    dist = make_dist()
    marker = tmp_path / "checkpoint"
    command = (f"trap 'echo saved > {shlex.quote(str(marker))}; exit 0' USR1; "
               "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 3")
    job = dist.submit_to_batch_distributor(command, "ckpt", {"signal": "B:USR1@60", "runtime": "5m"})
    wait_state(dist, job, "R", timeout=60)
    time.sleep(1.0)
    # Slurm sends B:USR1 to the batch shell 60 s before the limit; scancel --batch sends it now.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, capture_output=True)
    reports = wait_done(dist, [job], timeout=60)
    assert marker.read_text() == "saved\n" and reports[job]["exit_code"] == 0


def test_a_submit_limit_holds_the_rest_back_until_jobs_finish(make_dist, tmp_path, monkeypatch):
    # A site limit that this cluster (no slurmdbd) cannot enforce: an sbatch in front of the real one
    # refuses, with sbatch's exact message, every call after the first while the flag file exists.
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    flag, count, wrappers = tmp_path / "at-limit", tmp_path / "count", tmp_path / "bin"
    wrappers.mkdir()
    flag.touch()
    (wrappers / "sbatch").write_text(
        f"#!/bin/sh\nn=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
        f"if [ $n -ge 1 ] && [ -e {shlex.quote(str(flag))} ]; then\n"
        "  echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2\n"
        "  echo 'sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
        "(job submit limit, user'\"'\"'s size and/or time limits)' >&2\n  exit 1\nfi\n"
        f"exec {shlex.quote(real)} \"$@\"\n")
    (wrappers / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    dist = make_dist(max_array_size=4)
    ids = dist.submit_array_to_batch_distributor("sleep 1", "limited", {"steps_per_task": 1}, 10)
    time.sleep(2)
    held = dist.get_task_reports([ids[9]])[ids[9]]
    assert held["status"] == "Q" and "QOSMaxSubmitJobPerUserLimit" in held["message"]
    flag.unlink()  # jobs finished: room again
    reports = wait_done(dist, list(ids.values()), timeout=120)
    assert {report["status"] for report in reports.values()} == {"D"}
