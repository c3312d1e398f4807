"""Finding jobs by name: the error for an unknown one, and the hint of which names there are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["MAX_HINT_NAMES", "UnknownJob", "known_hint"]

# Names listed by the hint of an unknown name: the newest ones, which the user most likely meant.
MAX_HINT_NAMES = 20


class UnknownJob(KeyError):
    """No job or array has this name or id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown job"


def known_hint(records: Iterable[JobRecord], limit: int = MAX_HINT_NAMES) -> str:
    """``"known: newest, older, …"``: distinct names, newest first, ``…`` when some are left out."""
    names = list(dict.fromkeys(rec.name for rec in sorted(records, key=lambda rec: -rec.id)))
    if not names:
        return "no jobs yet (nbdist.attach() finds earlier ones)"
    return "known: " + ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
