"""Other libraries' plug-in points, filled with nbdist's public API: joblib's backend ``nbdist``.

``import nbdist`` calls :func:`watch_joblib`: the name ``nbdist`` is registered with joblib at once
when joblib is already imported, else by a one-shot import hook right after joblib's own import
ends. So ``parallel_config(backend="nbdist")`` works in any order of imports, joblib stays an
optional dependency, and ``import nbdist`` imports no joblib (this module imports only ``sys``):
the backend itself (:mod:`nbdist.integrations.joblib`) is imported when joblib first makes one.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["JOBLIB_NAME", "make_joblib_backend", "register_joblib", "watch_joblib"]

JOBLIB_NAME = "nbdist"


def make_joblib_backend(**kwargs: Any) -> Any:
    """joblib's factory of the ``nbdist`` backend (:class:`nbdist.integrations.joblib.NbdistBackend`)."""
    from .joblib import NbdistBackend

    return NbdistBackend(**kwargs)


def register_joblib() -> None:
    """Make ``backend="nbdist"`` known to joblib (joblib must be importable)."""
    from joblib import register_parallel_backend

    register_parallel_backend(JOBLIB_NAME, make_joblib_backend)


class _RegisterAfterImport:
    """joblib's own loader, plus a registration once joblib's module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # joblib keeps its own loader
        try:
            register_joblib()
        except Exception as exc:  # a broken registration must not break the user's ``import joblib``
            import warnings

            warnings.warn(f"nbdist: joblib's backend 'nbdist' is not registered: {exc}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)  # get_resource_reader, get_source, … while joblib runs


class _JoblibWatcher:
    """A meta path finder that only watches for ``joblib``: it finds nothing itself, and leaves
    ``sys.meta_path`` at the first import of joblib (a plain duck-typed finder: no importlib.abc)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "joblib":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterImport(spec.loader)
                return spec
        return None


def watch_joblib() -> None:
    """Register the ``nbdist`` backend with joblib now if joblib is imported, else when it is."""
    if "joblib" in sys.modules:
        try:
            register_joblib()
        except ImportError:  # a half-imported or stub joblib: nothing to register with
            pass
    elif not any(isinstance(finder, _JoblibWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _JoblibWatcher())
