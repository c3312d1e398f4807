"""The Jobmon plugin's pure parts, in nbdist's own venv (no Jobmon needed): units, queue, node, triage."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from nbdist.backends.jobmon.node import JobmonWorkerNode, describe_exit
from nbdist.backends.jobmon.queue import JobmonQueue
from nbdist.backends.jobmon.reports import describe_usage, triage_answer
from nbdist.backends.jobmon.resources import nbdist_resources
from nbdist.cluster_protocol.resources import Resources

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "jobmon" / "plugins" / "nbdist" / "__init__.py"


def test_jobmon_memory_is_gib_and_zero_means_under_one_gib():
    assert nbdist_resources({"memory": 2})["memory"] == 2048
    assert nbdist_resources({"memory": 0})["memory"] == 1024  # the most a request rounded to 0 meant
    assert nbdist_resources({"memory": "512M"})["memory"] == "512M"
    assert Resources.parse(nbdist_resources({"memory": 0})).memory_mb == 1024


def test_unknown_keys_are_dropped_with_a_debug_log_and_log_folders_left_to_jobmon(caplog):
    with caplog.at_level(logging.DEBUG, logger="nbdist.backends.jobmon.resources"):
        resources = nbdist_resources({"cores": 2, "runtime": 90, "queue": "null.q", "project": "p",
                                      "constraints": "x", "stdout": "/logs", "stderr": "/logs"})
    assert resources == {"cores": 2, "runtime": 90, "queue": "null.q"}
    assert "['constraints', 'project']" in caplog.text
    with pytest.raises(ValueError, match="unknown resource"):  # nbdist's own API still refuses them
        Resources.parse({"project": "p"})


def test_queue_bounds_come_from_its_parameters():
    queue = JobmonQueue(7, "null.q", {"cores": [1, 4], "memory": [0, 16], "runtime": [1, 3600]})
    assert (queue.queue_id, queue.queue_name, queue.required_resources) == (7, "null.q", [])
    assert queue.validate_resources(cores=2, memory=8, runtime=60) == (True, "")
    ok, message = queue.validate_resources(cores=8)
    assert ok and "cores 8 cores exceeds the limit of 4" in message  # not strict: a warning only
    ok, message = queue.validate_resources(strict=True, memory=32)
    assert not ok and "memory 32 GiB exceeds the limit of 16 GiB of queue null.q" in message
    assert queue.coerce_resources(cores=8, memory=32, runtime=7200, project="p") == {
        "cores": 8, "memory": 16, "runtime": 3600, "project": "p"}  # cores are nbdist's to judge
    assert queue.coerce_resources(runtime=0) == {"runtime": 0}  # bad input reaches nbdist: W, its message
    assert JobmonQueue(1, "q", None).validate_resources(strict=True, cores=99) == (True, "")


def test_worker_node_never_answers_k_and_logs_go_to_dev_null_without_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("JOB_ID", "abc.3")
    monkeypatch.setenv("ARRAY_STEP_ID", "2")
    node = JobmonWorkerNode()
    assert node.distributor_id == "abc.3_2" and node.array_step_id == 2
    assert node.initialize_logfile("stdout", None, "t") == "/dev/null"
    assert node.initialize_logfile("stderr", "", "t") == "/dev/null"
    assert node.initialize_logfile("stdout", str(tmp_path), "t") == f"{tmp_path}/t.oabc.3_2"
    for code in (-9, -15, 137, 143, 3):
        status, message = node.get_exit_info(code, "boom")
        assert status == "E", (code, status)
        assert message.endswith("stderr:\nboom") and "wall " in message
    assert node.get_exit_info(3, "")[1].startswith("exit code 3 (")
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(143) == "exit code 143, killed by signal 15 (SIGTERM)"
    assert set(node.get_usage_stats()) >= {"wall_s", "cpu_s", "max_rss_mb"}


@pytest.mark.parametrize("status, answer", [("Q", "R"), ("R", "R"), ("Z", "Z"), ("U", "U"), ("D", "U"), ("E", "U"),
                                            ("K", "U"), ("W", "U")])
def test_triage_answers_only_what_jobmon_accepts_from_t(status, answer):
    got, message = triage_answer({"status": status, "message": "m", "usage": {"wall_s": 1.5, "cpu_s": 0.25,
                                                                             "max_rss_mb": 12.0}}, "Traceback: x")
    assert got == answer and got in {"R", "U", "Z", "F"}
    if answer != "R":
        assert "wall 1.5 s" in message or status in ("K", "W")
    if answer == "U":
        assert message.endswith("Traceback: x")


def test_usage_line():
    assert describe_usage({"wall_s": 2.0, "cpu_s": 1.25, "max_rss_mb": 1032.5}) == \
        "wall 2 s, CPU 1.25 s, max RSS 1032 MB"
    assert describe_usage({}) == ""


def test_the_plugin_module_imports_nothing_until_jobmon_asks():
    """Jobmon imports every plugin eagerly: importing this one must neither need nor import nbdist."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('jobmon.plugins.nbdist', {str(PLUGIN)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert not [m for m in sys.modules if m.startswith(('nbdist', 'jobmon'))], sorted(sys.modules)\n"
        "assert callable(module.get_cluster_distributor_class)\n"
        "sys.modules['nbdist'] = None  # nbdist broken: only asking for a class fails\n"
        "try:\n"
        "    module.get_cluster_queue_class()\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "ok", run.stderr


def test_no_jobmon_package_or_plugins_init_shadows_jobmons_own():
    assert not (REPO / "jobmon" / "__init__.py").exists()
    assert not (REPO / "jobmon" / "plugins" / "__init__.py").exists()
    assert importlib.util.find_spec("nbdist.backends.jobmon.queue") is not None
