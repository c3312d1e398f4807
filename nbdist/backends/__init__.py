"""The registry of backends: built-ins plus plugins of the ``nbdist.backends`` entry-point group.

A plugin declares, in its ``pyproject.toml``::

    [project.entry-points."nbdist.backends"]
    mycluster = "mypackage.module:MyDistributor"

and ``nbdist.Session(backend="mycluster")`` then uses it. The class must implement
:class:`nbdist.cluster_protocol.ClusterDistributor`; the capabilities it also offers
(:class:`~nbdist.cluster_protocol.ReportingDistributor`, ``AdoptingDistributor``, ``SessionDefaults``)
are used when it has them. A plugin that fails to load is logged and skipped, never fatal.

The built-in backends live beside this loader, which imports none of them until asked::

    _task/          running one task the same way everywhere: runner, reaping, exit info, nbdist-worker,
                    the worker-node base
    _table.py       the task table and the queries every distributor answers from it
    multiprocess/   consumers on this machine: distributor, placement, consumer, pipe messages, node
    slurm/          sbatch/squeue: distributor, sbatch (argv + script), verdict (squeue → status), cli, node
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib import metadata

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "available_backends", "backend_options",
           "check_backend_options", "load_backend"]

BUILTIN_BACKENDS: dict[str, str] = {
    "multiprocess": "nbdist.backends.multiprocess:MultiprocessDistributor",
    "slurm": "nbdist.backends.slurm:SlurmDistributor",
}
ENTRY_POINT_GROUP = "nbdist.backends"


def _plugins() -> dict[str, metadata.EntryPoint]:
    # importlib.metadata is imported here, not at the top: a consumer imports this package and must
    # start in milliseconds.
    from importlib import metadata

    try:
        points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken distribution's metadata must not break nbdist
        _warn("cannot read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return {}
    return {point.name: point for point in points}


def available_backends() -> list[str]:
    """Names of the built-in backends and of the installed plugins."""
    return sorted(set(BUILTIN_BACKENDS) | set(_plugins()))


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def load_backend(name: str) -> type:
    """The distributor class registered under ``name``.

    Raises
    ------
    ValueError
        When no backend of that name exists, or it cannot be imported (the message says why).
    """
    if name in BUILTIN_BACKENDS:
        try:
            return _import(BUILTIN_BACKENDS[name])
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"backend {name!r} is not usable here: {exc}") from exc
    plugins = _plugins()
    point = plugins.get(name)
    if point is None:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    try:
        return point.load()
    except Exception as exc:
        _warn("backend plugin %r (%s) failed to load: %s", name, point.value, exc)
        raise ValueError(f"backend plugin {name!r} failed to load: {exc}") from exc


def backend_options(cls: type) -> list[str] | None:
    """The options a backend's constructor names (after the cluster name it is given first);
    None when it names none but takes ``**kwargs``: then it checks its options itself."""
    import inspect  # only a session asks (consumers import this package and never do)

    parameters = list(inspect.signature(cls).parameters.values())[1:]
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not named and any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return named


def check_backend_options(name: str, cls: type, options: Mapping[str, Any]) -> None:
    """Raise ValueError for an option the backend's constructor does not name (say a misspelt one)."""
    valid = backend_options(cls)
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                         f"backend {name!r}; valid options: {', '.join(valid) or 'none'}")  # type: ignore[arg-type]


def _warn(message: str, *args: Any) -> None:
    # logging is imported when there is something to log: consumers import this package, and their
    # first task waits for their imports.
    import logging

    logging.getLogger(__name__).warning(message, *args)
