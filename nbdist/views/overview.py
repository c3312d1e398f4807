"""Every job at a glance: one line per job and array of the registry, with counts and a small bar.

``nbdist.show()`` and ``%nbdist show`` without a name draw it (a joblib ``Parallel`` call draws the
list of its own jobs, its batches, under its name: :class:`GroupView`). It lists what the registry under the
session's root holds — this kernel's jobs, earlier kernels' and other notebooks' sharing the root —
by loading the registry read-only (``Session.attach(take_over=False)``: nothing is adopted or
launched). Clicking a line (or choosing it in the picker without anywidget) opens that job's
dashboard below the list. The list refreshes with the dashboards' thread and re-reads the registry
every :data:`RELOAD_SECONDS` to find new jobs.
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..session import Array, default_session
from . import render, timeline
from .widget import FALLBACK_CSS, PictureThenWidget, keep_refreshed, show

__all__ = ["RELOAD_SECONDS", "GroupView", "Overview", "group_title", "overview_html", "overview_text", "show_all"]

# New jobs of other kernels show up within this many seconds (a registry read of every job row).
RELOAD_SECONDS = 2.0
_MUTED = "color:var(--jp-ui-font-color2, #757575)"


def _counts(handle: Any) -> dict[str, int]:
    return handle.counts() if isinstance(handle, Array) else {handle.state.value: 1}


def _line(handle: Any) -> tuple[str, str, str, int, dict[str, int], bool]:
    """``(id, kind, name, steps, counts, owned)`` of a job or array."""
    counts = _counts(handle)
    kind = "array" if isinstance(handle, Array) else "job"
    return str(handle.id), kind, str(handle.name), sum(counts.values()), counts, bool(handle.owned)


def overview_text(handles: Sequence[Any]) -> str:
    """One line per job: id, kind, name, steps, counts; ``*`` marks another kernel's."""
    if not handles:
        return "no jobs in this registry yet"
    lines = []
    for job_id, kind, name, steps, counts, owned in map(_line, handles):
        states = "  ".join(f"{state} {n}" for state, n in render.nonzero_counts(counts))
        lines.append(f"{job_id:>5} {kind:5} {name + ('' if owned else ' *'):26} {steps:>7}  {states}")
    return "\n".join(lines)


def overview_html(handles: Sequence[Any]) -> str:
    """The table of :func:`overview_text`, escaped; each row has ``data-pick`` = the job's id."""
    if not handles:
        return f'<i style="{_MUTED}">no jobs in this registry yet</i>'
    rows = []
    for job_id, kind, name, steps, counts, owned in map(_line, handles):
        badges = " ".join(f'<span style="color:{render.state_color(state)}">{html.escape(state)} {n}</span>'
                          for state, n in render.nonzero_counts(counts))
        where = "" if owned else f' <span style="{_MUTED}" title="another kernel\'s">(other kernel)</span>'
        rows.append(f'<tr class="nbdist-overview-row" data-pick="{html.escape(job_id)}" style="cursor:pointer">'
                    f'<td style="{_MUTED}">{html.escape(job_id)}</td><td>{kind}</td>'
                    f"<td><b>{html.escape(name)}</b>{where}</td>"
                    f'<td style="text-align:right">{steps}</td>'
                    f'<td style="width:8em">{timeline.stacked_bar_html(counts, steps)}</td><td>{badges}</td></tr>')
    return ('<table class="nbdist-overview" style="border-collapse:collapse;font-family:var(--jp-ui-font-family, '
            'sans-serif)"><thead><tr><th>id</th><th>kind</th><th>name</th><th>steps</th><th></th><th>states</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def group_title(group: Any) -> str:
    """``square · joblib Parallel · 3 jobs · DONE 2  RUNNING 1``: a group's header line."""
    counts = group.counts()
    states = "  ".join(f"{state} {n}" for state, n in render.nonzero_counts(counts))
    jobs = sum(counts.values())
    return f"{group.name} · {group.kind} · {jobs} job{'' if jobs == 1 else 's'} · {states}"


class Overview:
    """The live list of every job of one or more sessions' registries; a click opens a dashboard."""

    def __init__(self, sessions: Sequence[Any]) -> None:
        import ipywidgets as w

        self.sessions = list(sessions)
        self.loaded = 0.0
        self.handles: list[Any] = []
        self.last_refresh_cpu_s = 0.0
        self.opened: Any = None  # the Dashboard of the job chosen last
        self.list = timeline.pick_view(self.open)
        self.list.add_class("nbdist-overview-view")
        self.picker = w.Dropdown(description="open", options=[("", "")], layout=w.Layout(width="24em"))
        self.picker.observe(lambda change: self.open(change["new"]) if change["new"] else None, names="value")
        self.output = w.Output()
        self.widget = w.VBox([self.list, self.picker, self.output])
        self.widget.add_class("nbdist-overview-box")
        self.refresh()
        keep_refreshed(self)

    def _load(self) -> list[Any]:
        """Every job of the sessions (read from their registries at most every RELOAD_SECONDS)."""
        if time.monotonic() - self.loaded >= RELOAD_SECONDS:
            self.loaded = time.monotonic()
            for session in self.sessions:
                if not session.closed:
                    session.attach(take_over=False)
        seen: dict[tuple[str, str], Any] = {}
        for session in self.sessions:
            for handle in session.jobs():
                seen.setdefault((session.root, str(handle.id)), handle)
        return sorted(seen.values(), key=lambda handle: int(handle.id), reverse=True)

    def refresh(self) -> None:
        """Re-read the jobs and redraw what changed."""
        start = time.thread_time()
        self.handles = self._load()
        value = self._html()
        if self.list.value != value:
            self.list.value = value
        options = [("", "")] + [(f"{handle.name} ({handle.id})", str(handle.id)) for handle in self.handles]
        if list(self.picker.options) != options:
            self.picker.options = options
        self.last_refresh_cpu_s = time.thread_time() - start

    def tick(self) -> bool:
        """One refresh from the dashboards' thread; True (rest) once every job listed is terminal."""
        self.refresh()
        done = all(handle.done() for handle in self.handles)
        if done:
            self._update_saved_output()
        return done

    def _update_saved_output(self) -> None:
        """Nothing here: the registry's overview is one output (see :class:`GroupView`)."""

    def changed(self) -> bool:
        """While resting: True when the registry holds a job not listed yet, or one runs again."""
        if time.monotonic() - self.loaded < RELOAD_SECONDS:
            return False
        before = {str(handle.id) for handle in self.handles}
        handles = self._load()
        return {str(h.id) for h in handles} != before or not all(handle.done() for handle in handles)

    def open(self, job_id: str) -> None:
        """Show the dashboard of the job with this id below the list."""
        handle = next((h for h in self.handles if str(h.id) == str(job_id)), None)
        if handle is None:
            return
        if self.opened is not None and hasattr(self.opened, "close"):
            self.opened.close()
        self.opened = show(handle, session=handle.session)
        self.output.clear_output()
        with self.output:
            from IPython.display import display

            display(self.opened)

    def _html(self) -> str:
        return overview_html(self.handles)

    def _text(self) -> str:
        return overview_text(self.handles)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = self._text()
        bundle["text/html"] = self._html()
        return bundle


def show_all(sessions: Sequence[Any] | None = None) -> Any:
    """The overview of every job of ``sessions``' registries (default: the default session's)."""
    return Overview(sessions if sessions is not None else [default_session()])


class GroupView(PictureThenWidget, Overview):
    """The live list of a group's jobs under its name (a joblib ``Parallel`` call's batches): a
    dashboard of its own, shown as a job's is (its picture, then the widget; a saved notebook keeps the end)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.display_id = uuid.uuid4().hex
        self.displayed = False
        super().__init__([group.session])
        self.widget.add_class("nbdist-dashboard")  # its picture stands in once the kernel is gone (FALLBACK_CSS)

    def _load(self) -> list[Any]:
        return self.group.jobs()

    def changed(self) -> bool:
        """While resting: True when the call added a job, or one runs again."""
        return len(self.group.jobs()) != len(self.handles) or not self.group.done()

    def _html(self) -> str:
        return (f'<div class="nbdist-group-header" style="margin-bottom:4px"><b>'
                f"{html.escape(group_title(self.group))}</b></div>{overview_html(self.handles)}")

    def _text(self) -> str:
        return f"{group_title(self.group)}\n{overview_text(self.handles)}"

    def _picture_bundle(self) -> dict[str, Any]:
        """The list as text and HTML: what a saved notebook shows (the dashboards' fallback)."""
        return {"text/plain": self._text(),
                "text/html": f'{FALLBACK_CSS}<div class="nbdist-picture">{self._html()}</div>'}
