"""``gpus=`` through the public API on the local backend, with real processes and declared (fake) devices:
``Session(gpus=[...])``, ``submit``/``array``, ``@nbdist.function``, ``Executor``, ``%%submit --gpus``,
"why it waits", one clear error for too many; thread counts of numeric libraries from ``cores``.
"""

from __future__ import annotations

import os
import time

import pytest

import nbdist
from nbdist import Session, State
from nbdist.cluster_protocol.resources import THREAD_VARIABLES


def devices_and_span(seconds: float) -> tuple[str, float, float]:
    """What a GPU step sees, and when it ran."""
    start = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), start, time.time()


def assert_distinct_while_overlapping(spans: list[tuple[str, float, float]]) -> None:
    spans = sorted(spans, key=lambda span: span[1])
    for i, (devices, _, end) in enumerate(spans):
        for other in spans[i + 1:]:
            if other[1] < end:
                assert other[0] != devices, spans


def test_a_sweep_with_one_gpu_per_step_on_declared_devices(tmp_path):
    with Session(parallelism=4, root=str(tmp_path / "root"), gpus=[0, 1]) as session:
        pool = nbdist.Executor(session=session, gpus=1)
        spans = list(pool.map(devices_and_span, [0.6] * 4, chunksize=1))
        assert {devices for devices, _, _ in spans} == {"0", "1"}
        assert_distinct_while_overlapping(spans)

        @nbdist.function(session=session, gpus=1)
        def on_its_gpu(x: int) -> str:
            return f"{x}@{os.environ['CUDA_VISIBLE_DEVICES']}"

        results = on_its_gpu.map(range(4)).results()
        assert [value.split("@")[0] for value in results] == ["0", "1", "2", "3"]
        assert {value.split("@")[1] for value in results} <= {"0", "1"}
        both = session.submit("echo $CUDA_VISIBLE_DEVICES", name="both", gpus=2)
        assert both.wait(30) is State.DONE and both.stdout() == "0,1\n"


def test_a_step_waiting_for_a_gpu_says_so(tmp_path):
    with Session(parallelism=4, root=str(tmp_path / "root"), gpus=["0"]) as session:
        holder = session.submit("sleep 30", name="holder", gpus=1)
        deadline = time.monotonic() + 20
        while holder.state is not State.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = session.array("true", steps=2, name="waiting", gpus=1)
        time.sleep(0.5)  # three consumers are idle: only the GPU holds it back
        assert waiting.counts()[State.QUEUED] == 2
        assert session.snapshot(waiting).reason == "GPUs busy: 1 of 1 in use (1 GPU per step) — holder (id 1): 1"
        cpu = session.submit("true", name="cpu")  # behind them in the queue, but it needs no GPU: it runs
        assert cpu.wait(20) is State.DONE and waiting.counts()[State.QUEUED] == 2
        holder.cancel()
        assert waiting.wait(30) is State.DONE


def test_more_gpus_than_the_machine_has_is_one_line_and_submits_nothing(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root"), gpus=[0, 1]) as session:
        for submit in (lambda: session.submit("true", gpus=3), lambda: session.array("true", steps=4, gpus=3),
                       lambda: nbdist.Executor(session=session, gpus=3).submit(abs, 1)):
            with pytest.raises(ValueError, match=r"^a task asks for 3 GPUs but this machine has 2 \(") as caught:
                submit()
            assert "\n" not in str(caught.value)
        assert session.jobs() == []


def test_a_malformed_gpu_list_fails_in_the_constructor(tmp_path):
    with pytest.raises(ValueError, match="gpus: 'a b' is not a GPU id"):
        Session(root=str(tmp_path / "root"), gpus=["a b"])


def test_the_magics_gpus_flag(tmp_path):
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "nbdist")
    with Session(parallelism=2, root=str(tmp_path / "root"), gpus=[3]) as session:
        nbdist.set_default_session(session)
        try:
            ip.run_cell_magic("submit", "--name g --gpus 1 --quiet --wait --out handle", "echo $CUDA_VISIBLE_DEVICES")
            assert ip.user_ns["handle"].stdout() == "3\n"
            ip.run_cell_magic("submit", "--name p --gpus 1 --python --quiet --wait --out handle",
                              "import os\nos.environ['CUDA_VISIBLE_DEVICES']")
            assert ip.user_ns["handle"].result() == "3"
            with pytest.raises(UsageError, match="asks for 2 GPUs but this machine has 1"):
                ip.run_cell_magic("submit", "--name big --gpus 2 --quiet", "true")
            assert [job.name for job in session.jobs()] == ["g", "p"]
        finally:
            nbdist.set_default_session(None)


def thread_counts() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def test_python_calls_and_commands_get_cores_threads_unless_env_sets_them(tmp_path, monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        assert nbdist.Executor(session=session).submit(thread_counts).result(30) == dict.fromkeys(THREAD_VARIABLES, "1")
        two = nbdist.Executor(session=session, cores=2, env={"MKL_NUM_THREADS": "1"}).submit(thread_counts)
        assert two.result(30) == {**dict.fromkeys(THREAD_VARIABLES, "2"), "MKL_NUM_THREADS": "1"}
        shell = session.submit("echo $OMP_NUM_THREADS $OPENBLAS_NUM_THREADS", cores=2, env={"OMP_NUM_THREADS": "4"})
        assert shell.wait(30) is State.DONE and shell.stdout() == "4 2\n"


FAKE_PYNVML = '''
"""A stand-in for nvidia-ml-py: per-process accounting on, every process 512 MiB at 40 %."""
NVML_FEATURE_ENABLED = 1


class NVMLError(Exception):
    pass


class _Stats:
    maxMemoryUsage = 512 * 2**20
    gpuUtilization = 40
    time = 1000


def nvmlInit():
    pass


def nvmlDeviceGetHandleByIndex(index):
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


def test_gpu_usage_is_in_usage_the_table_and_the_efficiency_line(tmp_path, monkeypatch):
    from nbdist.views.render import row_label
    from nbdist.views.timeline import efficiency_text

    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    monkeypatch.setenv("PYTHONPATH", f"{fake}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"))
    with Session(parallelism=2, root=str(tmp_path / "root"), gpus=[0, 1]) as session:
        sweep = session.array("sleep 0.2", steps=3, name="sweep", gpus=1)
        plain = session.submit("sleep 0.2", name="plain")
        assert sweep.wait(30) is State.DONE and plain.wait(30) is State.DONE
        assert {key: sweep[0].usage[key] for key in ("gpu_mem_peak_mb", "gpu_percent")} == \
            {"gpu_mem_peak_mb": 512.0, "gpu_percent": 40.0}
        snapshot = session.snapshot(sweep)
        assert all(row_label(row).endswith("  GPU 40% 512.0M exit code 0") for row in snapshot.rows), snapshot.rows
        line = efficiency_text(snapshot.progress.efficiency)
        assert "· GPU 40% of 1 GPU, memory peak 512.0M" in line, line
        assert "GPU" not in efficiency_text(session.snapshot(plain).progress.efficiency)
        assert not any(key.startswith("gpu") for key in plain.usage)
