"""Faults on this machine, for real: log folders removed or read-only, a full disk, huge output, listeners."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nbdist.multiprocess import MultiprocessDistributor
from test_multiprocess import wait_finished, wait_running

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def dist(tmp_path):
    distributor = MultiprocessDistributor("faults", parallelism=2, log_dir=str(tmp_path / "logs"))
    distributor.start()
    yield distributor
    distributor.stop()


def test_log_folder_removed_mid_run(dist, tmp_path):
    logs = tmp_path / "run-logs"
    resources = {"stdout": str(logs), "stderr": str(logs)}
    running = dist.submit_to_batch_distributor("sleep 0.5; echo survived", "long", resources)
    wait_running(dist, running)
    shutil.rmtree(logs)
    later = dist.submit_array_to_batch_distributor("echo step $ARRAY_STEP_ID", "later", resources, 5)
    wait_finished(dist, [running, *later.values()])
    assert dist.get_remote_exit_info(running)[0] == "D"  # its open files outlived the folder
    for step, distributor_id in later.items():
        assert dist.get_remote_exit_info(distributor_id)[0] == "D"
        assert Path(dist.log_paths(distributor_id)[0]).read_text() == f"step {step}\n"


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if IS_ROOT:  # root writes through chmod: a read-only bind mount is what stops it
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    yield folder
    if IS_ROOT:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_read_only_log_folder_gives_queueing_errors_and_loses_nothing(dist, read_only_folder):
    resources = {"stdout": str(read_only_folder), "stderr": str(read_only_folder)}
    ids = dist.submit_array_to_batch_distributor("echo hi", "ro", resources, 4)
    fine = dist.submit_to_batch_distributor("echo fine", "fine", {})
    wait_finished(dist, [*ids.values(), fine])
    errors = dist.get_queueing_errors(list(ids.values()))
    assert set(errors) == set(ids.values())
    assert all("could not start" in message and ("Read-only" in message or "Permission" in message) for message in errors.values())
    assert dist.get_remote_exit_info(fine)[0] == "D"


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_full_disk(dist, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        resources = {"stdout": str(small), "stderr": str(tmp_path)}  # stderr must have room for the error
        filler = dist.submit_to_batch_distributor("head -c 1000000 /dev/zero", "filler", resources)
        wait_finished(dist, [filler])
        status, message = dist.get_remote_exit_info(filler)
        assert status == "E", message
        assert "No space left" in Path(dist.log_paths(filler)[1]).read_text()
        after = dist.submit_to_batch_distributor("echo after", "after", {})
        wait_finished(dist, [after])
        assert dist.get_remote_exit_info(after)[0] == "D"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_100_mb_of_stdout_goes_to_the_file_not_to_memory(dist):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job = dist.submit_to_batch_distributor("head -c 100000000 /dev/zero", "big", {})
    wait_finished(dist, [job], timeout=60)
    assert dist.get_remote_exit_info(job)[0] == "D"
    assert os.path.getsize(dist.log_paths(job)[0]) == 100_000_000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KB


def _inet_sockets(proc: psutil.Process) -> list:
    try:
        return proc.net_connections(kind="inet")
    except psutil.Error:
        return []


def test_no_network_listener(tmp_path):
    # The test process may hold sockets of other fixtures (a JupyterLab, kernels): compare before/after.
    listening_before = {c.laddr for c in _inet_sockets(psutil.Process()) if c.status == psutil.CONN_LISTEN}
    distributor = MultiprocessDistributor("net", parallelism=2, log_dir=str(tmp_path))
    distributor.start()
    try:
        ids = distributor.submit_array_to_batch_distributor("sleep 0.3", "net", {}, 4)
        time.sleep(0.2)
        consumers = [psutil.Process(slot.process.pid) for slot in distributor._consumers]
        workers = consumers + [child for c in consumers for child in c.children(recursive=True)]
        assert workers and not [s for proc in workers for s in _inet_sockets(proc)]
        listening = {c.laddr for c in _inet_sockets(psutil.Process()) if c.status == psutil.CONN_LISTEN}
        assert listening <= listening_before
        wait_finished(distributor, ids.values())
    finally:
        distributor.stop()


def test_a_session_opens_no_listener_either(tmp_path):
    import nbdist

    listening_before = {c.laddr for c in _inet_sockets(psutil.Process()) if c.status == psutil.CONN_LISTEN}
    with nbdist.Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        steps = session.array("sleep 0.2; echo {{x}}", over={"x": [1, 2, 3]})
        time.sleep(0.1)
        listening = {c.laddr for c in _inet_sockets(psutil.Process()) if c.status == psutil.CONN_LISTEN}
        steps.wait(30)
    assert listening <= listening_before
    assert [job.exit_code for job in steps] == [0, 0, 0]


def test_registry_locked_by_another_process(tmp_path):
    import subprocess
    import sys

    import nbdist

    root = tmp_path / ".nbdist"
    with nbdist.Session(root=str(root), parallelism=2) as session:
        warmup = session.submit("true", name="warmup")
        warmup.wait(30)
        locker = subprocess.Popen(
            [sys.executable, "-c", (
                "import sqlite3, sys, time\n"
                f"db = sqlite3.connect({str(root / 'registry.db')!r}, isolation_level=None)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(2)\n"
                "db.execute('COMMIT')\n")],
            stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        steps = session.array("echo {{x}}", over={"x": list(range(20))}, name="under-lock")
        assert steps.wait(60).is_terminal
        assert locker.wait(10) == 0
        locker.stdout.close()
        assert [job.stdout() for job in steps] == [f"{x}\n" for x in range(20)]
    later = nbdist.attach(str(root), parallelism=1)
    try:
        assert later.get("under-lock").counts()["DONE"] == 20
    finally:
        later.close()
        nbdist.set_default_session(None)


@pytest.mark.parametrize("task", ["sleep 60", "call"])
def test_a_consumer_that_finds_its_distributor_gone_when_it_reports_kills_its_task(tmp_path, task):
    """The owner's death is seen from either pipe. On the inbox it is an end of file; but when the owner
    dies just as the consumer sends (a usage sample falls due a second into a task, when a script that
    submits and sleeps a second is often killed), the send's broken pipe comes first, and the consumer
    used to exit there and leave its task running to its end. Here only the reply pipe closes, so only
    a send can tell: the task must still end, at the first usage sample."""
    from nbdist.backends._task.runner import TaskSpec
    from nbdist.backends.multiprocess.consumer import Consumer
    from nbdist.backends.multiprocess.messages import (PickableTask, PipeEnd, Run, Started, receive_message,
                                                       send_message)
    from nbdist.cluster_protocol import pycall

    spec = TaskSpec("t.1", "sleep 60", str(tmp_path / "o"), str(tmp_path / "e"), {})
    if task == "call":  # a Python call in a warm worker: the worker is a task process too
        path = pycall.call_path(str(tmp_path), "nap", "j1")
        pycall.write_call(path, pycall.Call(time.sleep, (60,), sys_path=list(sys.path)))
        spec = spec._replace(call=pycall.PythonCall(path))
    inbox_read, inbox_write = os.pipe()
    reply_read, reply_write = os.pipe()
    consumer = Consumer(PipeEnd(inbox_read), PipeEnd(reply_write))
    consumer.start()
    os.close(inbox_read)
    os.close(reply_write)
    processes: list[psutil.Process] = []
    try:
        send_message(PipeEnd(inbox_write), Run([PickableTask("t.1", spec.command, "job", None, spec)]))
        started = [event for event in receive_message(PipeEnd(reply_read)) if type(event) is Started]
        assert started, "the consumer did not report the task started"
        processes = [psutil.Process(started[0].pid)]
        time.sleep(0.2)  # the shell has started its sleep
        processes += processes[0].children(recursive=True)
        os.close(reply_read)  # the distributor stops reading; its inbox end stays open
        reply_read = -1
        consumer.join(5)
        assert consumer.exitcode == 0, "the consumer did not exit once its distributor was gone"
        left = [" ".join(proc.cmdline()) for proc in processes if _alive(proc)]
        assert not left, f"the task outlived its consumer: {left}"
    finally:
        for proc in processes:
            if _alive(proc):
                proc.kill()
        consumer.kill()
        consumer.join(5)
        consumer.close()
        os.close(inbox_write)
        if reply_read != -1:
            os.close(reply_read)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
