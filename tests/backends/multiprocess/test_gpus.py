"""GPUs as slots of the multiprocess backend, with real processes and declared (fake) devices; finding the
machine's GPUs with a fake ``nvidia-smi``; GPU usage from NVML (a fake module); thread counts from ``cores``.

The machine running these has no GPU: devices are declared (``gpus=[...]``, ``NBDIST_GPUS``), as a
user's CI would. What needs a real one is marked ``gpu`` and skips without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nbdist.backends._task.gpus import GpuMeter, declared_devices, find_devices
from nbdist.backends.slurm.sbatch import sbatch_env
from nbdist.cluster_protocol.resources import THREAD_VARIABLES, Resources
from nbdist.multiprocess import MultiprocessDistributor

PY = sys.executable
WORKER = os.path.join(os.path.dirname(sys.executable), "nbdist-worker")
NVIDIA_SMI_LISTING = """\
GPU 0: NVIDIA H200 (UUID: GPU-0a0a0a0a-1111-2222-3333-444444444444)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1b1b1b1b-1111-2222-3333-444444444444)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaaaaaa-1111-2222-3333-444444444444)
  MIG 3g.20gb     Device  1: (UUID: MIG-bbbbbbbb-1111-2222-3333-444444444444)
GPU 2: NVIDIA H200 (UUID: GPU-2c2c2c2c-1111-2222-3333-444444444444)
"""


@pytest.fixture
def make_dist(tmp_path):
    made = []

    def make(**options):
        options.setdefault("parallelism", 4)
        dist = MultiprocessDistributor("gpus", log_dir=str(tmp_path / "logs"), kill_grace=0.5, **options)
        dist.start()
        made.append(dist)
        return dist

    yield make
    for dist in made:
        dist.stop()


def wait_finished(dist, ids, timeout=30.0):
    deadline = time.monotonic() + timeout
    while dist.get_submitted_or_running(list(ids)):
        assert time.monotonic() < deadline, f"still live: {dist.get_submitted_or_running(list(ids))}"
        time.sleep(0.02)


def spans(folder: Path) -> list[tuple[float, float, str]]:
    """(start, end, CUDA_VISIBLE_DEVICES) of each task that wrote ``folder/*.span``."""
    found = []
    for path in folder.glob("*.span"):
        start, end, devices = path.read_text().split()
        found.append((float(start), float(end), devices))
    return sorted(found)


SPAN_COMMAND = ('s=$(date +%s.%N); sleep {sleep}; '
                'echo "$s $(date +%s.%N) ${{CUDA_VISIBLE_DEVICES-unset}}" > {folder}/$NBDIST_DISTRIBUTOR_ID.span')


def test_concurrent_tasks_get_distinct_devices_and_wait_when_all_are_busy(make_dist, tmp_path):
    dist = make_dist(gpus=[0, 1])
    folder = tmp_path / "spans"
    folder.mkdir()
    ids = dist.submit_array_to_batch_distributor(SPAN_COMMAND.format(sleep=1.0, folder=folder), "sweep",
                                                 {"gpus": 1}, 4)
    time.sleep(0.5)  # two run, two wait for a device although two consumers are idle
    reports = dist.get_task_reports(list(ids.values()))
    assert sorted(report["status"] for report in reports.values()) == ["Q", "Q", "R", "R"]
    wait_finished(dist, ids.values())
    found = spans(folder)
    assert len(found) == 4 and {devices for _, _, devices in found} == {"0", "1"}
    for i, (start, end, devices) in enumerate(found):
        overlapping = [other for other in found[i + 1:] if other[0] < end]
        assert all(other[2] != devices for other in overlapping), found
    assert found[2][0] >= min(found[0][1], found[1][1]) - 0.05, "a third task ran before a device was free"


def test_a_two_gpu_task_holds_both_and_a_task_without_gpus_sees_none_set(make_dist, tmp_path):
    dist = make_dist(gpus=["MIG-a", "MIG-b", "7"], parallelism=3)
    folder = tmp_path / "spans"
    folder.mkdir()
    pair = dist.submit_to_batch_distributor(SPAN_COMMAND.format(sleep=0.5, folder=folder), "pair", {"gpus": 2})
    one = dist.submit_to_batch_distributor(SPAN_COMMAND.format(sleep=0.5, folder=folder), "one", {"gpus": 1})
    plain = dist.submit_to_batch_distributor(SPAN_COMMAND.format(sleep=0.1, folder=folder), "plain", {})
    wait_finished(dist, [pair, one, plain])
    seen = {path.stem: path.read_text().split()[2] for path in folder.glob("*.span")}
    assert seen == {pair: "MIG-a,MIG-b", one: "7", plain: "unset"}


def test_a_users_env_cannot_take_devices_it_was_not_given(make_dist, tmp_path):
    dist = make_dist(gpus=[3])
    job = dist.submit_to_batch_distributor("echo $CUDA_VISIBLE_DEVICES", "own", {"gpus": 1,
                                           "env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}})
    wait_finished(dist, [job])
    assert Path(dist.log_dir, f"own.o{job}").read_text() == "3\n"


@pytest.mark.parametrize(("resources", "fragment"), [
    ({"gpus": 3}, r"asks for 3 GPUs but this machine has 2 \(declare them"),
    ({"gpus": "a100:1"}, "a GPU type is Slurm's"),
    ({"gpus": -1}, "gpus must be a number"),
])
def test_a_request_the_machine_cannot_meet_is_one_line_and_queues_nothing(make_dist, resources, fragment):
    dist = make_dist(gpus=["0", "1"])
    for submit in (lambda: dist.submit_to_batch_distributor("true", "big", resources),
                   lambda: dist.submit_array_to_batch_distributor("true", "big", resources, 3)):
        with pytest.raises(ValueError, match=fragment) as caught:
            submit()
        assert "\n" not in str(caught.value)
    assert dist.get_submitted_or_running() == set()


def test_without_any_gpu_a_request_says_how_to_declare_them(make_dist, monkeypatch):
    monkeypatch.setenv("NBDIST_GPUS", "")
    dist = make_dist()
    with pytest.raises(ValueError, match=r"no GPU was found on this machine \(declare them with Session\(gpus="):
        dist.submit_to_batch_distributor("true", "gpu", {"gpus": 1})
    job = dist.submit_to_batch_distributor("true", "cpu", {"gpus": 0})  # asks for nothing
    wait_finished(dist, [job])
    assert dist.get_remote_exit_info(job)[0] == "D"


def test_nbdist_gpus_declares_the_devices(make_dist, tmp_path, monkeypatch):
    monkeypatch.setenv("NBDIST_GPUS", "5, 6")
    dist = make_dist()
    job = dist.submit_to_batch_distributor("echo $CUDA_VISIBLE_DEVICES", "declared", {"gpus": 2})
    wait_finished(dist, [job])
    assert Path(dist.log_dir, f"declared.o{job}").read_text() == "5,6\n"


@pytest.mark.parametrize("bad", [3, [0, 0], [-1], ["a b"], [True], "0,,1"])
def test_a_malformed_device_list_is_refused(bad):
    with pytest.raises(ValueError, match="gpus"):
        declared_devices(bad)
    with pytest.raises(ValueError, match="gpus"):
        MultiprocessDistributor("bad", parallelism=1, gpus=bad)


def test_declared_devices_are_names():
    assert declared_devices([0, "1", "MIG-x"]) == ("0", "1", "MIG-x")
    assert declared_devices(" 2 , 3 ") == ("2", "3") and declared_devices("") == ()


# ------------------------------------------------------------------ finding the machine's GPUs
def test_the_machines_gpus_come_from_nvidia_smi_and_cuda_visible_devices_narrows_them(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    listing = tmp_path / "listing.txt"
    listing.write_text(NVIDIA_SMI_LISTING)
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 2\ncat {listing}\n')
    fake.chmod(0o755)
    probe = textwrap.dedent("""
        import json, os, sys
        sys.modules["pynvml"] = None  # as without nvidia-ml-py, even where it is installed
        from nbdist.backends._task.gpus import find_devices
        found = {}
        for visible in [None, "2,0", "GPU-1b1b1b1b-1111-2222-3333-444444444444", "MIG-bbbbbbbb-1111-2222-3333-444444444444",
                        "0,9,2", "", "-1"]:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            if visible is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible
            found[str(visible)] = find_devices()
        print(json.dumps(found))
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("NBDIST_GPUS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    found = json.loads(subprocess.run([PY, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout)
    mig_a, mig_b = "MIG-aaaaaaaa-1111-2222-3333-444444444444", "MIG-bbbbbbbb-1111-2222-3333-444444444444"
    assert found == {
        "None": ["0", mig_a, mig_b, "2"],  # a GPU split into MIG slices counts as its slices
        "2,0": ["2", "0"],
        "GPU-1b1b1b1b-1111-2222-3333-444444444444": [mig_a, mig_b],
        mig_b: [mig_b],
        "0,9,2": ["0"],  # CUDA ignores everything from the first entry that names no device
        "": [],
        "-1": [],
    }
    # A failing nvidia-smi (no driver) means no GPU, not an error.
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    found = json.loads(subprocess.run([PY, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout)
    assert found["None"] == []


def test_a_consumer_and_a_task_without_gpus_never_load_the_gpu_module(tmp_path):
    probe = textwrap.dedent(f"""
        import sys
        from nbdist.backends.multiprocess import consumer
        from nbdist.backends._task.runner import RunningTask, TaskSpec
        outcome = RunningTask(TaskSpec("1", "true", {str(tmp_path / 'o')!r}, {str(tmp_path / 'e')!r}, {{}})).wait()
        assert outcome.status == "D", outcome
        print([name for name in ("pynvml", "nbdist.backends._task.gpus") if name in sys.modules])
    """)
    assert subprocess.run([PY, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


# ------------------------------------------------------------------ GPU usage
FAKE_PYNVML = '''
"""A stand-in for nvidia-ml-py: two devices, per-process accounting on, every process 512 MiB at 40 %."""
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_ENABLE = 1


class NVMLError(Exception):
    pass


class _Stats:
    maxMemoryUsage = 512 * 2**20
    gpuUtilization = 40
    time = 1000


def nvmlInit():
    pass


def nvmlDeviceGetHandleByIndex(index):
    if index > 1:
        raise NVMLError("no such device")
    return index


def nvmlDeviceGetComputeRunningProcesses(handle):
    return []


def nvmlDeviceGetProcessUtilization(handle, since):
    raise NVMLError("not supported")


def nvmlDeviceGetUtilizationRates(handle):
    raise NVMLError("not supported")


def nvmlDeviceGetAccountingMode(handle):
    return NVML_FEATURE_ENABLED


def nvmlDeviceGetAccountingStats(handle, pid):
    return _Stats()
'''


def test_a_gpu_tasks_usage_has_its_gpu_memory_and_utilisation(make_dist, tmp_path, monkeypatch):
    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"))
    dist = make_dist(gpus=[1], parallelism=2)  # consumers start now, with the fake on their path
    gpu = dist.submit_to_batch_distributor("sleep 0.2", "gpu", {"gpus": 1})
    cpu = dist.submit_to_batch_distributor("sleep 0.2", "cpu", {})
    wait_finished(dist, [gpu, cpu])
    usage = dist.get_task_reports([gpu, cpu])
    assert usage[gpu]["usage"]["gpu_mem_peak_mb"] == 512.0 and usage[gpu]["usage"]["gpu_percent"] == 40.0
    assert not any(key.startswith("gpu") for key in usage[cpu]["usage"])  # a task without GPUs: not asked


def test_without_nvml_a_gpu_tasks_usage_has_no_gpu_figures(make_dist, tmp_path):
    dist = make_dist(gpus=[0])
    job = dist.submit_to_batch_distributor("sleep 1.2", "gpu", {"gpus": 1})  # one live sample too
    wait_finished(dist, [job])
    report = dist.get_task_reports([job])[job]
    assert report["status"] == "D" and "wall_s" in report["usage"]
    assert not any(key.startswith("gpu") for key in report["usage"])


class _FakeNvml:
    """NVML for :class:`GpuMeter` units: per-process memory and utilisation samples, accounting off."""

    NVML_FEATURE_ENABLED = 1
    NVMLError = RuntimeError

    def __init__(self, memory, util, accounting=None):
        self.memory, self.util, self.accounting = memory, util, accounting

    def nvmlDeviceGetHandleByIndex(self, index):
        return int(index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("unknown")

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=mb * 2**20) for pid, mb in self.memory[handle].items()]

    def nvmlDeviceGetProcessUtilization(self, handle, since):
        return [SimpleNamespace(pid=pid, smUtil=util, timeStamp=since + 1) for pid, util in self.util[handle].items()]

    def nvmlDeviceGetAccountingMode(self, handle):
        return int(self.accounting is not None)

    def nvmlDeviceGetAccountingStats(self, handle, pid):
        if pid not in (self.accounting or {}):
            raise RuntimeError("not a process of this device")
        memory_mb, util, ms = self.accounting[pid]
        return SimpleNamespace(maxMemoryUsage=memory_mb * 2**20, gpuUtilization=util, time=ms)


def test_gpu_meter_counts_only_the_tasks_processes_on_its_devices():
    nvml = _FakeNvml(memory={0: {10: 300, 11: 100, 99: 5000}, 1: {10: 50}},
                     util={0: {10: 60, 99: 30}, 1: {10: 20}})
    meter = GpuMeter(["0", "1", "MIG-unknown"], nvml=nvml)
    assert meter.sample([10, 11]) == {"gpu_mem_mb": 450.0, "gpu_percent": 40.0}
    nvml.memory[0][10] = 100
    nvml.util = {0: {10: 80}, 1: {10: 0}}
    assert meter.sample([10]) == {"gpu_mem_mb": 150.0, "gpu_percent": 40.0}
    assert meter.summary(10) == {"gpu_mem_peak_mb": 450.0, "gpu_percent": 40.0}


def test_gpu_meter_prefers_the_drivers_accounting():
    nvml = _FakeNvml(memory={0: {}}, util={0: {}}, accounting={10: (700, 90, 3000), 12: (100, 10, 1000)})
    meter = GpuMeter(["0"], nvml=nvml)
    meter.sample([12])
    assert meter.summary(10) == {"gpu_mem_peak_mb": 800.0, "gpu_percent": 70.0}


# ------------------------------------------------------------------ threads follow cores
THREADS_COMMAND = 'echo "' + " ".join(f"${name}" for name in THREAD_VARIABLES) + '"'


def test_numeric_libraries_threads_follow_cores_unless_the_task_or_kernel_sets_them(make_dist, monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NUMEXPR_NUM_THREADS", "3")  # the kernel's own setting is kept
    dist = make_dist()
    two = dist.submit_to_batch_distributor(THREADS_COMMAND, "two", {"cores": 2})
    one = dist.submit_array_to_batch_distributor(THREADS_COMMAND, "one", {}, 2)
    own = dist.submit_to_batch_distributor(THREADS_COMMAND, "own", {"cores": 2, "env": {"OMP_NUM_THREADS": "7"}})
    wait_finished(dist, [two, own, *one.values()])
    expected = {name: "3" if name == "NUMEXPR_NUM_THREADS" else None for name in THREAD_VARIABLES}

    def seen(name, job):
        return dict(zip(THREAD_VARIABLES, Path(dist.log_dir, f"{name}.o{job}").read_text().split()))

    assert seen("two", two) == {name: value or "2" for name, value in expected.items()}
    assert seen("one", one[1]) == {name: value or "1" for name, value in expected.items()}
    assert seen("own", own) == {**{name: value or "2" for name, value in expected.items()}, "OMP_NUM_THREADS": "7"}


def test_slurm_jobs_get_thread_counts_and_never_the_kernels_devices():
    environ = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1", "ROCR_VISIBLE_DEVICES": "0", "MKL_NUM_THREADS": "8"}
    env = sbatch_env(environ, Resources.parse({"cores": 4, "gpus": 1, "env": {"OMP_NUM_THREADS": "2"}},
                                              site_options=True))
    assert "CUDA_VISIBLE_DEVICES" not in env and "ROCR_VISIBLE_DEVICES" not in env  # Slurm sets the job's own
    assert env == {"PATH": "/bin", "MKL_NUM_THREADS": "8", "OMP_NUM_THREADS": "2",
                   **{name: "4" for name in THREAD_VARIABLES if name not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}}
    asked = sbatch_env({}, Resources.parse({"env": {"CUDA_VISIBLE_DEVICES": "3"}}, site_options=True))
    assert asked["CUDA_VISIBLE_DEVICES"] == "3"  # a task's own env still wins


def test_a_slurm_step_sees_the_devices_slurm_gave_it(tmp_path):
    # What slurmstepd hands the worker for a step given GPU 1; the worker and its task keep it.
    env = dict(os.environ, SLURM_JOB_ID="77", CUDA_VISIBLE_DEVICES="1")
    subprocess.run([WORKER, "--stdout-dir", str(tmp_path), "--name", "step", "--",
                    "echo $CUDA_VISIBLE_DEVICES"], env=env, check=True, timeout=30)
    assert (tmp_path / "step.o77").read_text() == "1\n"


# ------------------------------------------------------------------ a real GPU
@pytest.mark.gpu
def test_a_task_on_a_real_gpu_sees_one_device_and_reports_its_memory(make_dist, monkeypatch):
    monkeypatch.delenv("NBDIST_GPUS", raising=False)
    devices = find_devices()
    if not devices:
        pytest.skip("no NVIDIA GPU on this machine")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    dist = make_dist(parallelism=2)
    code = ("import torch, time; x = torch.ones(256, 2**20, device='cuda'); time.sleep(2.5); "
            "print(torch.cuda.device_count(), float(x.sum()))")
    job = dist.submit_to_batch_distributor(f"{PY} -c \"{code}\"", "torch", {"gpus": 1})
    wait_finished(dist, [job], timeout=120)
    report = dist.get_task_reports([job])[job]
    assert report["status"] == "D", Path(dist.log_dir, f"torch.e{job}").read_text()
    assert Path(dist.log_dir, f"torch.o{job}").read_text().split()[0] == "1"
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return
    assert report["usage"].get("gpu_mem_peak_mb", 0) >= 1024  # 1 GiB of ones, and CUDA's context
