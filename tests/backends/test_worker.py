"""``nbdist-worker``: one task run the way a consumer runs it, exit info written next to the logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from process_helpers import pid_alive

WORKER = shutil.which("nbdist-worker", path=os.path.dirname(sys.executable))


def run_worker(tmp_path, *args, env=None):
    return subprocess.run([WORKER, "--stdout-dir", str(tmp_path), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=30)


def test_worker_is_installed():
    assert WORKER is not None


def test_worker_writes_logs_and_exit_info(tmp_path):
    result = run_worker(tmp_path, "--name", "job", "--id", "42", "--", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "job.o42").read_text() == "out\n"
    assert (tmp_path / "job.e42").read_text() == "err\n"
    info = json.loads((tmp_path / "job.x42").read_text())
    assert info["status"] == "E" and info["exit_code"] == 3 and info["message"] == "exit code 3"
    assert info["limit"] is None and info["distributor_id"] == "42"
    assert set(info["usage"]) >= {"wall_s", "cpu_s", "max_rss_mb"}


def test_worker_takes_its_id_from_slurm_environment(tmp_path):
    env = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "5", "SLURM_JOB_ID": "83"}
    result = run_worker(tmp_path, "--name", "arr", "--", "echo $SLURM_ARRAY_TASK_ID", env=env)
    assert result.returncode == 0
    assert (tmp_path / "arr.o77_5").read_text() == "5\n"
    assert json.loads((tmp_path / "arr.x77_5").read_text())["status"] == "D"


def test_worker_enforces_runtime(tmp_path):
    result = run_worker(tmp_path, "--name", "slow", "--id", "1", "--runtime", "0.3", "--", "sleep 30")
    info = json.loads((tmp_path / "slow.x1").read_text())
    assert info["status"] == "Z" and "runtime" in info["message"] and info["limit"] == "runtime"
    assert result.returncode == 128 + signal.SIGTERM


def test_sigterm_to_the_worker_kills_the_task_tree(tmp_path):
    pids = tmp_path / "pids"
    worker = subprocess.Popen([WORKER, "--stdout-dir", str(tmp_path), "--name", "t", "--id", "9", "--",
                               f"sleep 60 & echo $! > {pids}; wait"])
    deadline = time.monotonic() + 10
    while not (pids.exists() and pids.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = int(pids.read_text())
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) == 128 + signal.SIGTERM
    info = json.loads((tmp_path / "t.x9").read_text())
    assert info["status"] == "K"
    assert not pid_alive(child)


def test_worker_without_command_says_how(tmp_path):
    result = run_worker(tmp_path, "--name", "x")
    assert result.returncode == 2 and "no command given" in result.stderr
    assert not list(Path(tmp_path).iterdir())


def test_several_words_are_argv_quoted_back(tmp_path):
    result = run_worker(tmp_path, "--name", "argv", "--id", "3", "--", "printf", "%s|", "two words", "$(echo no)")
    assert result.returncode == 0
    assert (tmp_path / "argv.o3").read_text() == "two words|$(echo no)|"


def test_worker_enforces_memory_and_says_so(tmp_path):
    hog = f"{sys.executable} -c \"import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)\""
    run_worker(tmp_path, "--name", "hog", "--id", "2", "--memory", "100M", "--", hog)
    info = json.loads((tmp_path / "hog.x2").read_text())
    assert info["status"] == "Z" and "memory" in info["message"] and info["limit"] == "memory"
