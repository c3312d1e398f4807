"""This machine's GPUs and what a task did with them: the one module that asks the driver (NVML, ``nvidia-smi``).

Which devices tasks may use (:func:`find_devices`), the first of:

- a declared list: the multiprocess backend's ``gpus`` option (``nbdist.Session(gpus=[0, 1, 2, 3])``);
- ``NBDIST_GPUS`` (``"0,1"``; set and empty: none), so tests and CI without a GPU can declare some;
- what the driver reports: NVML through ``nvidia-ml-py`` when it is installed, else ``nvidia-smi -L``.
  A GPU split into MIG slices counts as its slices, each named by its ``MIG-…`` UUID (what
  ``CUDA_VISIBLE_DEVICES`` takes); a whole GPU is named by its index. The kernel's own
  ``CUDA_VISIBLE_DEVICES`` narrows them, the way CUDA reads it: entries up to the first that names
  no device.

The driver's answer is cached for the process (it does not change while a kernel runs). Nothing here
runs, and ``pynvml`` is never imported, until a task asks for a GPU: a machine without GPUs pays nothing.

What a task did (:class:`GpuMeter`): its peak GPU memory and mean utilisation, from NVML only (absent
without it). Where the driver keeps per-process accounting (``nvidia-smi -am 1``), its figures for the
task's processes; else samples taken while the task runs: the memory its processes hold
(``nvmlDeviceGetComputeRunningProcesses``) and their SM utilisation, or, where per-process
utilisation is not supported, the utilisation of its devices (each held by this one task).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ["GPUS_VARIABLE", "GpuMeter", "declared_devices", "find_devices", "nvidia_smi_gpus"]

# Declares the devices when no list is given (tests, CI, a machine whose driver nbdist cannot ask).
GPUS_VARIABLE = "NBDIST_GPUS"
# nvidia-smi answers in well under a second; a hung driver must not hang a submission forever.
NVIDIA_SMI_TIMEOUT_SECONDS = 20.0

_DEVICE_RE = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_GPU_LINE_RE = re.compile(r"^GPU (\d+):.*\(UUID: (GPU-[^)\s]+)\)")
_MIG_LINE_RE = re.compile(r"^\s+MIG\b.*\(UUID: (MIG-[^)\s]+)\)")


class Gpu(NamedTuple):
    """One physical GPU as the driver lists it: index, UUID, and its MIG slices' UUIDs (if split)."""

    index: int
    uuid: str
    mig: tuple[str, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        """What tasks are given: its slices, or the GPU itself by index."""
        return self.mig or (str(self.index),)


def declared_devices(value: Any) -> tuple[str, ...]:
    """``[0, 1]``, ``("0", "MIG-…")`` or ``"0,1"`` as device names; ValueError for anything else."""
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",")] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"gpus must be a list of GPU ids such as [0, 1] (or '0,1'), not {value!r}")
    names = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)) or (isinstance(item, int) and item < 0):
            raise ValueError(f"gpus: {item!r} is not a GPU id (an index such as 0, or a UUID)")
        name = str(item).strip()
        if not _DEVICE_RE.match(name):
            raise ValueError(f"gpus: {item!r} is not a GPU id (an index such as 0, or a UUID)")
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"gpus: {value!r} names a GPU twice")
    return tuple(names)


def find_devices(declared: Any = None) -> tuple[str, ...]:
    """The devices tasks may use: ``declared``, else ``$NBDIST_GPUS``, else the driver's (see the module)."""
    if declared is not None:
        return declared_devices(declared)
    if GPUS_VARIABLE in os.environ:
        return declared_devices(os.environ[GPUS_VARIABLE])
    gpus = _machine_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return tuple(device for gpu in gpus for device in gpu.devices)
    return _narrow(gpus, visible)


_found: tuple[Gpu, ...] | None = None
_found_lock = threading.Lock()


def _machine_gpus() -> tuple[Gpu, ...]:
    """The driver's GPUs, asked once per process."""
    global _found
    with _found_lock:
        if _found is None:
            listed = _nvml_gpus()
            _found = tuple(listed if listed is not None else nvidia_smi_gpus())
        return _found


def _narrow(gpus: Sequence[Gpu], visible: str) -> tuple[str, ...]:
    """The devices ``CUDA_VISIBLE_DEVICES`` leaves: entries by index or UUID, up to the first unknown one."""
    chosen: list[str] = []
    for entry in (part.strip() for part in visible.split(",")):
        match = next((gpu.devices for gpu in gpus if entry in (str(gpu.index), gpu.uuid)), None)
        if match is None:
            match = next(((uuid,) for gpu in gpus for uuid in gpu.mig if uuid == entry), None)
        if match is None:
            break  # CUDA ignores an invalid entry and every one after it
        chosen.extend(device for device in match if device not in chosen)
    return tuple(chosen)


def nvidia_smi_gpus(executable: str = "nvidia-smi") -> list[Gpu]:
    """The GPUs ``nvidia-smi -L`` lists (none when it is missing or fails)."""
    path = shutil.which(executable)
    if path is None:
        return []
    try:
        listing = subprocess.run([path, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    gpus: list[Gpu] = []
    for line in listing.stdout.splitlines():
        gpu = _GPU_LINE_RE.match(line)
        mig = _MIG_LINE_RE.match(line)
        if gpu:
            gpus.append(Gpu(int(gpu.group(1)), gpu.group(2)))
        elif mig and gpus:
            gpus[-1] = gpus[-1]._replace(mig=(*gpus[-1].mig, mig.group(1)))
    return gpus


# ---------------------------------------------------------------------------------- NVML
_nvml_module: Any = None
_nvml_tried = False
_nvml_lock = threading.Lock()


def _nvml() -> Any:
    """``pynvml``, initialised once per process; None without nvidia-ml-py or a driver."""
    global _nvml_module, _nvml_tried
    with _nvml_lock:
        if not _nvml_tried:
            _nvml_tried = True
            try:
                import pynvml  # nvidia-ml-py, the optional extra nbdist[gpu]

                pynvml.nvmlInit()
                _nvml_module = pynvml
            except Exception:  # not installed, no driver, or a driver too old: no NVML
                _nvml_module = None
        return _nvml_module


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_gpus() -> list[Gpu] | None:
    """The GPUs NVML lists, with their MIG slices; None when NVML cannot be asked."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(Gpu(index, _text(nvml.nvmlDeviceGetUUID(handle)), _mig_slices(nvml, handle)))
        return gpus
    except nvml.NVMLError:
        return None


def _mig_slices(nvml: Any, handle: Any) -> tuple[str, ...]:
    try:
        current, _ = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # not a MIG-capable GPU
        return ()
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        return ()
    slices = []
    for k in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            slices.append(_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, k))))
        except nvml.NVMLError:  # an empty slot
            continue
    return tuple(slices)


class GpuMeter:
    """Peak GPU memory and mean utilisation of one task on its devices (see the module); nothing without NVML.

    The runner calls :meth:`sample` with the pids of the task's tree while it runs, and :meth:`summary`
    once it ended.
    """

    def __init__(self, devices: Sequence[str], nvml: Any = None) -> None:
        self._nvml = nvml if nvml is not None else _nvml()  # ``nvml``: an initialised pynvml (tests: a fake)
        self._handles: list[Any] = []
        self._pids: set[int] = set()
        self._peak_mb: float | None = None
        self._util: list[float] = []
        self._seen_us = 0  # NVML's process-utilisation samples newer than this are new to us
        if self._nvml is None:
            return
        for device in devices:
            try:
                if device.isdigit():
                    self._handles.append(self._nvml.nvmlDeviceGetHandleByIndex(int(device)))
                else:
                    self._handles.append(self._nvml.nvmlDeviceGetHandleByUUID(device))
            except self._nvml.NVMLError:  # a declared device the driver does not know
                continue

    def sample(self, pids: Iterable[int]) -> dict[str, float]:
        """Note what the task's processes hold now; the live figures (``gpu_mem_mb``, ``gpu_percent``) or {}."""
        if not self._handles:
            return {}
        nvml, ours = self._nvml, set(pids)
        self._pids |= ours
        memory, utils, seen = 0.0, [], self._seen_us
        for handle in self._handles:
            try:
                running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError:
                running = []
            memory += sum((proc.usedGpuMemory or 0) for proc in running if proc.pid in ours) / 2**20
            util, latest = self._utilisation(handle, ours)
            utils.append(util)
            seen = max(seen, latest)
        self._seen_us = seen
        self._peak_mb = max(self._peak_mb or 0.0, memory)
        known = [util for util in utils if util is not None]
        if not known:
            return {"gpu_mem_mb": round(memory, 1)}
        util = sum(known) / len(known)
        self._util.append(util)
        return {"gpu_mem_mb": round(memory, 1), "gpu_percent": round(util, 1)}

    def _utilisation(self, handle: Any, pids: set[int]) -> tuple[float | None, int]:
        """SM % of the task's processes on one device since the last sample (and the newest sample's
        time); the device's own % where per-process figures are not supported (the device is this
        task's alone)."""
        nvml, seen = self._nvml, self._seen_us
        try:
            samples = [s for s in nvml.nvmlDeviceGetProcessUtilization(handle, seen) if s.timeStamp > seen]
            return float(sum(s.smUtil for s in samples if s.pid in pids)), max((s.timeStamp for s in samples),
                                                                                default=seen)
        except nvml.NVMLError:
            pass
        try:
            return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu), seen
        except nvml.NVMLError:
            return None, seen

    def summary(self, pid: int) -> dict[str, float]:
        """``gpu_mem_peak_mb`` and ``gpu_percent`` (mean) of the ended task whose main process was ``pid``.

        Accounting figures win where the driver keeps them; else the samples; {} when nothing was measured.
        """
        if not self._handles:
            return {}
        figures = self._accounted(self._pids | {pid})
        if figures:
            return figures
        result: dict[str, float] = {}
        if self._peak_mb is not None:
            result["gpu_mem_peak_mb"] = round(self._peak_mb, 1)
        if self._util:
            result["gpu_percent"] = round(sum(self._util) / len(self._util), 1)
        return result

    def _accounted(self, pids: set[int]) -> dict[str, float]:
        nvml = self._nvml
        peak, util_ms, total_ms = 0.0, 0.0, 0.0
        found = False
        for handle in self._handles:
            try:
                if nvml.nvmlDeviceGetAccountingMode(handle) != nvml.NVML_FEATURE_ENABLED:
                    continue
            except nvml.NVMLError:
                continue
            for pid in pids:
                try:
                    stats = nvml.nvmlDeviceGetAccountingStats(handle, pid)
                except nvml.NVMLError:  # not a process of this device
                    continue
                found = True
                peak += (stats.maxMemoryUsage or 0) / 2**20
                span = max(float(stats.time or 0), 1.0)
                util_ms += stats.gpuUtilization * span
                total_ms += span
        if not found:
            return {}
        return {"gpu_mem_peak_mb": round(peak, 1), "gpu_percent": round(util_ms / total_ms, 1)}
