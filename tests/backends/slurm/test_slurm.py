"""The Slurm backend against a real single-node Slurm (``scripts/slurm-local.sh start``; ``make test`` does it).

Without a reachable Slurm every test skips with the reason (a failure under ``NBDIST_REQUIRE_ALL=1``).
Every test ends with no job left in ``squeue`` and no local process left behind.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import (
    SCRIPT,
    SLURM_DIR,
    cancel_all_jobs,
    cli_calls,
    counting_wrappers,
    use_local_slurm,
    wait_done,
    wait_no_live_jobs,
    wait_state,
)

from nbdist.cluster_protocol import ClusterDistributor, ClusterWorkerNode
from nbdist.multiprocess import RemoteExitInfoNotAvailable
from nbdist.slurm import SlurmDistributor, SlurmWorkerNode

pytestmark = pytest.mark.slurm
PY = shlex.quote(sys.executable)


slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


@pytest.fixture(autouse=True)
def no_job_left_behind():
    """Every test: no Slurm job may still be pending or running when it ends."""
    yield
    left = wait_no_live_jobs(timeout=30)
    if left:
        cancel_all_jobs()
    assert not left, f"jobs left in squeue: {left}"


@pytest.fixture
def dist(tmp_path):
    distributor = SlurmDistributor(log_dir=str(tmp_path / "logs"), poll_interval=0.2, max_poll_interval=1.0)
    distributor.start()
    yield distributor
    distributor.stop(cancel=True)


def read(path: str) -> str:
    return Path(path).read_text()


def wait_for_text(path: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and read(path) == text):
        assert time.monotonic() < deadline, f"{path} never said {text!r}"
        time.sleep(0.05)


def test_it_follows_the_protocol(dist):
    assert isinstance(dist, ClusterDistributor)
    assert isinstance(SlurmWorkerNode(), ClusterWorkerNode)
    assert dist.cluster_name == "slurm"
    assert os.access(dist.worker_node_entry_point, os.X_OK)
    assert Path(dist.worker_node_entry_point).parent == Path(sys.executable).parent
    with pytest.raises(RemoteExitInfoNotAvailable):
        dist.get_remote_exit_info("424242")


def test_a_job_logs_exit_code_usage_env_and_cwd(dist, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    nasty = "it's $(touch pwned) `touch pwned2`; echo \"x\""
    job = dist.submit_to_batch_distributor(
        "echo out $JOB_ID $FOO; pwd; echo err >&2", "my job/../x", {
            "cores": 2, "memory": "200M", "runtime": "90s", "env": {"FOO": nasty}, "cwd": str(workdir)})
    assert job.isdigit()
    assert dist.get_remote_exit_info(job)[0] in ("Q", "R")
    report = wait_done(dist, [job])[job]
    assert report["status"] == "D", report
    assert report["exit_code"] == 0 and report["signal"] is None
    assert report["usage"]["wall_s"] >= 0 and "cpu_s" in report["usage"] and report["usage"]["max_rss_mb"] > 0
    assert report["submitted"] <= report["started"] <= report["ended"]
    assert dist.get_remote_exit_info(job) == ("D", "exit code 0")
    assert dist.get_usage_stats(job) == report["usage"]
    stdout, stderr = dist.log_paths(job)
    assert stdout == str(tmp_path / "logs" / f"my_job_.._x.o{job}") and stderr.endswith(f"my_job_.._x.e{job}")
    assert read(stdout) == f"out {job} {nasty}\n{workdir}\n"
    assert read(stderr) == "err\n"
    assert not list(workdir.glob("pwned*")), "an env value was run by a shell"
    # Resources reached Slurm as options (seen while the job is still known to the controller).
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True).stdout
    assert "NumCPUs=2" in shown and "MinMemoryNode=200M" in shown and "TimeLimit=00:02:00" in shown, shown


def test_a_20_step_array_with_max_concurrent(dist):
    ids = dist.submit_array_to_batch_distributor("echo step $ARRAY_STEP_ID of $JOB_ID; sleep 0.5", "arr",
                                                 {"max_concurrent": 5}, 20)
    job_id = ids[0].split("_")[0]
    assert ids == {step: f"{job_id}_{step}" for step in range(20)}
    reports = wait_done(dist, list(ids.values()), timeout=90)
    assert {r["status"] for r in reports.values()} == {"D"}, reports
    for step, distributor_id in ids.items():
        assert read(dist.log_paths(distributor_id)[0]) == f"step {step} of {job_id}\n"
    # %5: never more than five steps at once (times as the workers measured them).
    events = sorted([(r["started"], 1) for r in reports.values()] + [(r["ended"], -1) for r in reports.values()])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 1 < peak <= 5


def test_a_failing_step_reports_its_exit_code(dist):
    ids = dist.submit_array_to_batch_distributor('[ "$ARRAY_STEP_ID" = 1 ] && exit 7; echo fine', "fail", {}, 3)
    reports = wait_done(dist, list(ids.values()))
    assert reports[ids[1]]["status"] == "E" and reports[ids[1]]["exit_code"] == 7 and reports[ids[1]]["limit"] is None
    assert dist.get_remote_exit_info(ids[1]) == ("E", "exit code 7")
    assert [reports[ids[i]]["status"] for i in (0, 2)] == ["D", "D"]


def test_a_worker_killed_without_exit_info_is_reported_lost(dist):
    # The task SIGKILLs its own nbdist-worker ($PPID): only Slurm's state (FAILED, signal 9) remains.
    job = dist.submit_to_batch_distributor("kill -9 $PPID; sleep 5", "orphan", {})
    report = wait_done(dist, [job], timeout=40)[job]
    assert report["status"] == "U" and report["signal"] == 9, report
    assert "SIGKILL" in report["message"] and f"orphan.s{job}" in report["message"], report


def test_memory_limit_is_enforced(dist):
    hog = f"{PY} -c 'import time; x = bytearray(400 * 2**20); time.sleep(30)'"
    job = dist.submit_to_batch_distributor(hog, "hog", {"memory": "100M"})
    report = wait_done(dist, [job], timeout=40)[job]
    assert report["status"] == "Z" and "memory" in report["message"], report
    assert report["limit"] == "memory", report


def test_a_job_slurm_kills_over_its_memory_reports_the_memory_limit(dist):
    # --mem given to Slurm alone (the worker does not sample it): slurmstepd kills the whole job, the worker
    # included, before any exit info is written; the verdict comes from what Slurm wrote into the job's log.
    hog = f"{PY} -c 'import time; x = bytearray(400 * 2**20); time.sleep(30)'"
    job = dist.submit_to_batch_distributor(hog, "slurm-hog", {"sbatch": ["--mem=100M"]})
    report = wait_done(dist, [job], timeout=40)[job]
    assert report["status"] == "Z" and report["limit"] == "memory", report
    assert "Slurm killed the job" in report["message"], report


def test_scancel_of_running_and_pending_steps(dist):
    ids = dist.submit_array_to_batch_distributor("echo started; sleep 120", "long", {"max_concurrent": 2}, 4)
    for step in (0, 1):  # Slurm says RUNNING as soon as the batch script starts: wait for the task itself
        wait_state(dist, ids[step], "R")
        wait_for_text(dist.log_paths(ids[step])[0], "started\n")
    assert dist.get_remote_exit_info(ids[3])[0] == "Q"
    started = time.monotonic()
    dist.terminate_task_instances([ids[1], ids[3]])
    reports = wait_done(dist, [ids[1], ids[3]], timeout=20)
    assert time.monotonic() - started < 15
    assert reports[ids[1]]["status"] == "K", reports
    assert reports[ids[3]]["status"] == "K" and "before it started" in reports[ids[3]]["message"], reports
    assert dist.get_remote_exit_info(ids[0])[0] == "R", "only the steps asked for are cancelled"
    dist.terminate_task_instances(list(ids.values()))
    reports = wait_done(dist, list(ids.values()), timeout=20)
    assert {r["status"] for r in reports.values()} == {"K"}, reports
    assert reports[ids[0]]["started"] is not None
    # The worker saw the SIGTERM and killed its task's tree: the log says it started, nothing after.
    assert read(dist.log_paths(ids[0])[0]) == "started\n"


def test_a_dependency_chain_runs_in_order(dist, tmp_path):
    trace = tmp_path / "trace"
    first = dist.submit_to_batch_distributor(f"sleep 1; echo a >> {trace}", "a", {})
    second = dist.submit_to_batch_distributor(f"echo b >> {trace}", "b", {"after": [first]})
    third = dist.submit_to_batch_distributor(f"echo c >> {trace}", "c", {"after": [second, first]})
    failing = dist.submit_to_batch_distributor("exit 1", "f", {})
    never = dist.submit_to_batch_distributor(f"echo never >> {trace}", "n", {"after": [failing]})
    reports = wait_done(dist, [first, second, third, failing, never], timeout=60)
    assert [reports[i]["status"] for i in (first, second, third, failing)] == ["D", "D", "D", "E"], reports
    assert trace.read_text() == "a\nb\nc\n"
    assert reports[never]["status"] == "K" and "depends on" in reports[never]["message"], reports[never]
    with pytest.raises(ValueError, match="not a Slurm distributor id"):
        dist.submit_to_batch_distributor("true", "x", {"after": ["12; rm -rf /"]})


def test_rejected_submissions_raise_with_sbatch_message(dist):
    with pytest.raises(ValueError, match="sbatch rejected 'big'.*(processors|CPU|node configuration)"):
        dist.submit_to_batch_distributor("true", "big", {"cores": 64})
    with pytest.raises(ValueError, match="sbatch rejected 'nowhere'.*[Pp]artition"):
        dist.submit_to_batch_distributor("true", "nowhere", {"queue": "no-such-partition"})
    # More GPUs than any node has (2 each): sbatch refuses at once, and its message is the error.
    with pytest.raises(ValueError, match="sbatch rejected 'greedy'.*(node configuration|gres|GRES)"):
        dist.submit_array_to_batch_distributor("true", "greedy", {"gpus": 3}, 1500)
    with pytest.raises(ValueError, match="gpus must be"):
        dist.submit_to_batch_distributor("true", "bad", {"gpus": -1})
    with pytest.raises(ValueError, match="steps_per_task must be a positive integer"):
        dist.submit_array_to_batch_distributor("true", "bad", {"steps_per_task": 0}, 10)
    with pytest.raises(ValueError, match="unknown resource"):
        dist.submit_to_batch_distributor("true", "bad", {"partition_typo": "x"})
    with pytest.raises(ValueError, match="memory"):
        dist.submit_to_batch_distributor("true", "bad", {"memory": "lots"})
    assert dist.get_submitted_or_running() == set()


def test_a_job_that_cannot_start_is_a_queueing_error(dist):
    job = dist.submit_to_batch_distributor("true", "held", {})
    # An administrator's hold: the job stays PENDING and would never start without help.
    subprocess.run(["scontrol", "hold", job], check=True, capture_output=True)
    deadline = time.monotonic() + 15
    while not dist.get_queueing_errors([job]):
        assert time.monotonic() < deadline, dist.get_task_reports([job])
        time.sleep(0.1)
    assert "JobHeld" in dist.get_queueing_errors([job])[job]
    assert dist.get_remote_exit_info(job)[0] == "Q"
    dist.terminate_task_instances([job])
    assert wait_done(dist, [job])[job]["status"] == "K"
    assert dist.get_queueing_errors([job]) == {}


def test_the_array_completes_and_is_tracked_across_a_slurmctld_restart(dist):
    conf = os.environ.get("SLURM_CONF", "")
    if os.path.dirname(conf) != SLURM_DIR:
        pytest.skip(f"this cluster (SLURM_CONF={conf}) was not started by scripts/slurm-local.sh")
    ids = dist.submit_array_to_batch_distributor("sleep 1.5; echo $ARRAY_STEP_ID", "restart",
                                                 {"max_concurrent": 4}, 20)
    wait_state(dist, ids[5], "D", timeout=60)
    subprocess.run([str(SCRIPT), "restart-ctld"], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "NBDIST_SLURM_DIR": SLURM_DIR})
    assert dist.get_submitted_or_running(list(ids.values())), "the restart came after the array ended"
    reports = wait_done(dist, list(ids.values()), timeout=120)
    assert {r["status"] for r in reports.values()} == {"D"}, reports
    for step, distributor_id in ids.items():
        assert read(dist.log_paths(distributor_id)[0]) == f"{step}\n"


def test_a_fresh_distributor_adopts_jobs_of_an_earlier_one(tmp_path):
    logs = str(tmp_path / "logs")
    resources = {"stdout": logs, "stderr": logs, "max_concurrent": 2}
    first = SlurmDistributor(log_dir=str(tmp_path / "elsewhere"), poll_interval=0.2, max_poll_interval=1.0)
    first.start()
    job = first.submit_to_batch_distributor("exit 4", "job", resources)
    ids = first.submit_array_to_batch_distributor("sleep 1; echo $ARRAY_STEP_ID", "arr", resources, 4)
    first.stop()  # the kernel restarts: the jobs keep running on Slurm
    assert first.get_submitted_or_running() == {job, *ids.values()}
    second = SlurmDistributor(log_dir=str(tmp_path / "other"), poll_interval=0.2, max_poll_interval=1.0)
    second.start()
    try:
        second.adopt(job, "job", resources)
        for distributor_id in ids.values():
            second.adopt(distributor_id, "arr", resources)
        with pytest.raises(ValueError):
            second.adopt("not-an-id", "x", {})
        reports = wait_done(second, [job, *ids.values()], timeout=60)
        assert reports[job]["status"] == "E" and reports[job]["exit_code"] == 4
        assert [reports[i]["status"] for i in ids.values()] == ["D"] * 4
        assert read(second.log_paths(ids[3])[0]) == "3\n"
        assert second.log_paths(ids[3])[0].startswith(logs)
    finally:
        second.stop(cancel=True)


def test_cli_calls_one_sbatch_per_array_one_squeue_per_poll(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    counting_wrappers(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # Held, so a 1000-step array costs the controller nothing to keep; no poller thread: polls are explicit.
    dist = SlurmDistributor(log_dir=str(tmp_path / "logs"), poll_interval=60, max_poll_interval=60,
                            sbatch_args=["--hold"])
    ids = list(dist.submit_array_to_batch_distributor("true", "big", {}, 1000).values())
    # One sbatch, and one scontrol show config: the site's MaxArraySize/MaxJobCount, read once.
    assert cli_calls(log) == {"sbatch": 1, "scontrol": 1}
    assert dist.poll() is True
    assert cli_calls(log) == {"sbatch": 1, "scontrol": 1, "squeue": 1}
    reports = dist.get_task_reports(ids)
    assert {r["status"] for r in reports.values()} == {"Q"}
    assert len(dist.get_queueing_errors(ids)) == 1000
    dist.terminate_task_instances(ids)
    assert cli_calls(log) == {"sbatch": 1, "scontrol": 1, "squeue": 1, "scancel": 1}
    dist.poll()
    assert cli_calls(log) == {"sbatch": 1, "scontrol": 1, "squeue": 2, "scancel": 1}
    assert {r["status"] for r in dist.get_task_reports(ids).values()} == {"K"}
    dist.poll()  # nothing live: no call at all
    assert cli_calls(log)["squeue"] == 2

    # With the poller thread: one squeue per interval for all live jobs, backing off while nothing changes.
    log.unlink()
    dist = SlurmDistributor(log_dir=str(tmp_path / "logs"), poll_interval=0.2, max_poll_interval=2.0,
                            sbatch_args=["--hold"])
    dist.start()
    try:
        held = list(dist.submit_array_to_batch_distributor("true", "held", {}, 50).values())
        held.append(dist.submit_to_batch_distributor("true", "one", {}))
        time.sleep(8)
        calls = cli_calls(log)
        # Without back-off: 8 s / 0.2 s = 40 calls; with it: 0.2, 0.3, 0.45, 0.68, 1, 1.5, 2, 2 … ≈ 9.
        assert 4 <= calls["squeue"] <= 12, calls
        assert calls["sbatch"] == 2 and calls.get("scontrol") == 1  # the site limits, once
        dist.terminate_task_instances(held)
        assert cli_calls(log)["scancel"] == 1
        wait_done(dist, held, timeout=20)
    finally:
        dist.stop()


def test_the_worker_node_knows_its_id_and_log_names(dist):
    probe = (f"{PY} -c 'import json; from nbdist.slurm import SlurmWorkerNode as N; n = N(); "
             "print(json.dumps([n.distributor_id, n.array_step_id, "
             "n.initialize_logfile(\"stdout\", \"/l\", \"nm\")]))'")
    ids = dist.submit_array_to_batch_distributor(probe, "probe", {}, 2)
    job = dist.submit_to_batch_distributor(probe, "probe", {})
    wait_done(dist, [*ids.values(), job])
    assert json.loads(read(dist.log_paths(ids[1])[0])) == [ids[1], 1, f"/l/nm.o{ids[1]}"]
    assert json.loads(read(dist.log_paths(job)[0])) == [job, None, f"/l/nm.o{job}"]


@pytest.mark.timeout(200)
def test_over_the_runtime_limit_slurm_times_out_the_job(dist):
    """The one slow test: Slurm limits are whole minutes, it kills at 61-69 s."""
    job = dist.submit_to_batch_distributor("echo begin; sleep 300", "slow", {"runtime": "50s"})
    report = wait_done(dist, [job], timeout=150)[job]
    assert report["status"] == "Z" and report["limit"] == "runtime", report
    assert "runtime" in report["message"] and "TIMEOUT" in report["message"], report
    assert 55 <= report["ended"] - report["started"] <= 100, report
    assert read(dist.log_paths(job)[0]) == "begin\n"
