"""The one thread that keeps every dashboard of a kernel current.

Live dashboards (some step not terminal) are refreshed every :data:`REFRESH_SECONDS`. A dashboard
whose steps are all terminal goes *dormant*: the thread only asks it ``changed()`` (the dashboard
compares its job's change counter, ``Session.version``: an int read) every
:data:`IDLE_CHECK_SECONDS`, so a retry from a button, a magic, the CLI or another kernel brings it
back to life, and an idle kernel pays a few microseconds a second. With no dashboard at all the
thread exits. Anything with ``tick() -> bool`` (True: nothing more to refresh) and
``changed() -> bool`` can be kept current this way.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["IDLE_CHECK_SECONDS", "REFRESH_SECONDS", "REFRESHER", "Refresher"]

# Seconds between refreshes: 4 Hz feels live for a progress bar and log tail while one refresh of a
# 10k-step array (≈ a few ms) keeps the kernel's cost around 1-2 % of one core.
REFRESH_SECONDS = 0.25
# A dormant (all-terminal) dashboard looks for a retry this often: an int compare per dashboard, so
# even hundreds of them cost nothing measurable, and a retry shows within about a second.
IDLE_CHECK_SECONDS = 1.0


class Refresher:
    """One daemon thread refreshing every live dashboard a few times a second, and waking dormant
    ones (every step terminal) when their job changes again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dashboards: set[Any] = set()
        self._dormant: set[Any] = set()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # a new live dashboard ends the thread's idle wait at once

    def add(self, dashboard: Any) -> None:
        with self._lock:
            self._dormant.discard(dashboard)
            self._dashboards.add(dashboard)
            self._start()
        self._wake.set()

    def rest(self, dashboard: Any) -> None:
        """Stop refreshing ``dashboard`` until its job changes."""
        with self._lock:
            if dashboard in self._dashboards:
                self._dashboards.discard(dashboard)
                self._dormant.add(dashboard)
            self._start()

    def discard(self, dashboard: Any) -> None:
        with self._lock:
            self._dashboards.discard(dashboard)
            self._dormant.discard(dashboard)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="nbdist-dashboard", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """True while some dashboard is refreshed (not only watched while dormant)."""
        with self._lock:
            return bool(self._dashboards) and self._thread is not None and self._thread.is_alive()

    @property
    def dormant(self) -> int:
        """How many dashboards wait, all terminal, for their job to change."""
        with self._lock:
            return len(self._dormant)

    def _run(self) -> None:
        last_check = time.monotonic()
        while True:
            with self._lock:
                live, dormant = list(self._dashboards), list(self._dormant)
                if not live and not dormant:
                    self._thread = None
                    return
            self._wake.wait(REFRESH_SECONDS if live else IDLE_CHECK_SECONDS)
            self._wake.clear()
            for dashboard in live:
                if dashboard.tick():
                    self.rest(dashboard)
            if time.monotonic() - last_check >= IDLE_CHECK_SECONDS:
                last_check = time.monotonic()
                for dashboard in dormant:
                    if dashboard.changed():
                        self.add(dashboard)


REFRESHER = Refresher()
