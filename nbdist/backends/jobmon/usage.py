"""One line of usage for Jobmon's error log: its server has no route for a task's usage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_usage"]


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
