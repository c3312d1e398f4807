"""The session's backends: one instance per backend name, made on first use, and what is sent to them.

The launcher knows a backend only through :mod:`nbdist.cluster_protocol` and its capabilities
(:class:`~nbdist.cluster_protocol.SessionDefaults` for constructor defaults and the largest task,
:class:`~nbdist.cluster_protocol.AdoptingDistributor` for tasks that outlive the session,
:class:`~nbdist.cluster_protocol.ReportingDistributor` for where logs are); it finds classes through
the :mod:`nbdist.backends` loader, by name, and never imports a backend module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..backends import backend_options, load_backend
from ..cluster_protocol import AdoptingDistributor, ReportingDistributor, SessionDefaults
from ..cluster_protocol.naming import array_id
from ..cluster_protocol.resources import SITE_KEYS
from .records import JobRecord
from .sweep import STEP_ENV, script_command

__all__ = ["Launcher"]

logger = logging.getLogger(__name__)


class Launcher:
    """Backends by name, and the commands and ``requested_resources`` a record sends them.

    Parameters
    ----------
    backend_name, backend_class
        The session's own backend (its options apply to it only).
    root, parallelism, options
        The session's root folder, ``parallelism`` and backend options.
    """

    def __init__(self, backend_name: str, backend_class: type, root: str, parallelism: int | None,
                 options: Mapping[str, Any]) -> None:
        self.backend_name = backend_name
        self.root = root
        self.parallelism = parallelism
        self._options = dict(options)
        self._classes: dict[str, type] = {backend_name: backend_class}
        self._backends: dict[str, Any] = {}
        # Told by a backend that can tell (its ``on_task_ended`` attribute) that tasks ended: the poller
        # looks at once instead of at its next scheduled poll.
        self.on_task_ended: Callable[[], None] | None = None
        if self._options.get("gpus") is not None:
            self.gpu_count()  # a malformed list of declared GPUs fails in the Session's constructor

    # ------------------------------------------------------------------ backends
    def backend(self, name: str) -> Any:
        """The started backend ``name`` (made and started on first use)."""
        backend = self._backends.get(name)
        if backend is None:
            cls = self._classes.get(name) or load_backend(name)
            self._classes[name] = cls
            backend = cls(name, **self.backend_kwargs(name))
            if self.on_task_ended is not None and hasattr(backend, "on_task_ended"):
                backend.on_task_ended = self.on_task_ended
            backend.start()
            self._backends[name] = backend
        return backend

    def started(self) -> dict[str, Any]:
        """The backends started so far, by name."""
        return dict(self._backends)

    def backend_kwargs(self, name: str) -> dict[str, Any]:
        """The keyword arguments the backend ``name`` is constructed with."""
        cls = self._classes.get(name) or load_backend(name)
        kwargs: dict[str, Any] = dict(self._options) if name == self.backend_name else {}
        if issubclass(cls, SessionDefaults):
            parallelism = self.parallelism if name == self.backend_name else None
            for key, value in cls.session_defaults(self.root, parallelism).items():
                kwargs.setdefault(key, value)
        elif name == "multiprocess":  # fallback until MultiprocessDistributor implements SessionDefaults
            kwargs.setdefault("parallelism", self.parallelism or os.cpu_count() or 1)
            kwargs.setdefault("log_dir", os.path.join(self.root, "logs"))
        elif (self.parallelism is not None and name == self.backend_name
              and "parallelism" in (backend_options(cls) or ())):
            kwargs.setdefault("parallelism", self.parallelism)
        return kwargs

    def max_cores(self) -> int | None:
        """The most cores one task of the session's backend may ask for (None: the cluster decides)."""
        cls = self._classes[self.backend_name]
        if issubclass(cls, SessionDefaults):
            return cls.max_cores(self.backend_kwargs(self.backend_name))
        if self.backend_name == "multiprocess":  # fallback, as in backend_kwargs
            return self.parallelism or os.cpu_count() or 1
        return None

    def gpu_count(self) -> int | None:
        """How many GPUs the session's backend places itself (a class with ``max_gpus(options)``, i.e. the
        multiprocess backend); None when it places none or its cluster does (Slurm)."""
        count = getattr(self._classes[self.backend_name], "max_gpus", None)
        return None if count is None else int(count(self.backend_kwargs(self.backend_name)))

    def parse_options(self) -> dict[str, Any]:
        """``Resources.parse`` keywords for the session's backend: its largest task, whether it takes
        site options (``gpus``, ``account``…: a backend class that sets ``SITE_OPTIONS = True``, i.e. Slurm),
        and whether it places GPUs itself (asked how many only when a task wants some)."""
        cls = self._classes[self.backend_name]
        return {"max_cores": self.max_cores(), "site_options": bool(getattr(cls, "SITE_OPTIONS", False)),
                "gpus": (lambda: self.gpu_count() or 0) if hasattr(cls, "max_gpus") else None}

    def usable(self, name: str) -> bool:
        """True if the backend ``name`` can be loaded here."""
        if name not in self._classes:
            try:
                self._classes[name] = load_backend(name)
            except ValueError as exc:
                logger.warning("%s", exc)
                return False
        return True

    def persistent(self, name: str) -> bool:
        """Tasks of this backend outlive the session (Slurm): they are adopted, not killed."""
        return self.usable(name) and issubclass(self._classes[name], AdoptingDistributor)

    # ------------------------------------------------------------------ what is sent
    def requested(self, rec: JobRecord, index: int | None) -> dict[str, Any]:
        """The backend's ``requested_resources`` for the whole record (None) or one step's attempt."""
        resources = dict(rec.resources)
        if index is not None:
            resources.update(rec.step_resources.get(index, {}))
        requested: dict[str, Any] = {"stdout": rec.log_dir, "stderr": rec.log_dir}
        for key in ("cores", "memory", "runtime", *SITE_KEYS):
            if resources.get(key) is not None and (key != "steps_per_task" or index is None):
                requested[key] = resources[key]
        if index is None and rec.kind == "array" and resources.get("max_concurrent"):
            requested["max_concurrent"] = resources["max_concurrent"]
        if rec.env:
            requested["env"] = dict(rec.env)
        if rec.cwd:
            requested["cwd"] = rec.cwd
        if rec.call is not None and index is not None and rec.kind == "array":
            # A map's step submitted alone (a retry) finds its item from the variable, not an array index.
            requested["env"] = {**requested.get("env", {}), STEP_ENV: str(rec.step_id(index))}
        return requested

    def array_command(self, rec: JobRecord) -> str:
        """The command of a whole array (each step finds itself from the backend's array index)."""
        sweep = rec.sweep
        assert sweep is not None
        if rec.script_dir is not None:
            return script_command(rec.script_dir, rec.script_chunk)
        if rec.call is not None:
            return rec.command  # a map's step finds its item from the array index: no shell needed
        return sweep.array_prologue() + rec.command

    def step_command(self, rec: JobRecord, index: int) -> str:
        """The command of one step submitted alone (a retry): a plain job for the backend."""
        if rec.kind == "job" or rec.call is not None:  # a call's step: its item is in requested()'s env
            return rec.command
        # $ARRAY_STEP_ID in the command expands as in the array, but it is not exported: the
        # processes it starts (a worker node) must see a plain job's identity, which it now is.
        prologue = f"unset ARRAY_STEP_ID; ARRAY_STEP_ID={index}\n"
        if rec.script_dir is not None:
            return prologue + script_command(rec.script_dir, rec.script_chunk, index)
        return f"{prologue}{STEP_ENV}={rec.step_id(index)}; export {STEP_ENV}\n{rec.command}"

    def submit_record(self, rec: JobRecord) -> tuple[list[str], dict[str, Any]]:
        """Submit a whole record; ``(distributor ids by index, the job row's update)``."""
        backend = self.attach_logs(rec)
        call = self._call_for(rec, backend)
        if rec.kind == "job":
            dids = [backend.submit_to_batch_distributor(rec.command, rec.name, self.requested(rec, None), **call)]
            return dids, {"dids": dids}
        ids = backend.submit_array_to_batch_distributor(self.array_command(rec), rec.name,
                                                        self.requested(rec, None), rec.n, **call)
        dids = [ids[index] for index in range(rec.n)]
        base = dids[0].rpartition("_")[0]
        # The protocol makes array ids "{job_id}_{step}": checking both ends is enough.
        if dids[0] == array_id(base, 0) and dids[-1] == array_id(base, rec.n - 1):
            return dids, {"did_base": base}
        return dids, {"dids": dids}

    def submit_step(self, rec: JobRecord, index: int) -> str:
        """Submit one step alone, as a plain job with its own distributor id."""
        backend = self.attach_logs(rec)
        return backend.submit_to_batch_distributor(self.step_command(rec, index), rec.name,
                                                   self.requested(rec, index), **self._call_for(rec, backend))

    @staticmethod
    def _call_for(rec: JobRecord, backend: Any) -> dict[str, Any]:
        """``{"call": the record's PythonCall}`` for a backend that runs calls itself (``TAKES_PYTHON_CALLS``,
        the multiprocess backend); else nothing: a scheduler is given the call's command form only."""
        if rec.call is not None and getattr(type(backend), "TAKES_PYTHON_CALLS", False):
            return {"call": rec.call}
        return {}

    def attach_logs(self, rec: JobRecord) -> Any:
        """The record's backend, started; a reporting backend is asked where the record's logs are."""
        backend = self.backend(rec.backend)
        if rec.locate is None and isinstance(backend, ReportingDistributor):
            rec.locate = backend.log_paths
        return backend
