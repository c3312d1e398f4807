"""The default session (behind ``nbdist.submit``/``array`` and the magics) and the notebook's sessions.

One place holds "the current session": :func:`default_session` makes it on first use,
:func:`attach` replaces it with the session of a registry, and :class:`NotebookSessions` (the
magics' view) adds the sessions of ``%%submit --backend B`` cells and those that ``%nbdist
backend``/``attach`` replaced, each closed once none of its jobs is live.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .handles import Array, Job
from .session import Session

__all__ = ["NotebookSessions", "attach", "default_session", "set_default_session"]

_default: Session | None = None
_default_lock = threading.Lock()


def default_session() -> Session:
    """The session behind ``nbdist.submit``/``array`` and the magics (made on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Session()
        return _default


def set_default_session(session: Session | None) -> None:
    """Make ``session`` the default one (None: a new one is made on next use)."""
    global _default
    with _default_lock:
        _default = session


def current_default() -> Session | None:
    """The default session if one was made (None otherwise); never makes one."""
    return _default


def attach(root: str = ".nbdist", **session_options: Any) -> Session:
    """The session of ``root`` with every job of its registry, e.g. after a kernel restart.

    Jobs whose kernel died are taken over: local steps that were queued or running are reported
    KILLED (they died with their kernel), Slurm jobs are adopted and tracked again, and PENDING jobs
    start when their dependencies are DONE. The returned session becomes the default one.
    """
    global _default
    with _default_lock:
        if _default is not None and not _default.closed and _default.root == os.path.abspath(root) \
                and not session_options:
            session = _default
        else:
            session = Session(root=root, **session_options)
            _default = session
    return session.attach()


class NotebookSessions:
    """The sessions the magics use and show: the current one, ``--backend`` ones, replaced ones."""

    def __init__(self) -> None:
        self._current: Session | None = None  # None: the default session
        self._by_backend: dict[str, Session] = {}
        # Replaced sessions' jobs are still shown; each is closed as soon as none of them is live
        # (a closed session stays readable).
        self._replaced: list[Session] = []
        self._closing: list[Session] = []

    def current(self) -> Session:
        """The session of plain ``%%submit`` cells."""
        return self._current or default_session()

    def for_backend(self, backend: str | None = None) -> Session:
        """The session for ``backend`` (the current one when None or its own), made on first use.

        Raises whatever ``Session(backend=...)`` raises (ValueError for an unknown backend, ...).
        """
        self.close_idle()  # every cell is a chance to let a replaced session go
        current = self.current()
        if backend is None or backend == current.backend_name:
            return current
        if backend not in self._by_backend:
            self._by_backend[backend] = Session(backend=backend)
        return self._by_backend[backend]

    def all(self) -> list[Session]:
        """Every session whose jobs are shown, the current one first."""
        self.close_idle()
        found: list[Session] = []
        for session in (self.current(), *self._by_backend.values(), *reversed(self._replaced)):
            if all(session is not other for other in found):
                found.append(session)
        return found

    def use(self, session: Session) -> None:
        """``session`` becomes the current one (and the default one); the old one is let go when idle."""
        old = self._current or current_default()
        self._current = session
        set_default_session(session)
        if old is not None:
            self._replace(old, session)

    def attach(self, root: str) -> Session:
        """The session of a registry becomes the current one (``%nbdist attach``)."""
        old = self.current()
        self._current = attach(root)
        self._replace(old, self._current)
        return self._current

    def switch_backend(self, name: str, parallelism: int | None = None) -> None:
        """A session of backend ``name`` becomes the current one (``%nbdist backend``)."""
        old = self.current()
        if parallelism is None and name == old.backend_name:
            return
        if parallelism is None and name in self._by_backend:
            session = self._by_backend.pop(name)
        else:
            session = Session(backend=name, **({} if parallelism is None else {"parallelism": parallelism}))
            if name in self._by_backend:
                self._replace(self._by_backend.pop(name), session)
        # The magics and the Python API keep using one session: the new one becomes the default.
        self.use(session)

    def backend_sessions(self) -> dict[str, Session]:
        """The sessions of ``%%submit --backend B`` cells, by backend."""
        return dict(self._by_backend)

    def close_idle(self) -> None:
        """Close the replaced sessions none of whose jobs is live (stops their consumers and poller)."""
        for session in list(self._closing):
            if all(handle.done() for handle in session.jobs()):
                self._closing.remove(session)
                session.close()

    def close_all(self) -> None:
        """Close every session made here (and forget them): the current one stays the default's business."""
        for session in (*self._by_backend.values(), *self._closing):
            session.close()
        self._current = None
        self._by_backend.clear()
        self._replaced.clear()
        self._closing.clear()

    def lookup(self, name: str, session: Session | None = None) -> Job | Array | None:
        """The newest job or array called ``name`` in ``session`` (default: in every session shown)."""
        sessions = [session] if session is not None else self.all()
        found = []
        for candidate in sessions:
            try:
                found.append(candidate.get(name))
            except (LookupError, ValueError):
                continue
        if not found:
            return None
        root = sessions[0].root
        return max(found, key=lambda handle: (handle.session.root == root, _number(handle.id)))

    def handles(self) -> list[Job | Array]:
        """Every job and array of every session shown, once each, in submission order."""
        handles: dict[tuple[str, str], Job | Array] = {}
        for session in self.all():
            for handle in session.jobs():
                handles.setdefault((session.root, handle.id), handle)
        return sorted(handles.values(), key=lambda handle: (handle.session.root, _number(handle.id)))

    def _replace(self, old: Session, new: Session) -> None:
        """``new`` takes the place of ``old``: close ``old`` now if it is idle, else once it is."""
        if old is new or any(old is other for other in self._replaced):
            return
        self._replaced.append(old)
        self._closing.append(old)
        self.close_idle()


def _number(job_id: Any) -> int:
    """A registry id as a number, for ordering (ids of one registry grow with submission)."""
    return int(job_id) if str(job_id).isdigit() else -1
