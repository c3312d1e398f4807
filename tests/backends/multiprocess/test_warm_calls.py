"""Warm Python calls: a consumer forks itself for a Python call, and every promise of a task still holds.

Real distributors, real consumers, real forks: the fast path is proven (the task is a fork of the
consumer — its command line is the consumer's, the consumer's modules are loaded, no ``/bin/sh``
ran), then each promise is checked on it: process group and kill of the whole tree, runtime and
memory limits, exit codes, ``sys.exit``, a segfault, live output without ``PYTHONUNBUFFERED``, logs
and outcome files, a clean state for the next call, nothing left behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import psutil
import pytest

from nbdist.backends.multiprocess.warm import python_call
from nbdist.backends._task.runner import TaskSpec
from nbdist.cluster_protocol import pycall
from nbdist.multiprocess import MultiprocessDistributor
from process_helpers import pid_alive

CONSUMER_MODULE = "nbdist.backends.multiprocess.consumer"
# The functions below travel by value, as a notebook's do (the task cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


class Calls:
    """A started distributor and a log folder; ``submit`` writes a call file and submits its command."""

    def __init__(self, folder: Path, distributor: MultiprocessDistributor) -> None:
        self.folder = folder
        self.distributor = distributor
        self.count = 0
        self.call_files: dict[str, str] = {}

    def submit(self, function: Callable[..., Any], *args: Any, command_prefix: str = "", **resources: Any) -> str:
        self.count += 1
        call_file = pycall.call_path(str(self.folder), "fn", f"j{self.count}")
        pycall.write_call(call_file, pycall.Call(function, args))
        requested = {"stdout": str(self.folder), "stderr": str(self.folder), **resources}
        distributor_id = self.distributor.submit_to_batch_distributor(
            command_prefix + pycall.call_command(call_file), "fn", requested)
        self.call_files[distributor_id] = call_file
        return distributor_id

    def wait(self, distributor_id: str, timeout: float = 30.0) -> dict[str, Any]:
        _wait_until(lambda: not self.distributor.get_submitted_or_running([distributor_id]), timeout)
        return self.distributor.get_task_reports([distributor_id])[distributor_id]

    def outcome(self, distributor_id: str) -> tuple[bool, Any]:
        return pycall.read_outcome(pycall.result_path_for(self.call_files[distributor_id], distributor_id))

    def logs(self, distributor_id: str) -> tuple[str, str]:
        out, err = self.distributor.log_paths(distributor_id)
        return Path(out).read_text(), Path(err).read_text()

    def running_pid(self, distributor_id: str) -> int:
        return _wait_until(lambda: self.distributor.get_task_reports([distributor_id])[distributor_id].get("pid"))


@pytest.fixture
def calls(tmp_path):
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default")) as distributor:
        yield Calls(tmp_path, distributor)


def whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
            "cmdline": psutil.Process().cmdline(), "consumer_loaded": CONSUMER_MODULE in sys.modules,
            "cwd": os.getcwd(), "job": os.environ.get("JOB_ID"), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
            "stdin": sys.stdin.read(), "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler}


def test_a_call_for_this_interpreter_is_a_fork_of_the_consumer_in_its_own_session(calls, tmp_path):
    task = calls.submit(whoami, cwd=str(tmp_path))
    report = calls.wait(task)
    assert (report["status"], report["exit_code"]) == ("D", 0)
    ok, me = calls.outcome(task)
    assert ok
    consumer = psutil.Process(me["ppid"])
    # The consumer started it, and it *is* the consumer's image: never exec'd (so no /bin/sh, no new python).
    assert "Consumer.serve" in " ".join(consumer.cmdline())
    assert me["cmdline"] == consumer.cmdline() and me["consumer_loaded"]
    assert me["pid"] == report["pid"] == me["pgid"] == me["sid"]  # its own session and process group
    assert (me["cwd"], me["unbuffered"], me["stdin"], me["sigint"]) == (str(tmp_path), "1", "", True)
    assert me["job"] and task.startswith(me["job"])
    assert report["usage"]["wall_s"] > 0 and report["usage"]["max_rss_mb"] > 0


def test_any_other_form_of_the_command_runs_through_the_shell_as_before(calls):
    shelled = calls.submit(whoami, command_prefix="true && ")
    env_changed = calls.submit(whoami, env={"PYTHONHASHSEED": "0"})
    for task in (shelled, env_changed):
        assert calls.wait(task)["status"] == "D"
        ok, me = calls.outcome(task)
        assert not me["consumer_loaded"] and me["cmdline"][1:3] == ["-m", pycall.CALL_MODULE]


def test_only_the_exact_form_for_this_interpreter_is_recognized():
    command = pycall.call_command("/x/fn.cj1", "/x/fn.ij1")
    spec = TaskSpec("1", command, os.devnull, os.devnull)
    assert python_call(spec) == ("/x/fn.cj1", "/x/fn.ij1")
    for other in (command + "; rm -rf /", command.replace(" exec ", "  exec "),
                  pycall.call_command("/x/fn.cj1", python="/usr/bin/python3"), "echo hi"):
        assert python_call(TaskSpec("1", other, os.devnull, os.devnull)) is None
    assert python_call(TaskSpec("1", command, os.devnull, os.devnull, env={"PYTHONPATH": "/x"})) is None


def _spawn_grandchild_and_sleep(pid_file: str) -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(60)


def test_a_killed_call_ends_K_with_its_whole_tree_gone(calls, tmp_path):
    pid_file = tmp_path / "grandchild"
    task = calls.submit(_spawn_grandchild_and_sleep, str(pid_file))
    pid = calls.running_pid(task)
    grandchild = int(_wait_until(lambda: pid_file.exists() and pid_file.read_text()))
    assert psutil.Process(grandchild).ppid() == pid
    calls.distributor.terminate_task_instances([task])
    report = calls.wait(task)
    assert report["status"] == "K"
    assert not pid_alive(pid) and not pid_alive(grandchild)


def test_over_its_runtime_a_call_ends_Z_runtime(calls):
    task = calls.submit(time.sleep, 60, runtime=1)
    report = calls.wait(task)
    assert (report["status"], report["limit"]) == ("Z", "runtime")
    assert "runtime limit" in report["message"]


def _hold_memory(megabytes: int) -> None:
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: it is resident
    time.sleep(60)


def test_over_its_memory_a_call_ends_Z_memory(calls):
    task = calls.submit(_hold_memory, 300, memory="150M")
    report = calls.wait(task)
    assert (report["status"], report["limit"]) == ("Z", "memory")
    assert report["usage"]["max_rss_mb"] > 150


def test_exit_codes_sys_exit_and_a_raise(calls):
    three = calls.submit(sys.exit, 3)
    text = calls.submit(sys.exit, "giving up")
    raised = calls.submit(int, "not a number")
    assert (calls.wait(three)["status"], calls.wait(three)["exit_code"]) == ("E", 3)
    assert calls.wait(text)["exit_code"] == 1 and "giving up" in calls.logs(text)[1]
    assert calls.wait(raised)["exit_code"] == 1
    ok, error = calls.outcome(raised)
    assert not ok and isinstance(error, ValueError)
    assert "Traceback" in calls.logs(raised)[1] and "ValueError: invalid literal" in calls.logs(raised)[1]


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def test_a_segfault_in_the_forked_child_is_reported_with_the_signal_and_the_consumer_lives_on(calls):
    crashed = calls.submit(_segfault)
    report = calls.wait(crashed)
    assert (report["status"], report["signal"]) == ("E", signal.SIGSEGV)
    after = calls.submit(whoami)
    assert calls.wait(after)["status"] == "D"


def _print_slowly() -> None:
    print("first line")
    print("to stderr", file=sys.stderr)
    time.sleep(3)
    print("last line")


def test_output_is_live_without_PYTHONUNBUFFERED_in_the_consumers_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default")) as distributor:
        calls = Calls(tmp_path, distributor)
        task = calls.submit(_print_slowly)
        calls.running_pid(task)
        assert _wait_until(lambda: calls.logs(task) == ("first line\n", "to stderr\n"), timeout=2.5)
        assert calls.distributor.get_submitted_or_running([task])  # still running: the lines came live
        calls.wait(task)
        assert calls.logs(task) == ("first line\nlast line\n", "to stderr\n")


def _pollute() -> str:
    import json

    json.POLLUTED = True  # type: ignore[attr-defined]
    os.chdir("/")
    os.environ["POLLUTED"] = "1"
    sys.path.insert(0, "/polluted")
    return "done"


def _state() -> dict[str, Any]:
    import json

    return {"global": hasattr(json, "POLLUTED"), "cwd": os.getcwd(), "env": "POLLUTED" in os.environ,
            "path": "/polluted" in sys.path, "ppid": os.getppid()}


def test_a_call_that_changes_globals_cwd_and_env_leaves_the_next_call_a_clean_state(calls):
    first = calls.submit(_pollute)
    assert calls.wait(first)["status"] == "D" and calls.outcome(first) == (True, "done")
    second = calls.submit(_state)
    assert calls.wait(second)["status"] == "D"
    ok, state = calls.outcome(second)
    consumer_cwd = psutil.Process(state["ppid"]).cwd()
    assert state == {"global": False, "cwd": consumer_cwd, "env": False, "path": False, "ppid": state["ppid"]}


def test_a_missing_cwd_ends_with_125_and_says_why(calls, tmp_path):
    task = calls.submit(whoami, cwd=str(tmp_path / "missing"))
    assert calls.wait(task)["exit_code"] == 125
    assert "cannot enter" in calls.logs(task)[1]


def test_a_map_runs_warm_with_each_step_its_own_item_and_logs(tmp_path):
    logs = str(tmp_path)
    call_file = pycall.call_path(logs, "sq", "j1")
    items_file = pycall.items_path(logs, "sq", "j1")
    pycall.write_call(call_file, pycall.Call(lambda x: (print(f"step {x}"), x * x, CONSUMER_MODULE in sys.modules)[1:]))
    pycall.write_items(items_file, range(20))
    with MultiprocessDistributor("warm", parallelism=2, log_dir=logs) as distributor:
        ids = distributor.submit_array_to_batch_distributor(
            pycall.call_command(call_file, items_file), "sq", {"stdout": logs, "stderr": logs}, 20)
        _wait_until(lambda: not distributor.get_submitted_or_running(list(ids.values())))
        for step, task in ids.items():
            assert distributor.get_remote_exit_info(task) == ("D", "exit code 0")
            assert pycall.read_outcome(pycall.result_path_for(call_file, task)) == (True, (step * step, True))
            assert Path(distributor.log_paths(task)[0]).read_text() == f"step {step}\n"


def _imports(name: str) -> tuple[bool, bool]:
    """(was ``name`` loaded before this call, is this a fork of the consumer); then imports it."""
    import importlib

    loaded = name in sys.modules
    importlib.import_module(name)
    return loaded, CONSUMER_MODULE in sys.modules


def test_the_consumer_imports_what_a_call_needed_so_a_later_call_starts_with_it(calls):
    first = calls.submit(_imports, "xml.dom.minidom")
    assert calls.wait(first)["status"] == "D" and calls.outcome(first) == (True, (False, True))
    # The consumer learns while idle, and gives learning up for a task to start (then learns while
    # that one runs): the call after next starts with the module at the latest.
    second = calls.submit(_imports, "xml.dom.minidom")
    assert calls.wait(second)["status"] == "D" and calls.outcome(second)[0]
    third = calls.submit(_imports, "xml.dom.minidom")
    assert calls.wait(third)["status"] == "D" and calls.outcome(third) == (True, (True, True))


def test_a_module_that_starts_a_thread_on_import_is_not_imported_by_the_consumer(tmp_path, monkeypatch):
    packages = tmp_path / "site"
    packages.mkdir()
    (packages / "spins_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    monkeypatch.setenv("PYTHONPATH", str(packages))  # on the consumer's own sys.path: a candidate
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default")) as distributor:
        calls = Calls(tmp_path, distributor)
        first = calls.submit(_imports, "spins_a_thread")
        assert calls.wait(first)["status"] == "D" and calls.outcome(first) == (True, (False, True))
        second = calls.submit(_imports, "spins_a_thread")
        assert calls.wait(second)["status"] == "D"
        # not imported by the consumer, which stays single-threaded: the call is still a fork
        assert calls.outcome(second) == (True, (False, True))


def _imports_all(names: list[str]) -> tuple[list[bool], bool]:
    """(which of ``names`` were loaded before this call, is this a fork of the consumer); then imports them."""
    import importlib

    loaded = [name in sys.modules for name in names]
    for name in names:
        importlib.import_module(name)
    return loaded, CONSUMER_MODULE in sys.modules


def test_only_a_thread_starting_module_and_its_importers_stay_cold(tmp_path, monkeypatch):
    """numpy's BLAS pool behind pandas behind Jobmon's worker, in small: the rest is still learnt."""
    packages = tmp_path / "site"
    packages.mkdir()
    (packages / "spins_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    (packages / "needs_spinner.py").write_text("import spins_a_thread\n")
    (packages / "plain_helper.py").write_text("VALUE = 1\n")
    (packages / "tool.py").write_text("import plain_helper, needs_spinner\n")
    monkeypatch.setenv("PYTHONPATH", str(packages))
    names = ["tool", "plain_helper", "needs_spinner", "spins_a_thread"]
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default")) as distributor:
        calls = Calls(tmp_path, distributor)
        outcomes = []
        for _ in range(3):  # the call after next starts with what the consumer learnt (see above)
            task = calls.submit(_imports_all, names)
            assert calls.wait(task)["status"] == "D"
            outcomes.append(calls.outcome(task))
    assert outcomes[0] == (True, ([False, False, False, False], True))
    # still a fork (the consumer stayed single-threaded), with plain_helper imported, not the others
    assert outcomes[2] == (True, ([False, True, False, False], True))


def _sys_path() -> tuple[list[str], bool]:
    return list(sys.path), CONSUMER_MODULE in sys.modules


def test_a_forked_call_sees_the_sys_path_a_fresh_interpreter_would(calls, tmp_path):
    warm_task = calls.submit(_sys_path, cwd=str(tmp_path))
    fresh_task = calls.submit(_sys_path, cwd=str(tmp_path), command_prefix="true && ")
    assert calls.wait(warm_task)["status"] == calls.wait(fresh_task)["status"] == "D"
    (warm_path, forked), (fresh_path, fresh_forked) = calls.outcome(warm_task)[1], calls.outcome(fresh_task)[1]
    assert forked and not fresh_forked
    # '' (the consumer's -c) and the cwd (python -m) both mean the task's folder
    same = [entry for entry in warm_path if entry not in ("", str(tmp_path))]
    assert same == [entry for entry in fresh_path if entry not in ("", str(tmp_path))]
