"""Python calls as tasks, run by the real multiprocess distributor: values, exceptions, exits, crashes."""

from __future__ import annotations

import os
import pickle
import sys
import time

import pytest

from nbdist.cluster_protocol import pycall
from nbdist.multiprocess import MultiprocessDistributor


def _read(path) -> str:
    with open(path) as handle:
        return handle.read()


def _run(tmp_path, call: pycall.Call, items: list | None = None, steps: int | None = None, **resources):
    """Submit one call (or a map over ``items``) and wait: ``{step or None: (status, message, outcome path)}``."""
    logs = str(tmp_path / "logs")
    os.makedirs(logs, exist_ok=True)
    call_file = pycall.call_path(logs, "fn", "j1")
    pycall.write_call(call_file, call)
    items_file = None
    if items is not None:
        items_file = pycall.items_path(logs, "fn", "j1")
        pycall.write_items(items_file, items)
    # The command form (what a scheduler runs), cold: no shell prologue, the runner finds its item from
    # the backend's array index. (The multiprocess backend given the call as data runs it in a warm
    # worker: tests/backends/multiprocess/test_warm_workers.py.)
    command = pycall.PythonCall(call_file, items_file).command()
    requested = {"stdout": logs, "stderr": logs, **resources}
    with MultiprocessDistributor("local", parallelism=2, log_dir=logs) as distributor:
        if items is None:
            ids = {None: distributor.submit_to_batch_distributor(command, "fn", requested)}
        else:
            ids = distributor.submit_array_to_batch_distributor(command, "fn", requested, len(items))
        deadline = time.monotonic() + 60
        while distributor.get_submitted_or_running(list(ids.values())):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return {step: (*distributor.get_remote_exit_info(did), pycall.result_path_for(call_file, did),
                       distributor.log_paths(did))
                for step, did in ids.items()}


def test_a_closure_over_a_local_runs_and_its_value_comes_back(tmp_path):
    scale = 7
    (status, message, result, _logs), = _run(tmp_path, pycall.Call(lambda x, y=1: scale * x + y, (6,),
                                                                    {"y": 2})).values()
    assert (status, message) == ("D", "exit code 0")
    assert pycall.read_outcome(result) == (True, 44)


def test_a_map_reads_only_its_own_item_and_shares_the_arguments(tmp_path):
    shared = list(range(1000))
    outcomes = _run(tmp_path, pycall.Call(lambda item, table: (item, sum(table)), (shared,)),
                    items=["a", "b", {"c": 3}])
    assert [pycall.read_outcome(outcomes[step][2]) for step in range(3)] == [
        (True, ("a", 499500)), (True, ("b", 499500)), (True, ({"c": 3}, 499500))]
    # the call (function and shared list) is one file; the items another: nothing per step
    assert sorted(name for name in os.listdir(tmp_path / "logs") if ".c" in name or ".i" in name) == [
        "fn.cj1", "fn.ij1"]


def test_grid_items_are_keyword_arguments(tmp_path):
    outcomes = _run(tmp_path, pycall.Call(lambda lr, depth: f"{lr}/{depth}", item_as_kwargs=True),
                    items=[{"lr": 0.1, "depth": 3}, {"lr": 0.01, "depth": 5}])
    assert [pycall.read_outcome(outcomes[i][2])[1] for i in range(2)] == ["0.1/3", "0.01/5"]


def test_an_exception_of_a_locally_defined_type_comes_back_as_itself_with_the_remote_traceback(tmp_path):
    class NotConverged(RuntimeError):
        pass

    def fit():
        raise NotConverged("loss is nan at epoch 3")

    (status, message, result, (_out, err)), = _run(tmp_path, pycall.Call(fit)).values()
    assert (status, message) == ("E", "exit code 1")
    ok, exc = pycall.read_outcome(result)
    assert not ok and type(exc).__name__ == "NotConverged" and str(exc) == "loss is nan at epoch 3"
    assert isinstance(exc.__cause__, pycall.RemoteTraceback) and "in fit" in str(exc.__cause__)
    assert _read(err).splitlines()[-1].endswith("NotConverged: loss is nan at epoch 3")


def test_an_exception_that_cannot_travel_becomes_a_remote_error_naming_its_type(tmp_path):
    class Picky(Exception):
        def __init__(self, a, b):  # unpickling calls Picky(*args) with one argument: it fails
            super().__init__(f"{a}-{b}")

    def boom():
        raise Picky(1, 2)

    (status, _message, result, _logs), = _run(tmp_path, pycall.Call(boom)).values()
    ok, exc = pycall.read_outcome(result)
    assert status == "E" and not ok and isinstance(exc, pycall.RemoteError)
    assert exc.type_name.endswith("Picky") and "1-2" in str(exc) and "in boom" in exc.remote_traceback
    assert pickle.loads(pickle.dumps(exc)).type_name == exc.type_name


def test_sys_exit_is_the_exit_code_and_writes_no_result(tmp_path):
    import sys

    (status, message, result, _logs), = _run(tmp_path, pycall.Call(sys.exit, (3,))).values()
    assert (status, message) == ("E", "exit code 3") and not os.path.exists(result)


def test_a_segfault_is_a_signal(tmp_path):
    import ctypes

    (status, message, result, _logs), = _run(tmp_path, pycall.Call(ctypes.string_at, (0,))).values()
    assert status == "E" and "SIGSEGV" in message and not os.path.exists(result)


def test_a_result_that_cannot_be_pickled_fails_the_step_with_that_reason(tmp_path):
    import threading

    (status, message, result, (_out, err)), = _run(tmp_path, pycall.Call(threading.Lock)).values()
    ok, exc = pycall.read_outcome(result)
    assert (status, message) == ("E", "exit code 1") and not ok
    assert isinstance(exc, TypeError) and "cannot be pickled" in str(exc) and "lock" in str(exc)
    assert "cannot be pickled" in _read(err)


def test_output_is_unbuffered_without_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    call_file = pycall.call_path(str(logs), "fn", "j1")

    def talk():
        import time as clock

        print("first", flush=False)
        clock.sleep(1.5)
        print("second")

    pycall.write_call(call_file, pycall.Call(talk))
    with MultiprocessDistributor("local", parallelism=1, log_dir=str(logs)) as distributor:
        did = distributor.submit_to_batch_distributor(pycall.call_command(call_file), "fn",
                                                      {"stdout": str(logs), "stderr": str(logs)})
        out, _err = distributor.log_paths(did)
        deadline = time.monotonic() + 10
        while not (os.path.exists(out) and _read(out)):
            assert time.monotonic() < deadline and distributor.get_submitted_or_running([did]), "no live output"
            time.sleep(0.05)
        assert _read(out) == "first\n" and distributor.get_submitted_or_running([did])


def test_a_function_over_its_memory_limit_is_a_resource_error(tmp_path):
    def hog():
        block = bytearray(400 * 1024 * 1024)
        import time as clock

        clock.sleep(5)
        return len(block)

    (status, message, result, _logs), = _run(tmp_path, pycall.Call(hog), memory="100M").values()
    assert status == "Z" and "memory" in message and not os.path.exists(result)


def test_an_argument_that_cannot_be_pickled_is_refused_before_anything_is_written(tmp_path):
    import threading

    path = str(tmp_path / "fn.cj1")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pycall.write_call(path, pycall.Call(print, (threading.Lock(),)))
    assert os.listdir(tmp_path) == []


def test_items_spread_as_positional_arguments_and_the_step_is_in_the_environment(tmp_path):
    def add(a, b, scale):
        return (a + b) * scale, os.environ["NBDIST_STEP"]

    outcomes = _run(tmp_path, pycall.Call(add, args=(10,), item_as_args=True), items=[(1, 2), (3, 4)])
    assert [pycall.read_outcome(outcomes[step][2]) for step in (0, 1)] == [(True, (30, "0")), (True, (70, "1"))]


def test_a_call_is_data_that_survives_json_and_knows_its_command_and_result_path(tmp_path):
    call = pycall.PythonCall(str(tmp_path / "a b.cj1"), str(tmp_path / "a b.ij1"), "/opt/py thon", 1)
    assert pycall.PythonCall.from_json(call.to_json()) == call
    assert pycall.PythonCall.from_json(None) is None
    assert pycall.PythonCall(call.call).python == sys.executable
    assert call.command() == pycall.call_command(call.call, call.items, "/opt/py thon")
    assert call.result_path("7_3") == pycall.result_path_for(call.call, "7_3")


def test_the_step_index_comes_from_nbdist_step_else_the_backends_array_index():
    assert pycall.step_index({"NBDIST_STEP": "4", "ARRAY_STEP_ID": "9"}) == 4
    assert pycall.step_index({"ARRAY_STEP_ID": "9"}) == 9
    assert pycall.step_index({"SLURM_ARRAY_TASK_ID": "7"}) == 7
    with pytest.raises(LookupError):
        pycall.step_index({})
