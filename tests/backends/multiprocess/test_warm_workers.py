"""Warm workers: a Python call given to the multiprocess backend as data runs in a long-lived interpreter.

Real distributors, consumers and workers. The fast path is proven (the second call of a numpy or
pandas function runs in the same worker process, with numpy already imported, and imports nothing
new), then each promise of a task is checked on it: its own logs (Python prints, ``os.write`` on fd 1,
a C ``printf``, the traceback), exit codes, kill and limits ending only that call (the next call runs
in a new worker), global state and the isolation knob, keys (a worker never serves a call for
another environment), and no process left behind, also when the consumer is killed.
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

from nbdist.backends._task.system import SYSTEM
from nbdist.cluster_protocol import pycall
from nbdist.multiprocess import MultiprocessDistributor
from process_helpers import pid_alive

WORKER_MODULE = "nbdist.backends._task.callworker"
# The functions below travel by value, as a notebook's do (the task cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


class Calls:
    """A started distributor and a log folder; ``submit`` writes a call file and submits the call as data."""

    def __init__(self, folder: Path, distributor: MultiprocessDistributor) -> None:
        self.folder = folder
        self.distributor = distributor
        self.count = 0
        self.calls: dict[str, pycall.PythonCall] = {}

    def submit(self, function: Callable[..., Any], *args: Any, max_calls: int | None = None,
               **resources: Any) -> str:
        self.count += 1
        call_file = pycall.call_path(str(self.folder), "fn", f"j{self.count}")
        pycall.write_call(call_file, pycall.Call(function, args, sys_path=list(sys.path)))
        call = pycall.PythonCall(call_file, max_calls_per_worker=max_calls)
        requested = {"stdout": str(self.folder), "stderr": str(self.folder), **resources}
        distributor_id = self.distributor.submit_to_batch_distributor(call.command(), "fn", requested, call=call)
        self.calls[distributor_id] = call
        return distributor_id

    def wait(self, distributor_id: str, timeout: float = 60.0) -> dict[str, Any]:
        _wait_until(lambda: not self.distributor.get_submitted_or_running([distributor_id]), timeout)
        return self.distributor.get_task_reports([distributor_id])[distributor_id]

    def run(self, function: Callable[..., Any], *args: Any, **options: Any) -> tuple[dict[str, Any], Any]:
        """Submit, wait; the report and the value (the call must have returned)."""
        task = self.submit(function, *args, **options)
        report = self.wait(task)
        assert (report["status"], report["exit_code"]) == ("D", 0), (report, self.logs(task))
        ok, value = self.outcome(task)
        assert ok
        return report, value

    def outcome(self, distributor_id: str) -> tuple[bool, Any]:
        return pycall.read_outcome(self.calls[distributor_id].result_path(distributor_id))

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
            "in_worker": WORKER_MODULE in sys.modules, "cwd": os.getcwd(), "job": os.environ.get("JOB_ID"),
            "task": os.environ.get("NBDIST_DISTRIBUTOR_ID"), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
            "stdin": sys.stdin.read(), "sigint": __import__("signal").getsignal(2) is __import__("signal").default_int_handler}


def numpy_work(seed: int) -> tuple[int, bool, int, int, float]:
    """(worker pid, numpy loaded before this call, modules before, modules after, a checked value)."""
    loaded, before = "numpy" in sys.modules, len(sys.modules)
    import numpy as np

    matrix = np.random.default_rng(seed).standard_normal((50, 50))
    value = float(np.linalg.norm(matrix @ matrix.T))
    return os.getpid(), loaded, before, len(sys.modules), value


def pandas_work(rows: int) -> tuple[int, bool, int, int, int]:
    loaded, before = "pandas" in sys.modules, len(sys.modules)
    import pandas as pd

    frame = pd.DataFrame({"a": range(rows), "b": [i % 3 for i in range(rows)]})
    return os.getpid(), loaded, before, len(sys.modules), int(frame.groupby("b")["a"].sum().sum())


def test_a_numpy_function_runs_warm_the_second_call_imports_nothing(calls, tmp_path):
    first_report, first = calls.run(numpy_work, 1)
    second_report, second = calls.run(numpy_work, 2)
    assert first[0] == second[0] == second_report["pid"]  # the same worker process made both calls
    assert not first[1] and first[3] > first[2]  # the first call imported numpy
    assert second[1] and second[3] == second[2] == first[3]  # the second found it and imported nothing
    assert second[4] > 0
    # The call's own usage: its CPU, not the worker's import time; its peak RSS.
    assert second_report["usage"]["cpu_s"] < first_report["usage"]["cpu_s"]
    assert second_report["usage"]["max_rss_mb"] > 0


def test_a_pandas_function_runs_warm(calls):
    _, first = calls.run(pandas_work, 10)
    _, second = calls.run(pandas_work, 20)
    assert first[0] == second[0] and not first[1] and second[1] and second[2] == second[3]
    assert second[4] == sum(range(20))


def test_a_warm_call_is_its_own_task_its_session_env_cwd_and_stdin(calls, tmp_path):
    task = calls.submit(whoami, cwd=str(tmp_path))
    report = calls.wait(task)
    ok, me = calls.outcome(task)
    assert ok and me["in_worker"] and me["pid"] == report["pid"] == me["pgid"]  # it leads its own group
    if SYSTEM.name == "linux":  # a session of its own (the portable path makes a process group only)
        assert me["sid"] == me["pid"]
    consumer = psutil.Process(me["ppid"])
    assert "Consumer.serve" in " ".join(consumer.cmdline())
    assert (me["cwd"], me["unbuffered"], me["stdin"], me["sigint"]) == (str(tmp_path), "1", "", True)
    assert me["task"] == task and task.startswith(me["job"])
    _, again = calls.run(whoami)
    assert again["pid"] == me["pid"] and again["task"] != task and again["cwd"] == consumer.cwd()


def _talks(tag: str, fail: bool) -> str:
    import ctypes

    print(f"print {tag}")
    print(f"stderr {tag}", file=sys.stderr)
    os.write(1, f"fd1 {tag}\n".encode())
    os.write(2, f"fd2 {tag}\n".encode())
    libc = ctypes.CDLL(None)
    libc.printf(f"printf {tag}\n".encode())  # C stdio: buffered in the worker until the call ends
    if fail:
        raise ValueError(f"failing {tag}")
    return tag


def test_prints_c_writes_and_the_traceback_land_in_the_calls_own_logs(calls):
    first = calls.submit(_talks, "one", True)
    second = calls.submit(_talks, "two", False)
    assert calls.wait(first)["exit_code"] == 1 and calls.wait(second)["exit_code"] == 0
    out, err = calls.logs(first)
    assert sorted(out.splitlines()) == ["fd1 one", "print one", "printf one"]
    assert err.startswith("stderr one\nfd2 one\nTraceback") and "ValueError: failing one" in err
    ok, error = calls.outcome(first)
    assert not ok and isinstance(error, ValueError)
    out, err = calls.logs(second)
    assert sorted(out.splitlines()) == ["fd1 two", "print two", "printf two"]
    assert err == "stderr two\nfd2 two\n"
    assert calls.outcome(second) == (True, "two")


def test_exit_codes_sys_exit_a_missing_cwd_and_a_segfault_end_only_that_call(calls, tmp_path):
    assert (calls.wait(task := calls.submit(sys.exit, 3))["exit_code"], calls.logs(task)[1]) == (3, "")
    text = calls.submit(sys.exit, "giving up")
    assert calls.wait(text)["exit_code"] == 1 and "giving up" in calls.logs(text)[1]
    missing = calls.submit(whoami, cwd=str(tmp_path / "missing"))
    assert calls.wait(missing)["exit_code"] == 125 and "cannot enter" in calls.logs(missing)[1]
    _, before = calls.run(whoami)
    crashed = calls.submit(__import__("ctypes").string_at, 0)
    report = calls.wait(crashed)
    assert (report["status"], report["signal"]) == ("E", signal.SIGSEGV)
    _, after = calls.run(whoami)
    assert after["pid"] != before["pid"] and not pid_alive(before["pid"])  # a new worker took its place


def _spawn_child_and_sleep(pid_file: str) -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(60)


def test_a_killed_warm_call_ends_K_with_its_tree_and_the_next_call_runs(calls, tmp_path):
    _, warm = calls.run(whoami)
    pid_file = tmp_path / "child"
    task = calls.submit(_spawn_child_and_sleep, str(pid_file))
    assert calls.running_pid(task) == warm["pid"]
    child = int(_wait_until(lambda: pid_file.exists() and pid_file.read_text()))
    calls.distributor.terminate_task_instances([task])
    assert calls.wait(task)["status"] == "K"
    assert not pid_alive(warm["pid"]) and not pid_alive(child)
    _, after = calls.run(whoami)
    assert after["pid"] != warm["pid"]


def _hold_memory(megabytes: int) -> None:
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: it is resident
    time.sleep(60)


def test_runtime_and_memory_limits_of_a_warm_call_end_only_that_call(calls):
    _, warm = calls.run(numpy_work, 0)
    slow = calls.submit(time.sleep, 60, runtime=1)
    report = calls.wait(slow)
    assert (report["status"], report["limit"]) == ("Z", "runtime") and "runtime limit" in report["message"]
    assert report["usage"]["cpu_s"] < 1  # the worker's imports before this call are not its CPU
    _, between = calls.run(numpy_work, 0)
    assert between[0] != warm[0] and not between[1]  # a fresh worker
    hog = calls.submit(_hold_memory, 300, memory="200M")
    report = calls.wait(hog)
    assert (report["status"], report["limit"]) == ("Z", "memory") and report["usage"]["max_rss_mb"] > 200
    _, after = calls.run(numpy_work, 0)
    assert after[0] not in (warm[0], between[0])


def _pollute() -> int:
    import json

    json.POLLUTED = True  # type: ignore[attr-defined]
    os.chdir("/")
    os.environ["POLLUTED"] = "1"
    sys.path.insert(0, "/polluted")
    sys.stdout = open(os.devnull, "w")
    return os.getpid()


def _state() -> dict[str, Any]:
    import json

    return {"global": hasattr(json, "POLLUTED"), "cwd": os.getcwd(), "env": "POLLUTED" in os.environ,
            "path": "/polluted" in sys.path, "stdout": sys.stdout.fileno(), "pid": os.getpid()}


def test_a_call_that_changes_global_state_and_the_isolation_knob(calls):
    _, polluter = calls.run(_pollute)
    _, state = calls.run(_state)
    # Restored per call: cwd, environment, sys.path, sys.stdout. Module state stays, as in a
    # ProcessPoolExecutor's reused worker: that is what max_calls_per_worker is for.
    assert state["pid"] == polluter and state["global"]
    assert (state["env"], state["path"], state["stdout"]) == (False, False, 1)
    assert state["cwd"] == psutil.Process(polluter).cwd()
    _, fresh = calls.run(_pollute, max_calls=1)
    assert fresh != polluter  # asked for a fresh interpreter: not the polluted one
    _, clean = calls.run(_state, max_calls=1)
    assert clean["pid"] not in (polluter, fresh) and not clean["global"]  # and never reused after it


def test_max_calls_per_worker_as_a_backend_option_and_pre_import(tmp_path):
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default"), max_calls_per_worker=2,
                                 pre_import=["numpy"]) as distributor:
        calls = Calls(tmp_path, distributor)
        pids = [calls.run(numpy_work, seed)[1] for seed in range(5)]
    assert [pid for pid, *_ in pids].count(pids[0][0]) == 2 and pids[2][0] == pids[3][0] != pids[0][0]
    assert all(loaded for _, loaded, *_ in pids)  # every worker imported numpy before its first call


def test_a_worker_is_never_shared_by_calls_of_different_environments(calls):
    _, one = calls.run(whoami, env={"OMP_NUM_THREADS": "1"})
    _, two = calls.run(whoami, env={"OMP_NUM_THREADS": "2"})
    _, gpu = calls.run(whoami, env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "1"})
    _, again = calls.run(whoami, env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "1"})
    assert len({one["pid"], two["pid"], gpu["pid"]}) == 3 and again["pid"] == gpu["pid"]
    _, environ = calls.run(_environ, env={"OMP_NUM_THREADS": "2"})
    assert environ["OMP_NUM_THREADS"] == "2" and environ["PYTHONUNBUFFERED"] == "1"


def _environ() -> dict[str, str]:
    return dict(os.environ)


def _print_slowly() -> None:
    print("first line")
    time.sleep(3)
    print("last line")


def test_output_is_live_without_PYTHONUNBUFFERED_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(tmp_path / "default")) as distributor:
        calls = Calls(tmp_path, distributor)
        calls.run(whoami)  # the worker is up: its stdout is set up without the variable in our environment
        task = calls.submit(_print_slowly)
        calls.running_pid(task)
        assert _wait_until(lambda: calls.logs(task)[0] == "first line\n", timeout=2.5)
        assert calls.distributor.get_submitted_or_running([task])  # still running: the line came live
        calls.wait(task)


def test_workers_die_with_their_consumer_even_when_it_is_killed(calls, tmp_path):
    _, idle = calls.run(whoami)
    pid_file = tmp_path / "child"
    task = calls.submit(_spawn_child_and_sleep, str(pid_file))
    busy = calls.running_pid(task)
    assert busy == idle["pid"]
    child = int(_wait_until(lambda: pid_file.exists() and pid_file.read_text()))
    os.kill(idle["ppid"], signal.SIGKILL)  # the consumer, while its worker runs a call
    assert calls.wait(task)["status"] == "U"
    _wait_until(lambda: not pid_alive(busy) and not pid_alive(child), timeout=5)
    _, after = calls.run(whoami)  # a new consumer, a new worker
    assert after["ppid"] != idle["ppid"]


def test_stopping_the_distributor_ends_idle_workers(tmp_path):
    with MultiprocessDistributor("warm", parallelism=2, log_dir=str(tmp_path / "default")) as distributor:
        calls = Calls(tmp_path, distributor)
        workers = {calls.run(whoami)[1]["pid"] for _ in range(3)}
    for pid in workers:
        _wait_until(lambda: not pid_alive(pid), timeout=5)


def _leaves_threads(pool: bool) -> int:
    import concurrent.futures
    import threading

    def late() -> None:
        time.sleep(0.5)
        print("from a thread, after the function returned")

    threading.Thread(target=late).start()  # non-daemon: joined, as an interpreter joins it before exiting
    if pool:
        executor = concurrent.futures.ThreadPoolExecutor(2)
        executor.submit(print, "from a pool").result()
        globals()["kept_pool"] = executor  # idle, never shut down: the worker cannot keep it
    return os.getpid()


def test_threads_a_call_leaves_are_joined_and_a_pool_left_running_retires_the_worker(calls):
    joined = calls.submit(_leaves_threads, False)
    assert calls.wait(joined)["status"] == "D"
    assert calls.logs(joined)[0] == "from a thread, after the function returned\n"
    ok, first = calls.outcome(joined)
    _, pooled = calls.run(_leaves_threads, True)
    assert pooled == first  # the same warm worker...
    _, after = calls.run(whoami)
    assert after["pid"] != pooled and not pid_alive(pooled)  # ...retired after the call that left a pool


def _forks() -> str:
    child = os.fork()  # the child returns from the function too, as in a task of its own
    if child:
        os.waitpid(child, 0)
        return "parent"
    return "child"


def test_a_child_the_call_forks_ends_when_it_returns_and_never_answers_for_the_worker(calls):
    task = calls.submit(_forks)
    report = calls.wait(task)
    assert (report["status"], calls.outcome(task)) == ("D", (True, "parent"))
    _, after = calls.run(whoami)
    assert after["pid"] == report["pid"]  # the worker goes on, its channel untouched by the child


POOL_SCRIPT = """
import json, os, sys, time
from nbdist.backends._task.runner import TaskSpec
from nbdist.backends.multiprocess.workers import WorkerOptions, WorkerPool
from nbdist.cluster_protocol import pycall

folder = sys.argv[1]
package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pycall.__file__)))
pool = WorkerPool(dict(os.environ), WorkerOptions(idle_timeout=0.3, max_rss_growth_mb=100), package_parent)
def grow(megabytes):
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    sys.__dict__.setdefault("leaked", []).append(block)  # module state: it outlives the call, as a leak does
    return os.getpid()

def call(n, function, *args):
    path = pycall.call_path(folder, "fn", f"j{n}")
    pycall.write_call(path, pycall.Call(function, args, sys_path=list(sys.path)))
    spec = TaskSpec(f"t{n}", "unused", f"{folder}/o{n}", f"{folder}/e{n}", {}, call=pycall.PythonCall(path))
    running = pool.start(spec)
    outcome = running.wait()
    pool.ended()
    assert outcome.status == "D", (outcome, open(f"{folder}/e{n}").read())
    return pycall.read_outcome(spec.call.result_path(spec.distributor_id))[1]

report = {}
first = call(1, grow, 10)
second = call(2, grow, 10)
report["reused"] = first == second
third = call(3, grow, 200)  # grew past the leak guard: retired after this call, a replacement started
report["leaked_retired"] = third == first and [w.pid for w in pool.idle] != [first]
fourth = call(4, os.getpid)
report["fresh_after_leak"] = fourth != first
report["idle_before"] = [w.pid for w in pool.idle]
time.sleep(0.5)
pool.retire_idle()
report["idle_after"] = [w.pid for w in pool.idle]
report["workers"] = [first, fourth]
pool.close()
print(json.dumps(report))
"""


def test_the_leak_guard_and_the_idle_timeout_retire_workers(tmp_path):
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", POOL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["reused"] and report["leaked_retired"] and report["fresh_after_leak"]
    assert report["workers"][1] in report["idle_before"] and report["idle_after"] == []
    assert not any(pid_alive(pid) for pid in report["workers"])


def test_an_idle_worker_killed_from_outside_is_replaced_and_the_next_call_runs(calls):
    _, first = calls.run(whoami)
    os.kill(first["pid"], signal.SIGKILL)  # the OOM killer, say, while it waits for a call
    _wait_until(lambda: not pid_alive(first["pid"]))
    report, after = calls.run(whoami)
    assert after["pid"] != first["pid"] and report["status"] == "D"
