"""The multiprocess distributor, with real processes: logs, exit info, kill, limits, usage, stop, faults."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from process_helpers import pid_alive
from nbdist.cluster_protocol import ClusterDistributor, ClusterWorkerNode
from nbdist.backends._task.system import SYSTEM
from nbdist.backends.multiprocess.placement import PREFETCH_SHORT
from nbdist.multiprocess import (
    MultiprocessDistributor,
    MultiprocessWorkerNode,
    PickableTask,
    RemoteExitInfoNotAvailable,
    new_job_id_prefix,
)

PY = sys.executable


@pytest.fixture
def dist(tmp_path):
    distributor = MultiprocessDistributor("test", parallelism=2, log_dir=str(tmp_path / "logs"), kill_grace=0.5)
    distributor.start()
    yield distributor
    distributor.stop()


def wait_finished(distributor, ids, timeout=15.0):
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while distributor.get_submitted_or_running(ids):
        assert time.monotonic() < deadline, f"still live: {distributor.get_submitted_or_running(ids)}"
        time.sleep(0.01)


def wait_running(distributor, distributor_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while distributor.get_task_reports([distributor_id])[distributor_id]["status"] != "R":
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.01)
    return distributor.get_task_reports([distributor_id])[distributor_id]["pid"]


def wait_for_file(path: Path, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return path.read_text().strip()


def test_it_follows_the_protocol(dist):
    assert isinstance(dist, ClusterDistributor)
    assert isinstance(MultiprocessWorkerNode(), ClusterWorkerNode)
    assert dist.cluster_name == "test"
    entry_point = dist.worker_node_entry_point
    assert os.path.basename(entry_point) == "nbdist-worker"
    installed = any(script.name == "nbdist-worker" for script in importlib.metadata.entry_points(group="console_scripts"))
    assert os.access(entry_point, os.X_OK) or not installed  # a tree run without installing has no script
    task = PickableTask("7", "true")
    assert (task.distributor_id, task.command, task.task_type) == ("7", "true", "array")


def test_logs_go_to_named_files_and_nothing_leaks(dist, tmp_path, capfd):
    out_dir, err_dir = tmp_path / "out", tmp_path / "err"
    job = dist.submit_to_batch_distributor(
        "echo to-stdout; echo to-stderr >&2", "my job", {"stdout": str(out_dir), "stderr": str(err_dir)}
    )
    default = dist.submit_to_batch_distributor("echo default", "plain", {})
    wait_finished(dist, [job, default])
    assert (out_dir / f"my_job.o{job}").read_text() == "to-stdout\n"
    assert (err_dir / f"my_job.e{job}").read_text() == "to-stderr\n"
    assert Path(dist.log_dir, f"plain.o{default}").read_text() == "default\n"
    assert dist.log_paths(job) == (str(out_dir / f"my_job.o{job}"), str(err_dir / f"my_job.e{job}"))
    captured = capfd.readouterr()
    assert "to-std" not in captured.out + captured.err


def test_the_distributor_tells_when_tasks_ended(dist):
    ids: list[str] = []
    told: list[set[str]] = []  # what had ended (as the distributor reports it) each time it told
    dist.on_task_ended = lambda: told.append({i for i in list(ids) if not dist.get_submitted_or_running([i])})
    for command in ("true", "exit 3", "sleep 0.3"):
        ids.append(dist.submit_to_batch_distributor(command, "told", {}))
    wait_finished(dist, ids)
    deadline = time.monotonic() + 5
    while not (told and told[-1] == set(ids)):  # the last end is told once it is recorded, never before
        assert time.monotonic() < deadline, told
        time.sleep(0.01)
    assert 1 <= len(told) <= 3, told  # once per batch of ends
    assert all(earlier <= later for earlier, later in zip(told, told[1:]))


def test_task_names_cannot_leave_the_log_folder(dist, tmp_path):
    job = dist.submit_to_batch_distributor("echo x", "../../escape/../x", {})
    wait_finished(dist, [job])
    stdout, stderr = dist.log_paths(job)
    assert Path(stdout).parent == Path(dist.log_dir)
    assert Path(stdout).read_text() == "x\n"
    assert not list(tmp_path.glob("escape*"))


def test_exit_info_for_every_ending(dist):
    ok = dist.submit_to_batch_distributor("exit 0", "ok", {})
    bad = dist.submit_to_batch_distributor("exit 3", "bad", {})
    self_killed = dist.submit_to_batch_distributor("kill -9 $$", "self", {})
    wait_finished(dist, [ok, bad, self_killed])
    assert dist.get_remote_exit_info(ok) == ("D", "exit code 0")
    assert dist.get_remote_exit_info(bad) == ("E", "exit code 3")
    assert dist.get_remote_exit_info(self_killed) == ("E", "killed by signal 9 (SIGKILL)")
    reports = dist.get_task_reports([ok, bad, self_killed])
    assert [reports[i]["exit_code"] for i in (ok, bad, self_killed)] == [0, 3, None]
    assert [reports[i]["limit"] for i in (ok, bad, self_killed)] == [None, None, None]
    assert reports[self_killed]["signal"] == 9
    for query in (dist.get_remote_exit_info, dist.get_usage_stats, dist.log_paths):
        with pytest.raises(RemoteExitInfoNotAvailable, match="unknown distributor id 'no-such-id'"):
            query("no-such-id")
    assert dist.get_task_reports(["no-such-id"]) == {}


def test_runtime_limit_kills_with_Z(dist):
    job = dist.submit_to_batch_distributor("sleep 30", "slow", {"runtime": "0.3s"})
    started = time.monotonic()
    wait_finished(dist, [job])
    assert time.monotonic() - started < 3
    status, message = dist.get_remote_exit_info(job)
    assert status == "Z" and "runtime" in message
    assert dist.get_task_reports([job])[job]["limit"] == "runtime"


def test_memory_limit_kills_with_Z(dist):
    hog = f"{PY} -c \"import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)\""
    job = dist.submit_to_batch_distributor(hog, "hog", {"memory": "100M"})
    wait_finished(dist, [job])
    status, message = dist.get_remote_exit_info(job)
    assert status == "Z" and "memory" in message
    assert dist.get_task_reports([job])[job]["limit"] == "memory"
    assert dist.get_usage_stats(job)["max_rss_mb"] > 100


@pytest.mark.parametrize(
    "resources, fragment",
    [
        ({"memory": "lots"}, "memory"),
        ({"memory": -5}, "memory"),
        ({"runtime": "soon"}, "runtime"),
        ({"runtime": 0}, "runtime"),
        ({"cores": "two"}, "cores"),
        ({"cores": 0}, "cores"),
        ({"cores": 3}, "parallelism is 2"),
        ({"gpus": 99}, "asks for 99 GPUs but"),
        ({"account": "a"}, "only a batch scheduler"),
        ({"walltime": 60}, "unknown resource"),
        ({"after": ["x.1"]}, "after"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"env": ["A=1"]}, "env"),
    ],
)
def test_bad_resources_raise_and_queue_nothing(dist, resources, fragment):
    with pytest.raises(ValueError, match=fragment):
        dist.submit_to_batch_distributor("true", "bad", resources)
    with pytest.raises(ValueError, match=fragment):
        dist.submit_array_to_batch_distributor("true", "bad", resources, 5)
    assert dist.get_submitted_or_running() == set()


def test_cores_take_slots(dist, tmp_path):
    # Each task records its start and end; a 2-core task must not overlap any other task.
    record = "echo $(date +%s.%N) >> {f}; sleep 0.3; echo $(date +%s.%N) >> {f}"
    files = {name: tmp_path / f"{name}.times" for name in ("a", "b", "wide", "c")}
    ids = {}
    for name in ("a", "b", "wide", "c"):
        cores = 2 if name == "wide" else 1
        ids[name] = dist.submit_to_batch_distributor(record.format(f=files[name]), name, {"cores": cores})
    wait_finished(dist, ids.values())
    spans = {name: [float(x) for x in path.read_text().split()] for name, path in files.items()}
    wide_start, wide_end = spans["wide"]
    for name in ("a", "b", "c"):
        start, end = spans[name]
        assert end <= wide_start + 0.01 or start >= wide_end - 0.01, f"{name} overlapped the 2-core task"
    # a and b ran side by side: parallelism is really used.
    assert spans["b"][0] < spans["a"][1]


def test_usage_stats(dist):
    burn = f"{PY} -c \"x = bytearray(150 * 2**20); x[::4096] = b'1' * len(x[::4096]); sum(range(3_000_000))\""
    job = dist.submit_to_batch_distributor(burn, "burn", {})
    wait_finished(dist, [job])
    usage = dist.get_usage_stats(job)
    assert usage["cpu_s"] > 0.02
    assert usage["wall_s"] >= usage["cpu_s"] * 0.5
    assert usage["max_rss_mb"] >= 150


def test_terminate_kills_the_whole_running_tree(dist, tmp_path):
    pids = tmp_path / "pids"
    job = dist.submit_to_batch_distributor(f"sleep 60 & echo $! > {pids}; sleep 60", "tree", {})
    shell = wait_running(dist, job)
    child = int(wait_for_file(pids))
    started = time.monotonic()
    dist.terminate_task_instances([job])
    wait_finished(dist, [job])
    latency = time.monotonic() - started
    assert dist.get_remote_exit_info(job)[0] == "K"
    assert not pid_alive(shell) and not pid_alive(child)
    assert latency < 0.5


def test_terminate_escalates_to_sigkill(dist, tmp_path):
    ready = tmp_path / "ready"
    job = dist.submit_to_batch_distributor(f"trap '' TERM; echo up > {ready}; sleep 60", "stubborn", {})
    pid = wait_running(dist, job)
    wait_for_file(ready)
    dist.terminate_task_instances([job])
    wait_finished(dist, [job], timeout=5)
    status, message = dist.get_remote_exit_info(job)
    assert status == "K" and "SIGKILL" in message
    assert not pid_alive(pid)


def test_queued_tasks_cancelled_never_start(dist, tmp_path):
    blockers = [dist.submit_to_batch_distributor("sleep 30", f"block{i}", {}) for i in range(2)]
    marker = tmp_path / "ran"
    queued = dist.submit_to_batch_distributor(f"touch {marker}", "queued", {})
    array = dist.submit_array_to_batch_distributor(f"touch {marker}$ARRAY_STEP_ID", "arr", {}, 50)
    dist.terminate_task_instances([queued, *array.values()])
    dist.terminate_task_instances(blockers)
    wait_finished(dist, [*blockers, queued, *array.values()])
    time.sleep(0.2)
    assert not list(tmp_path.glob("ran*"))
    assert dist.get_remote_exit_info(queued) == ("K", "cancelled before it started")


def test_cancel_right_after_submit_never_leaves_it_running(dist, tmp_path):
    for attempt in range(10):
        job = dist.submit_to_batch_distributor("sleep 30", f"quick{attempt}", {})
        dist.terminate_task_instances([job])
        wait_finished(dist, [job], timeout=5)
        assert dist.get_remote_exit_info(job)[0] == "K"


def test_daemons_that_escape_their_group_are_killed(dist, tmp_path):
    pidfile = tmp_path / "daemon"
    if SYSTEM.name == "linux":  # orphans come back to the consumer (a subreaper): even a double fork is caught
        escapes = f"(setsid sleep 300 & echo $! > {pidfile}); exit 0"
    else:  # the portable promise (docs/RELIABILITY.md): caught once a usage sample saw it as the task's descendant
        escapes = f"setsid sleep 300 & echo $! > {pidfile}; sleep 2.5; exit 0"
    job = dist.submit_to_batch_distributor(escapes, "escaper", {})
    wait_finished(dist, [job])
    daemon = int(wait_for_file(pidfile))
    deadline = time.monotonic() + 3
    while pid_alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(daemon)
    assert dist.get_remote_exit_info(job)[0] == "D"


def test_queueing_error_when_the_log_folder_cannot_be_used(dist, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    job = dist.submit_to_batch_distributor("true", "x", {"stdout": str(not_a_folder / "sub")})
    fine = dist.submit_to_batch_distributor("true", "y", {})
    wait_finished(dist, [job, fine])
    errors = dist.get_queueing_errors([job, fine])
    assert list(errors) == [job]
    assert "could not start" in errors[job] and "Not a directory" in errors[job]
    assert dist.get_remote_exit_info(job)[0] == "W"
    assert dist.get_remote_exit_info(fine)[0] == "D"


def test_array_ids_environment_and_throttle(dist, tmp_path):
    script = f"echo $JOB_ID $ARRAY_STEP_ID $NBDIST_DISTRIBUTOR_ID; echo $(date +%s.%N) >> {tmp_path}/t$ARRAY_STEP_ID; sleep 0.05; echo $(date +%s.%N) >> {tmp_path}/t$ARRAY_STEP_ID"
    ids = dist.submit_array_to_batch_distributor(script, "arr", {"max_concurrent": 1}, 4)
    job_id = ids[0].rsplit("_", 1)[0]
    assert ids == {step: f"{job_id}_{step}" for step in range(4)}
    wait_finished(dist, ids.values())
    for step, distributor_id in ids.items():
        stdout = Path(dist.log_paths(distributor_id)[0]).read_text().split()
        assert stdout == [job_id, str(step), distributor_id]
    spans = sorted(tuple(float(x) for x in (tmp_path / f"t{step}").read_text().split()) for step in range(4))
    for first, second in zip(spans, spans[1:]):
        assert second[0] >= first[1] - 0.005, "max_concurrent=1 steps overlapped"


def test_large_array_is_cheap_to_submit_and_stop(tmp_path):
    distributor = MultiprocessDistributor("big", parallelism=2, log_dir=str(tmp_path))
    distributor.start()
    try:
        ids = distributor.submit_array_to_batch_distributor("true", "big", {}, 100_000)
        assert len(ids) == 100_000 and ids[99_999].endswith("_99999")
        assert len(distributor.get_submitted_or_running()) > 99_000
    finally:
        started = time.monotonic()
        distributor.stop()
        assert time.monotonic() - started < 1.5
    assert distributor.get_submitted_or_running() == set()
    assert distributor.get_remote_exit_info(ids[99_999])[0] == "K"


def test_ids_are_unique_across_instances(tmp_path):
    first = MultiprocessDistributor("a", parallelism=1, log_dir=str(tmp_path))
    second = MultiprocessDistributor("a", parallelism=1, log_dir=str(tmp_path))
    assert first.submit_to_batch_distributor("true", "t", {}) != second.submit_to_batch_distributor("true", "t", {})
    first.start(), second.start()
    first.stop(), second.stop()


def test_worker_node_sees_its_ids(dist):
    probe = f"{PY} -c 'from nbdist.multiprocess import MultiprocessWorkerNode as W; n = W(); print(n.distributor_id, n.array_step_id)'"
    job = dist.submit_to_batch_distributor(probe, "probe", {})
    array = dist.submit_array_to_batch_distributor(probe, "probe", {}, 2)
    wait_finished(dist, [job, *array.values()])
    assert Path(dist.log_paths(job)[0]).read_text().split() == [job, "None"]
    assert Path(dist.log_paths(array[1])[0]).read_text().split() == [array[1], "1"]
    node = MultiprocessWorkerNode()
    assert node.get_exit_info(0, "") == ("D", "exit code 0")
    assert node.get_exit_info(3, "boom") == ("E", "boom")
    assert node.get_exit_info(-9, "")[0] == "K"
    assert set(node.get_usage_stats()) >= {"wall_s", "cpu_s", "max_rss_mb"}


def test_env_and_cwd(dist, tmp_path):
    job = dist.submit_to_batch_distributor("echo $GREETING; pwd", "envcwd", {"env": {"GREETING": "hi there"}, "cwd": str(tmp_path)})
    wait_finished(dist, [job])
    assert Path(dist.log_paths(job)[0]).read_text().split("\n")[:2] == ["hi there", str(tmp_path)]


def test_stop_is_fast_and_leaves_nothing(tmp_path):
    distributor = MultiprocessDistributor("stop", parallelism=2, log_dir=str(tmp_path))
    distributor.start()
    running = [distributor.submit_to_batch_distributor("trap '' TERM; sleep 60", f"s{i}", {}) for i in range(2)]
    queued = distributor.submit_to_batch_distributor("sleep 60", "q", {})
    pids = [wait_running(distributor, job) for job in running]
    consumers = [slot.process.pid for slot in distributor._consumers]
    started = time.monotonic()
    distributor.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"stop took {elapsed:.2f}s"
    assert [distributor.get_remote_exit_info(job)[0] for job in [*running, queued]] == ["K", "K", "K"]
    assert not any(pid_alive(pid) for pid in pids + consumers)


def test_a_killed_consumer_loses_only_its_task(tmp_path):
    distributor = MultiprocessDistributor("fault", parallelism=2, log_dir=str(tmp_path))
    distributor.start()
    try:
        victim = distributor.submit_to_batch_distributor("sleep 60", "victim", {})
        task_pid = wait_running(distributor, victim)
        consumer = psutil.Process(task_pid).parent()
        others = distributor.submit_array_to_batch_distributor("echo ok", "others", {}, 20)
        os.kill(consumer.pid, signal.SIGKILL)
        wait_finished(distributor, [victim, *others.values()])
        status, message = distributor.get_remote_exit_info(victim)
        assert status == "U" and "consumer" in message and "SIGKILL" in message
        assert {distributor.get_remote_exit_info(i)[0] for i in others.values()} == {"D"}
        assert not pid_alive(task_pid)
        assert len(distributor._consumers) == 2 and consumer.pid not in [s.process.pid for s in distributor._consumers]
        after = distributor.submit_to_batch_distributor("echo again", "after", {})
        wait_finished(distributor, [after])
        assert distributor.get_remote_exit_info(after)[0] == "D"
    finally:
        started = time.monotonic()
        distributor.stop()
        assert time.monotonic() - started < 1.0


def test_no_step_runs_twice_when_a_consumer_dies_mid_array(tmp_path):
    distributor = MultiprocessDistributor("dup", parallelism=2, log_dir=str(tmp_path / "logs"))
    distributor.start()
    runs = tmp_path / "runs"
    try:
        ids = distributor.submit_array_to_batch_distributor(f"echo $ARRAY_STEP_ID >> {runs}", "dup", {}, 400)
        deadline = time.monotonic() + 10
        while not runs.exists() or len(runs.read_text().split()) < 50:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(distributor._consumers[0].process.pid, signal.SIGKILL)
        wait_finished(distributor, ids.values(), timeout=30)
    finally:
        distributor.stop()
    ran = runs.read_text().split()
    assert len(ran) == len(set(ran)), "a step ran twice"
    letters = {step: distributor.get_remote_exit_info(i)[0] for step, i in ids.items()}
    assert set(letters.values()) <= {"D", "U"}
    # Lost: at most the task it ran and those whose events it had not sent yet (none if it was idle).
    lost = [step for step, letter in letters.items() if letter == "U"]
    assert len(lost) <= PREFETCH_SHORT + 1
    assert {str(step) for step, letter in letters.items() if letter == "D"} <= set(ran)


def test_tasks_die_with_the_process_that_owns_the_distributor(tmp_path):
    owner_code = f"""
import sys, time
from nbdist.multiprocess import MultiprocessDistributor
d = MultiprocessDistributor("owner", parallelism=2, log_dir={str(tmp_path)!r})
d.start()
ids = [d.submit_to_batch_distributor("sleep 60", f"s{{i}}", {{}}) for i in range(3)]
while sum(r["status"] == "R" for r in d.get_task_reports(ids).values()) < 2:
    time.sleep(0.01)
print(" ".join(str(r["pid"]) for r in d.get_task_reports(ids).values() if r["pid"]), flush=True)
time.sleep(60)
"""
    import subprocess

    owner = subprocess.Popen([PY, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    task_pids = [int(pid) for pid in owner.stdout.readline().split()]
    consumers = [p.pid for p in psutil.Process(owner.pid).children()]
    assert len(task_pids) == 2 and len(consumers) == 2
    owner.kill()
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 3
    while any(pid_alive(pid) for pid in task_pids + consumers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in task_pids + consumers if pid_alive(pid)]


def test_a_long_job_never_holds_up_tasks_submitted_after_it(dist):
    long_job = dist.submit_to_batch_distributor("sleep 20", "long", {})
    wait_running(dist, long_job)
    started = time.monotonic()
    steps = dist.submit_array_to_batch_distributor("echo quick", "quick", {}, 6)
    wait_finished(dist, steps.values(), timeout=10)
    assert time.monotonic() - started < 3, "steps waited behind the long job"
    assert dist.get_submitted_or_running([long_job]) == {long_job}
    dist.terminate_task_instances([long_job])
    wait_finished(dist, [long_job])


def test_steps_queued_behind_a_slow_step_are_taken_back(dist, tmp_path):
    # Many instant steps make the array "short" (prefetched); step 60 then sleeps. The steps queued
    # behind it on its consumer must run on the other consumer meanwhile.
    command = f"if [ $ARRAY_STEP_ID = 60 ]; then sleep 3; fi; date +%s.%N > {tmp_path}/$ARRAY_STEP_ID"
    steps = dist.submit_array_to_batch_distributor(command, "mixed", {}, 80)
    wait_finished(dist, steps.values(), timeout=20)
    ends = {step: float((tmp_path / str(step)).read_text()) for step in steps}
    slow_end = ends.pop(60)
    assert max(ends.values()) < slow_end - 1.5, "a step waited behind the slow one"
    assert {dist.get_remote_exit_info(i)[0] for i in steps.values()} == {"D"}


def test_cancelling_queued_steps_of_a_throttled_array_does_not_stall_the_rest(dist):
    blockers = [dist.submit_to_batch_distributor("sleep 30", f"b{i}", {}) for i in range(2)]
    steps = dist.submit_array_to_batch_distributor("echo ok", "throttled", {"max_concurrent": 2}, 6)
    dist.terminate_task_instances([steps[0], steps[1]])
    dist.terminate_task_instances(blockers)
    wait_finished(dist, [*blockers, *steps.values()], timeout=10)
    assert [dist.get_remote_exit_info(steps[i])[0] for i in range(6)] == ["K", "K", "D", "D", "D", "D"]


def test_tasks_inherit_no_descriptor_of_the_distributor(dist):
    job = dist.submit_to_batch_distributor("ls /proc/$$/fd", "fds", {})
    wait_finished(dist, [job])
    assert sorted(Path(dist.log_paths(job)[0]).read_text().split(), key=int) == ["0", "1", "2"]


def test_cancelled_tasks_held_by_a_dead_consumer_stay_cancelled(tmp_path):
    distributor = MultiprocessDistributor("held", parallelism=2, log_dir=str(tmp_path / "logs"))
    distributor.start()
    runs = tmp_path / "runs"
    try:
        ids = distributor.submit_array_to_batch_distributor(f"echo $ARRAY_STEP_ID >> {runs}", "held", {}, 3000)
        deadline = time.monotonic() + 10
        while True:  # wait until a consumer holds prefetched tasks, then freeze it
            with distributor._lock:
                slot = next((s for s in distributor._consumers if len(s.assigned) > 2), None)
                if slot is not None:
                    os.kill(slot.process.pid, signal.SIGSTOP)
                    held = [r.distributor_id for r in list(slot.assigned)[1:]]
                    break
            assert time.monotonic() < deadline, "no consumer ever held prefetched tasks"
            time.sleep(0.001)
        distributor.terminate_task_instances(held)  # the frozen consumer never reads these kills
        os.kill(slot.process.pid, signal.SIGKILL)
        wait_finished(distributor, ids.values(), timeout=60)
    finally:
        distributor.stop()
    letters = {i: distributor.get_remote_exit_info(i)[0] for i in held}
    assert "D" not in letters.values(), f"a cancelled task ran: {letters}"
    ran = runs.read_text().split()
    assert len(ran) == len(set(ran))


def test_ids_fit_jobmons_varchar_20_at_job_1000_step_10000(tmp_path):
    distributor = MultiprocessDistributor("long-ids", parallelism=1, log_dir=str(tmp_path))
    for _ in range(999):
        distributor.submit_to_batch_distributor("true", "t", {})
    steps = distributor.submit_array_to_batch_distributor("true", "t", {}, 10_001)
    assert steps[10_000].endswith(".1000_10000") and len(steps[10_000]) <= 20
    assert len(new_job_id_prefix()) == 8


def test_prefixes_never_repeat_in_a_process():
    prefixes = [new_job_id_prefix() for _ in range(2000)]
    assert len(set(prefixes)) == len(prefixes)
    assert all(len(prefix) == 8 and prefix.isalnum() and prefix == prefix.lower() for prefix in prefixes)


def test_no_empty_temporary_folder_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unused = MultiprocessDistributor("tmp", parallelism=1)
    unused.start()
    own_logs = unused.submit_to_batch_distributor("true", "t", {"stdout": str(tmp_path / "o"), "stderr": str(tmp_path / "o")})
    wait_finished(unused, [own_logs])
    unused.stop()
    assert not list(tmp_path.glob("nbdist-*")), "a distributor whose tasks named their logs made a temporary folder"
    used = MultiprocessDistributor("tmp", parallelism=1)
    used.start()
    job = used.submit_to_batch_distributor("echo kept", "t", {})
    wait_finished(used, [job])
    idle = MultiprocessDistributor("tmp", parallelism=1)
    idle.start()
    folder = idle.log_dir  # asked for, made, never written to
    idle.stop()
    used.stop()
    assert not os.path.exists(folder)
    assert Path(used.log_paths(job)[0]).read_text() == "kept\n"  # a folder with logs stays
    assert [p.name for p in tmp_path.glob("nbdist-*")] == [Path(used.log_dir).name]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for PID namespaces")
def test_prefixes_differ_across_pid_namespaces():
    """Two kernels in containers: same pid (1, each in its own PID namespace), started in the same second."""
    code = "import os; from nbdist.backends.multiprocess.ids import new_job_id_prefix as p; print(os.getpid(), p())"
    command = ["unshare", "--pid", "--fork", sys.executable, "-c", code]
    for _ in range(3):
        runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [run.communicate(timeout=30)[0].split() for run in runs]
        assert [pid for pid, _ in outputs] == ["1", "1"], outputs
        assert outputs[0][1] != outputs[1][1], outputs


def test_single_submits_of_short_tasks_are_prefetched(tmp_path):
    """Each single submit is a job of its own (Jobmon's way): the last finished task's pace stands in for a
    job that has none yet, so short ones queue behind a running task instead of waiting for a round-trip."""
    distributor = MultiprocessDistributor("single", parallelism=1, log_dir=str(tmp_path))
    distributor.start()
    try:
        wait_finished(distributor, [distributor.submit_to_batch_distributor("true", "first", {})])
        running = distributor.submit_to_batch_distributor("sleep 0.5", "slow", {})
        behind = [distributor.submit_to_batch_distributor("true", f"t{i}", {}) for i in range(3)]
        [slot] = distributor._consumers
        assert [record.distributor_id for record in slot.assigned] == [running, *behind]
        wait_finished(distributor, [running, *behind])
        assert {distributor.get_remote_exit_info(i)[0] for i in [running, *behind]} == {"D"}
    finally:
        distributor.stop()
