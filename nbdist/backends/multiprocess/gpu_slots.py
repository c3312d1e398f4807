"""The machine's GPUs as slots of the multiprocess backend: which are free, which a starting task takes.

A task that asks for ``gpus=k`` starts when ``k`` devices are free and holds them (its
``CUDA_VISIBLE_DEVICES``) until it ends; a device is held by the running task of a consumer
(:meth:`~.slots.ConsumerSlot.gpus_in_use`), so nothing is to release when a task ends, is lost or
handed back. Which devices exist: :func:`~nbdist.backends._task.gpus.find_devices`, asked when a task
first wants one (a machine whose tasks ask for none never asks the driver).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._task.gpus import declared_devices, find_devices

if TYPE_CHECKING:
    from .slots import ConsumerSlot, QueuedTask

__all__ = ["GpuSlots"]


class GpuSlots:
    """The devices tasks may hold: ``declared`` (the backend's ``gpus`` option), else those found."""

    def __init__(self, declared: Sequence[int | str] | str | None = None) -> None:
        self._devices = declared_devices(declared) if declared is not None else None

    @staticmethod
    def count_for(options: Mapping[str, Any]) -> int:
        """How many devices a backend constructed with ``options`` has (its ``gpus``, else those found)."""
        return len(find_devices(options.get("gpus")))

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device, in order (found on first use)."""
        if self._devices is None:
            self._devices = find_devices()
        return self._devices

    def count(self) -> int:
        """How many devices there are: the most one task may ask for."""
        return len(self.devices)

    def free(self, slots: Sequence[ConsumerSlot]) -> tuple[str, ...]:
        """The devices no consumer's running task holds, in order."""
        held = {device for slot in slots for device in slot.gpus_in_use()}
        return tuple(device for device in self.devices if device not in held)

    def waits(self, task: QueuedTask, slots: Sequence[ConsumerSlot]) -> bool:
        """True if ``task`` asks for more GPUs than are free now."""
        return task.resources.gpus > 0 and task.resources.gpus > len(self.free(slots))

    def take(self, task: QueuedTask, slots: Sequence[ConsumerSlot]) -> tuple[str, ...]:
        """The devices ``task`` gets as it is given to a consumer (() when it asks for none)."""
        return self.free(slots)[:task.resources.gpus] if task.resources.gpus else ()
