"""Text and HTML drawings of a session snapshot (the dashboard's fallback for saved notebooks).

These functions only draw: the numbers come from ``session.snapshot(...)``. Every string that comes
from a user or a task (names, log lines, messages) is escaped with :func:`html.escape` before it
reaches HTML, and colours are JupyterLab CSS variables with fallbacks, so the same markup reads well
in JupyterLab (light or dark), in classic Notebook, on GitHub and in VS Code.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..session import State

if TYPE_CHECKING:
    from ..session import Snapshot, StepRow

__all__ = [
    "ROW_COLUMNS",
    "MAX_PARAM_WIDTH",
    "RECENT_FINISHED",
    "column_header",
    "failures_html",
    "format_mb",
    "format_seconds",
    "header_html",
    "nonzero_counts",
    "param_text",
    "param_widths",
    "reason_line",
    "pre_html",
    "row_cells",
    "row_label",
    "snapshot_html",
    "snapshot_text",
    "state_color",
    "STATE_COLORS",
    "state_name",
    "status_html",
    "status_selection",
    "status_text",
    "steps_label",
    "submitted_text",
    "tail_text",
]

# One place for each state's colour: JupyterLab variables first, plain colours as fallbacks.
_OK = "var(--jp-success-color1, #388e3c)"
_BAD = "var(--jp-error-color1, #d32f2f)"
_WARN = "var(--jp-warn-color1, #f57c00)"
_RUN = "var(--jp-brand-color1, #1976d2)"
_IDLE = "var(--jp-ui-font-color2, #757575)"
STATE_COLORS: Mapping[State, str] = {
    State.PENDING: _IDLE,
    State.QUEUED: _IDLE,
    State.RUNNING: _RUN,
    State.DONE: _OK,
    State.FAILED: _BAD,
    State.TIMEOUT: _BAD,
    State.OUT_OF_MEMORY: _BAD,
    State.LOST: _BAD,
    State.KILLED: _WARN,
    State.SKIPPED: _WARN,
}
_STATE_ORDER = tuple(state.value for state in State)  # lifecycle order

# Column titles and widths of the step table, shared by the text repr and the widget's row labels.
ROW_COLUMNS: tuple[tuple[str, int], ...] = (
    ("step", 6),
    ("state", 13),
    ("exit", 5),
    ("runtime", 9),
    ("max RSS", 8),
    ("try", 4),
)
# A parameter column is at most this wide in the fixed-width rows (the HTML table shows it whole).
MAX_PARAM_WIDTH = 16
_MONO = "var(--jp-code-font-family, monospace)"
_FONT_SIZE = "var(--jp-code-font-size, 12px)"


def state_name(state: State | str) -> str:
    """``State.DONE`` or ``"done"`` → ``"DONE"``; the one spelling every view shows."""
    value = getattr(state, "value", state)
    return str(value).upper()


def state_color(state: State | str) -> str:
    """CSS colour (a JupyterLab variable with a fallback) for a state."""
    try:
        return STATE_COLORS.get(State(state_name(state)), _IDLE)
    except ValueError:  # not a state (a column's text)
        return _IDLE


def nonzero_counts(counts: Mapping[Any, int]) -> list[tuple[str, int]]:
    """``[(state, n), ...]`` in lifecycle order, dropping zeros."""
    named = {state_name(key): int(value) for key, value in counts.items()}
    ordered = [name for name in _STATE_ORDER if name in named]
    ordered += sorted(name for name in named if name not in _STATE_ORDER)
    return [(name, named[name]) for name in ordered if named[name]]


def format_seconds(seconds: float | None) -> str:
    """A measured duration, rounded for a table: ``0.12s``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` when unknown.

    (A limit the user set is spelled back exactly by ``cluster_protocol.resources.format_runtime``.)
    """
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_mb(megabytes: float | None) -> str:
    """A measured size, rounded for a table: ``3.2M``, ``1.5G``; ``-`` when unknown.

    (A limit the user set is spelled back exactly by ``cluster_protocol.resources.format_memory``.)
    """
    if megabytes is None:
        return "-"
    if megabytes >= 1024:
        return f"{megabytes / 1024:.1f}G"
    return f"{megabytes:.1f}M"


def row_cells(row: StepRow) -> tuple[str, ...]:
    """The displayed cells of one ``StepRow``, in :data:`ROW_COLUMNS` order."""
    return (
        "-" if row.step is None else str(row.step),
        state_name(row.state),
        "-" if row.exit_code is None else str(row.exit_code),
        format_seconds(row.runtime_s),
        format_mb(row.max_rss_mb),
        "-" if row.attempt is None else str(row.attempt),
    )


def _fixed_width(cells: Sequence[str]) -> str:
    """Cells right-aligned to the column widths (a monospace table line)."""
    return " ".join(cell.rjust(width) for cell, (_, width) in zip(cells, ROW_COLUMNS))


def param_text(value: Any) -> str:
    """A parameter value as its column shows it (and as a ``name=value`` filter matches it)."""
    return str(value)


def param_widths(rows: Sequence[StepRow], names: Sequence[str]) -> tuple[int, ...]:
    """Widths of the parameter columns of one page: the widest of title and values, at most
    :data:`MAX_PARAM_WIDTH` (longer values are cut with ``…``)."""
    return tuple(min(MAX_PARAM_WIDTH, max([len(name)] + [len(param_text((row.params or {}).get(name, "")))
                                                          for row in rows]))
                 for name in names)


def _param_cells(row: StepRow, names: Sequence[str], widths: Sequence[int]) -> str:
    cells = []
    for name, width in zip(names, widths):
        text = param_text((row.params or {}).get(name, "-"))
        cells.append((text if len(text) <= width else text[:width - 1] + "…").ljust(width))
    return "".join(f"  {cell}" for cell in cells)


def row_label(row: StepRow, names: Sequence[str] = (), widths: Sequence[int] = ()) -> str:
    """One fixed-width line for a step (the widget's selectable rows, the text table): the columns,
    then one per parameter ``names`` (of ``widths``, see :func:`param_widths`), then the message."""
    line = _fixed_width(row_cells(row)) + _param_cells(row, names, widths)
    message = row.message or ""
    if row.cpu_percent is not None:  # a running step: its RSS is in the RSS column, its CPU here
        message = f"CPU {row.cpu_percent:.0f}% {message}".rstrip()
    if row.gpu:  # a step that holds or held a GPU: its use of it, now or at its peak
        memory = row.gpu.get("gpu_mem_mb", row.gpu.get("gpu_mem_peak_mb"))
        used = [f"{row.gpu['gpu_percent']:.0f}%" if "gpu_percent" in row.gpu else "",
                f"{format_mb(memory)}" if memory is not None else ""]
        message = f"GPU {' '.join(part for part in used if part)} {message}".rstrip()
    return f"{line}  {message}" if message else line.rstrip()


def column_header(names: Sequence[str] = (), widths: Sequence[int] = ()) -> str:
    """The fixed-width title line matching :func:`row_label` (parameters and ``message`` included)."""
    params = "".join(f"  {name[:width].ljust(width)}" for name, width in zip(names, widths))
    return _fixed_width([title for title, _ in ROW_COLUMNS]) + params + "  message"


def steps_label(steps: Sequence[int], limit: int = 10) -> str:
    """``"step 7"`` or ``"steps 1, 2, 3"`` (``…`` and how many more past ``limit``)."""
    return ("step " if len(steps) == 1 else "steps ") + _step_list(steps, limit)


def tail_text(tail: str | None) -> str:
    """A snapshot's log tail ("" for none)."""
    return tail or ""


def _title(snapshot: Snapshot) -> str:
    return f"{snapshot.kind} {snapshot.name or snapshot.id}"


def _summary(snapshot: Snapshot) -> str:
    noun = "step" if snapshot.total == 1 else "steps"
    percent = round(100 * (snapshot.done_fraction or 0.0))
    return (
        f"{snapshot.total} {noun} · {percent}% done · elapsed {format_seconds(snapshot.elapsed_s)}"
    )


def reason_line(snapshot: Snapshot) -> str:
    """``"QUEUED: slots busy …"``: why the waiting steps wait; "" when none waits."""
    if not snapshot.reason:
        return ""
    waiting = "PENDING" if snapshot.counts.get(State.PENDING.value) else "QUEUED"
    return f"{waiting}: {snapshot.reason}"


def snapshot_text(snapshot: Snapshot, *, max_rows: int | None = None) -> str:
    """Plain-text drawing: title, counts, one page of the step table, failure groups."""
    lines = [f"{_title(snapshot)} (id {snapshot.id}, {snapshot.backend}): {_summary(snapshot)}"]
    counts = nonzero_counts(snapshot.counts)
    lines.append("  " + ("  ".join(f"{name} {n}" for name, n in counts) or "no steps"))
    if snapshot.reason:
        lines.append("  " + reason_line(snapshot))
    rows = list(snapshot.rows)
    shown = rows if max_rows is None else rows[:max_rows]
    if shown:
        names = snapshot.param_names
        widths = param_widths(shown, names)
        lines.append("  " + column_header(names, widths))
        lines.extend("  " + row_label(row, names, widths) for row in shown)
    if snapshot.where:
        lines.append("  where " + " ".join(f"{key}={value}" for key, value in snapshot.where.items()))
    hidden = len(rows) - len(shown)
    if hidden > 0 or snapshot.pages > 1:
        lines.append(f"  page {snapshot.page + 1}/{max(snapshot.pages, 1)}" + (f", {hidden} more rows" if hidden > 0 else ""))
    for last_line, steps in snapshot.failure_groups:
        lines.append(f"  failed ×{len(steps)} ({steps_label(list(steps))}): {last_line}")
    return "\n".join(lines)


def _step_list(steps: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(step) for step in steps[:limit])
    return shown + (f", … {len(steps) - limit} more" if len(steps) > limit else "")


def _badge(name: str, count: int) -> str:
    return (
        f'<span style="color:{state_color(name)};font-weight:600;margin-right:0.8em">'
        f"{html.escape(name)} {count}</span>"
    )


def header_html(snapshot: Snapshot) -> str:
    """Title line and per-state counts, escaped."""
    title = html.escape(_title(snapshot))
    meta = html.escape(f"id {snapshot.id} · {snapshot.backend} · {_summary(snapshot)}")
    badges = "".join(_badge(name, n) for name, n in nonzero_counts(snapshot.counts)) or "no steps"
    if snapshot.reason:
        badges += f'<span class="nbdist-reason" style="color:{_IDLE}">{html.escape(reason_line(snapshot))}</span>'
    return (
        f'<div class="nbdist-header" style="font-family:var(--jp-ui-font-family, sans-serif);'
        f'color:var(--jp-ui-font-color1, inherit)">'
        f'<b>{title}</b> <span style="color:var(--jp-ui-font-color2, #757575)">{meta}</span>'
        f"<div>{badges}</div></div>"
    )


def pre_html(text: str, *, empty: str = "(empty)") -> str:
    """Log text in an escaped, scrollable ``<pre>``; never interpreted as HTML."""
    body = html.escape(text) if text else f'<i style="color:var(--jp-ui-font-color2, #757575)">{html.escape(empty)}</i>'
    return (
        f'<pre class="nbdist-log" style="margin:0;max-height:16em;overflow:auto;white-space:pre-wrap;'
        f"font-family:{_MONO};font-size:{_FONT_SIZE};background:var(--jp-layout-color2, #f5f5f5);"
        f'color:var(--jp-content-font-color1, inherit);padding:4px">{body}</pre>'
    )


def failures_html(groups: Sequence[tuple[str, Sequence[int]]], *, kind: str = "array") -> str:
    """Failed steps grouped by their last stderr line, escaped; empty string when nothing failed."""
    if not groups:
        return ""
    muted = "color:var(--jp-ui-font-color2, #757575)"
    items = "".join(
        f'<li><b style="color:{_BAD}">×{len(steps)}</b> '
        f'<code style="font-family:{_MONO}">{html.escape(str(last_line))}</code>'
        + (f' <span style="{muted}">{html.escape(steps_label(list(steps)))}</span>' if kind == "array" else "")
        + "</li>"
        for last_line, steps in groups
    )
    return f'<div class="nbdist-failures"><b>Failures by last stderr line</b><ul style="margin:2px 0">{items}</ul></div>'


def _table_html(rows: Sequence[StepRow], names: Sequence[str] = ()) -> str:
    head = "".join(
        f'<th style="text-align:right;padding:0 6px">{html.escape(title)}</th>' for title, _ in ROW_COLUMNS
    )
    head += "".join(f'<th style="text-align:left;padding:0 6px">{html.escape(name)}</th>' for name in names)
    head += '<th style="text-align:left;padding:0 6px">message</th>'
    body = []
    for row in rows:
        cells = row_cells(row)
        tds = "".join(
            f'<td style="text-align:right;padding:0 6px{";color:" + state_color(cell) if i == 1 else ""}">'
            f"{html.escape(cell)}</td>"
            for i, cell in enumerate(cells)
        )
        tds += "".join(f'<td style="text-align:left;padding:0 6px">'
                       f'{html.escape(param_text((row.params or {}).get(name, "-")))}</td>' for name in names)
        message = html.escape(row.message or "")
        body.append(f'<tr>{tds}<td style="text-align:left;padding:0 6px">{message}</td></tr>')
    return (
        f'<table class="nbdist-steps" style="border-collapse:collapse;font-family:{_MONO};font-size:{_FONT_SIZE}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def snapshot_html(snapshot: Snapshot, *, max_rows: int | None = None, pictures: str = "", css_class: str = "") -> str:
    """HTML drawing for saved notebooks: header, progress, one page of steps, failures, log tails.

    ``pictures`` (already escaped markup, :func:`nbdist.views.timeline.pictures_html`) replaces the
    one-colour progress bar; ``css_class`` is added to the drawing's own (``nbdist-snapshot``).
    """
    percent = round(100 * (snapshot.done_fraction or 0.0))
    rows = list(snapshot.rows)[:max_rows] if max_rows is not None else list(snapshot.rows)
    parts = [
        f'<div class="nbdist-snapshot{" " + html.escape(css_class) if css_class else ""}">',
        header_html(snapshot),
        pictures or (f'<div style="background:var(--jp-layout-color3, #ddd);height:6px;width:100%;margin:4px 0">'
                     f'<div style="background:{_OK};height:6px;width:{percent}%"></div></div>'),
        _table_html(rows, snapshot.param_names) if rows else "",
    ]
    if snapshot.pages > 1:
        parts.append(f"<div>page {snapshot.page + 1}/{snapshot.pages}</div>")
    parts.append(failures_html(snapshot.failure_groups, kind=snapshot.kind))
    log_step = snapshot.log_step
    for label, tail in (("stdout", snapshot.stdout_tail), ("stderr", snapshot.stderr_tail)):
        text = tail_text(tail)
        if text:
            step = "" if log_step is None else f" of step {log_step}"
            parts.append(f"<div><b>{html.escape(label + step)}</b>{pre_html(text)}</div>")
    parts.append("</div>")
    return "".join(parts)


def submitted_text(timestamp: float) -> str:
    """A submit time as the listings show it: ``2026-12-01 23:04:05`` (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _newest_first(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    return sorted(snapshots, key=lambda snap: (snap.submitted, int(snap.id) if snap.id.isdigit() else 0),
                  reverse=True)


# ``status`` without --all lists the unfinished jobs and this many of the newest finished ones.
RECENT_FINISHED = 10


def status_selection(snapshots: Sequence[Snapshot], *, all_jobs: bool = False) -> tuple[list[Snapshot], int]:
    """The jobs ``status`` lists, newest first, and how many finished ones it leaves out: every
    unfinished job and the :data:`RECENT_FINISHED` newest finished ones (all with ``all_jobs``)."""
    ordered = _newest_first(snapshots)
    if all_jobs:
        return ordered, 0
    finished = [snap for snap in ordered if snap.all_terminal]
    keep = {id(snap) for snap in finished[:RECENT_FINISHED]}
    shown = [snap for snap in ordered if not snap.all_terminal or id(snap) in keep]
    return shown, len(ordered) - len(shown)


def status_text(snapshots: Sequence[Snapshot], *, empty: str = "no jobs yet", more: int = 0) -> str:
    """One line per job or array, newest first: id, submit time, kind, name, steps, counts
    (``%nbdist status``, ``nbdist status``); ``more`` finished ones left out are counted at the end."""
    if not snapshots:
        return empty + (f" ({more} finished: --all shows them)" if more else "")
    lines = [f"{'id':>5}  {'submitted':19}  {'kind':5} {'name':24} {'steps':>7}  states"]
    for snap in _newest_first(snapshots):
        counts = "  ".join(f"{name} {n}" for name, n in nonzero_counts(snap.counts))
        lines.append(f"{snap.id:>5}  {submitted_text(snap.submitted):19}  {snap.kind:5} {snap.name or snap.id!s:24} "
                     f"{snap.total:>7}  {counts}")
    if more:
        lines.append(f"… and {more} older finished (--all shows them)")
    return "\n".join(lines)


def status_html(snapshots: Sequence[Snapshot], *, empty: str = "no jobs yet", more: int = 0) -> str:
    """The table of :func:`status_text`, escaped."""
    if not snapshots:
        return f"<i>{html.escape(empty + (f' ({more} finished: --all shows them)' if more else ''))}</i>"
    rows = []
    for snap in _newest_first(snapshots):
        counts = " ".join(
            f'<span style="color:{state_color(name)}">{html.escape(name)} {n}</span>'
            for name, n in nonzero_counts(snap.counts)
        )
        rows.append(f"<tr><td>{html.escape(snap.id)}</td><td>{html.escape(submitted_text(snap.submitted))}</td>"
                    f"<td>{html.escape(str(snap.kind))}</td><td>{html.escape(str(snap.name or snap.id))}</td>"
                    f'<td style="text-align:right">{snap.total}</td><td>{counts}</td></tr>')
    tail = f"<div>… and {more} older finished (--all shows them)</div>" if more else ""
    return ('<table class="nbdist-status"><thead><tr><th>id</th><th>submitted</th><th>kind</th><th>name</th>'
            f"<th>steps</th><th>states</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{tail}")
