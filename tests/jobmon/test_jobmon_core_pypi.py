"""The plugin under PyPI's jobmon-core 3.4.8 (the seed's version), driven the way Jobmon drives it.

PyPI's jobmon client and server do not fit that core (``../shared/jobmon/README.md``), so this is a
protocol-level check without a server: Jobmon's own ``ClusterType`` finds the ``nbdist`` plugin, the
queue validates resources, the distributor runs the worker command Jobmon's base class builds — a
real ``worker_node_entry_point``, which fails for want of a server — and triage says how it ended.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

import jobmon_env
from test_jobmon_suite import assert_nothing_left

pytestmark = [pytest.mark.jobmon, pytest.mark.timeout(600)]

SCRIPT = r"""
import glob, json, os, tempfile, time
from importlib.metadata import version
from jobmon.core.cluster_type import ClusterType

before = set(glob.glob(os.path.join(tempfile.gettempdir(), "nbdist-*")))
cluster_type = ClusterType("nbdist")
Queue, Distributor = cluster_type.cluster_queue_class, cluster_type.cluster_distributor_class
queue = Queue(1, "null.q", {"cores": [1, 2], "memory": [0, 8], "runtime": [1, 3600]})
ok, fine = queue.validate_resources(strict=True, cores=2, memory=4, runtime=60)
bad, too_many = queue.validate_resources(strict=True, cores=3)

distributor = Distributor("nbdist", parallelism=2)
distributor.start()
command = distributor.build_worker_node_command(task_instance_id=7)
resources = {"queue": "null.q", "cores": 1, "memory": 1, "runtime": 60, "project": "ignored"}
job = distributor.submit_to_batch_distributor(command, "seven", resources)
deadline = time.monotonic() + 120
while job in distributor.get_submitted_or_running([job]) and time.monotonic() < deadline:
    time.sleep(0.2)
running_after = sorted(distributor.get_submitted_or_running([job]))
status, message = distributor.get_remote_exit_info(job)
try:
    distributor.submit_to_batch_distributor("true", "greedy", {"cores": 99})
    refused = ""
except ValueError as error:
    refused = str(error)
distributor.stop()
left = sorted(set(glob.glob(os.path.join(tempfile.gettempdir(), "nbdist-*"))) - before)
print(json.dumps({"version": version("jobmon-core"), "ok": ok, "fine": fine, "bad": bad, "too_many": too_many,
                  "command": command, "job": job, "running_after": running_after, "status": status,
                  "message": message, "refused": refused, "left": left}))
"""


@pytest.fixture(scope="module")
def core_root():
    try:
        return jobmon_env.pypi_core_venv()
    except subprocess.CalledProcessError as error:  # no package index here
        pytest.skip(f"cannot install {jobmon_env.PYPI_CORE} from the package index: {error}")


def test_the_plugin_works_under_pypi_jobmon_core_3_4_8(core_root):
    with tempfile.TemporaryDirectory(prefix="jobmon-core-") as folder:
        # No server: the worker's first request fails at once instead of retrying for minutes.
        env = jobmon_env.venv_env(core_root, JOBMON__HTTP__SERVICE_URL=f"http://127.0.0.1:{jobmon_env.free_port()}",
                                  JOBMON__HTTP__ROUTE_PREFIX="/api/v3", JOBMON__HTTP__RETRIES_TIMEOUT="0",
                                  JOBMON__HTTP__RETRIES_ATTEMPTS="1")
        run = subprocess.run([str(core_root / "venv" / "bin" / "python"), "-c", SCRIPT], capture_output=True,
                             text=True, cwd=folder, env=env, timeout=300)
        assert_nothing_left(folder, str(core_root / "venv"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["version"] == "3.4.8"
    assert result["ok"] and not result["bad"] and "cores" in result["too_many"], result
    # Jobmon's base class built the command, and it ran through Jobmon's entry point for real.
    assert "worker_node_job" in result["command"] and "--task_instance_id 7" in result["command"], result
    assert result["running_after"] == [] and len(result["job"]) <= 20
    # Triage answers only what Jobmon accepts from T: the worker exited without reporting: U, with its exit code.
    assert result["status"] == "U" and "exit code" in result["message"], result
    assert "a task asks for 99 cores but parallelism is 2" in result["refused"]
    assert result["left"] == []  # no temporary folder left behind


UNSTOPPED = r"""
import os, time
from jobmon.core.cluster_type import ClusterType

distributor = ClusterType("nbdist").cluster_distributor_class("nbdist", parallelism=1)
distributor.start()
job = distributor.submit_to_batch_distributor("true", "dropped", {"cores": 1})
deadline = time.monotonic() + 60
while job in distributor.get_submitted_or_running([job]) and time.monotonic() < deadline:
    time.sleep(0.1)
print(distributor.log_dir, os.path.isdir(distributor.log_dir))
"""


def test_a_distributor_never_stopped_leaves_no_folder_when_its_process_ends(core_root, tmp_path):
    """As some of Jobmon's own tests do: start, submit, and let the process end without ``stop()``."""
    run = subprocess.run([str(core_root / "venv" / "bin" / "python"), "-c", UNSTOPPED], capture_output=True,
                         text=True, cwd=tmp_path, env=jobmon_env.venv_env(core_root), timeout=120)
    assert_nothing_left(str(tmp_path), str(core_root / "venv"))
    assert run.returncode == 0, run.stderr[-3000:]
    folder, existed = run.stdout.split()
    assert existed == "True" and Path(folder).name.startswith("nbdist-jobmon-")
    assert not Path(folder).exists()
