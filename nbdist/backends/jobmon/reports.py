"""What nbdist tells Jobmon about a task: a usage line for its error log, and triage answers.

Jobmon's server has no route for a task's usage, so usage goes into the messages it keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as S

__all__ = ["describe_usage", "triage_answer"]


def describe_usage(usage: Mapping[str, Any]) -> str:
    """``"wall 1.2 s, CPU 0.9 s, max RSS 45.1 MB"`` from nbdist's usage dict (``""`` when empty)."""
    parts = []
    if usage.get("wall_s") is not None:
        parts.append(f"wall {usage['wall_s']:.3g} s")
    if usage.get("cpu_s") is not None:
        parts.append(f"CPU {usage['cpu_s']:.3g} s")
    if usage.get("max_rss_mb") is not None:
        parts.append(f"max RSS {usage['max_rss_mb']:.4g} MB")
    return ", ".join(parts)


def triage_answer(report: dict[str, Any], stderr_tail: str = "") -> tuple[str, str]:
    """``(R|Z|U, message)`` for a task Jobmon triages, from nbdist's report of it."""
    status = report.get("status")
    message = report.get("message") or ""
    usage = describe_usage(report.get("usage") or {})
    detail = f"nbdist: {message}" + (f" ({usage})" if usage else "")
    if status in (S.QUEUED, S.RUNNING):
        return S.RUNNING, "nbdist: still running"
    if status == S.RESOURCE_ERROR:
        return S.RESOURCE_ERROR, detail
    if status == S.DONE:
        detail = f"nbdist: Jobmon's worker exited with code 0 without reporting the task done ({usage})"
    elif status == S.KILL_SELF:
        detail = f"nbdist: {message}, before Jobmon's worker reported"
    elif status == S.NO_DISTRIBUTOR_ID:
        detail = f"nbdist: could not start the task: {message}"
    if stderr_tail.strip():
        detail += f"\nJobmon worker's stderr (last lines):\n{stderr_tail.strip()}"
    return S.UNKNOWN_ERROR, detail
