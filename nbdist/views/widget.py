"""The live dashboard of a job or array (ipywidgets 8, imported only when a dashboard is built).

The dashboard draws ``session.snapshot(...)`` and nothing else: counts, one page of steps, the log
tails of one step (the user's selection, else the step the snapshot picks), failures grouped by
their last stderr line (grouped by the snapshot). Its buttons call the public API
(``Job.cancel``, ``Array.cancel``, ``Array.retry_failed``, ``Job.retry``); what "Retry failed" re-runs is
the session's rule (``nbdist.session.choose_retry``), as for ``%nbdist retry`` and ``nbdist retry``.

Refreshing::

    Refresher thread (one per kernel, :mod:`nbdist.views.refresher`) ──every REFRESH_SECONDS──► Dashboard.refresh()
        └── session.snapshot(page, filter, log step) ──► set only the trait values that changed

The thread refreshes every live dashboard; one whose steps are all terminal goes dormant, and the same
thread only compares its job's change counter (``session.version``, an int read) every
IDLE_CHECK_SECONDS, so a retry from a button, a magic, the CLI or another kernel brings it back to
life. With no live dashboard the thread does nothing else; with no dashboard at all it exits. All text from users and tasks is HTML-escaped
(:mod:`nbdist.views.render`), and the display bundle carries ``text/plain`` and ``text/html`` drawings of
the snapshot next to the widget, so saved notebooks, GitHub, VS Code and nbval show the table.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import uuid
from typing import Any

from ..session import SPARED_STATES, Snapshot, State, choose_retry, default_session, retry_states
from . import render, timeline
from .refresher import IDLE_CHECK_SECONDS, REFRESH_SECONDS, REFRESHER

__all__ = ["FALLBACK_CSS", "IDLE_CHECK_SECONDS", "REFRESH_SECONDS", "Dashboard", "PictureThenWidget",
           "dormant_dashboards", "keep_refreshed", "refresher_running", "show"]

log = logging.getLogger(__name__)

# After this many consecutive refresh errors a dashboard stops refreshing (its session is gone).
MAX_REFRESH_ERRORS = 5
_ALL = ""  # the filter value meaning "every state"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# A dashboard is two outputs: its picture (text/plain + text/html), then the live widget. JupyterLab and
# Notebook 7 render a widget view whose model is gone (a notebook saved without widget state, JupyterLab's
# default, or after a kernel restart) as "Error displaying widget: model not found", never falling back to
# the bundle's HTML, and leave a dead kernel's views on the page. So the picture is an output of its own,
# and its CSS shows one of the two: the dashboard while its comm is live; else the picture, hiding the
# widget's output, whether it shows the error (the renderer marks its own node .jupyter-widgets only then)
# or a view ipywidgets marks .jupyter-widgets-disconnected (the kernel restarted or went away). A trusted
# notebook keeps the <style>; GitHub, nbviewer, VS Code and nbval see the picture's text/HTML (nbval
# ignores the widget output: its only mimetype is one nbval skips).
_PICTURE = ".jp-OutputArea-child:has(.nbdist-picture)"
FALLBACK_CSS = ("<style>"
                f"{_PICTURE}:has(+ .jp-OutputArea-child .nbdist-dashboard:not(.jupyter-widgets-disconnected))"
                "{display:none}"
                f"{_PICTURE} + .jp-OutputArea-child:has(> .jupyter-widgets),"
                f"{_PICTURE} + .jp-OutputArea-child:has(.nbdist-dashboard.jupyter-widgets-disconnected)"
                "{display:none}"
                "</style>")
# Characters of each log tail sent to the browser: with a page of rows this keeps a refresh under the
# 20 KB budget even when a step prints very long lines; the full log is one `%nbdist logs` away.
MAX_TAIL_CHARS = 6000


def _clip(text: str) -> str:
    """The end of a log tail, at most :data:`MAX_TAIL_CHARS` characters."""
    if len(text) <= MAX_TAIL_CHARS:
        return text
    return "… (earlier output cut; see %nbdist logs)\n" + text[-MAX_TAIL_CHARS:]


def refresher_running() -> bool:
    """True while some dashboard is being refreshed (none is once all their steps are terminal)."""
    return REFRESHER.running


def keep_refreshed(view: Any) -> None:
    """Refresh ``view`` with the dashboards' thread: anything with ``tick()`` and ``changed()`` (the overview)."""
    REFRESHER.add(view)


def dormant_dashboards() -> int:
    """How many dashboards are all terminal and only watch their job's change counter."""
    return REFRESHER.dormant


class PictureThenWidget:
    """A live view shown as two outputs: its picture (``_picture_bundle()``: text and HTML, under a display
    id, redrawn at its end), then its ``widget`` as an output of its own; the front end falls back to the
    picture (see :data:`FALLBACK_CSS`). A subclass sets ``display_id`` and ``displayed`` in its constructor."""

    display_id: str
    displayed: bool
    widget: Any

    def _picture_bundle(self) -> dict[str, Any]:
        raise NotImplementedError

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self.displayed = True
        display(self._picture_bundle(), raw=True, display_id=self.display_id)
        display({WIDGET_MIME: self.widget._repr_mimebundle_()[WIDGET_MIME]}, raw=True)

    def _update_saved_output(self) -> None:
        """Once the work has ended, replace the displayed text/HTML with the final drawing.

        A notebook saved afterwards (and GitHub, nbconvert, VS Code) then shows the final table
        rather than the first snapshot. Only in a kernel: a terminal would print the table again.
        """
        from IPython import get_ipython
        from IPython.display import update_display

        shell = get_ipython()
        if not self.displayed or shell is None or not hasattr(shell, "kernel"):
            return
        try:
            update_display(self._picture_bundle(), raw=True, display_id=self.display_id)
        except Exception:  # the drawing is a nicety; the live widget already shows the end
            log.warning("nbdist: could not update the saved picture of %r", self, exc_info=True)


class Dashboard(PictureThenWidget):
    """Live view of one job or array: header, progress, paged/filtered steps, logs, failures, buttons.

    Parameters
    ----------
    handle : Job or Array
        What to show (a step of an array shows the array, with that step's logs).
    session : Session, optional
        The session that owns ``handle`` (default: the handle's own, else the default session).
    page_size : int
        Steps per page of the table.
    tail_lines : int
        Lines of the selected step's stdout/stderr to show.
    """

    def __init__(self, handle: Any, *, session: Any = None, page_size: int = 50, tail_lines: int = 40) -> None:
        # A step of an array is shown as its array, with that step's logs open.
        array = getattr(handle, "array", None)
        self.preferred_step: int | None = handle.step if array is not None else None
        self.handle = array if array is not None else handle
        self.session = session or getattr(handle, "session", None) or default_session()
        self.page_size = page_size
        self.tail_lines = tail_lines
        self.page = 0
        self.filter_state: str | None = None
        self.where: dict[str, str] = {}  # the parameter filter ("lr=0.1 depth=2")
        self.retry_killed = False  # "Retry failed" re-runs KILLED/SKIPPED steps too
        self._tab_step: Any = ()  # the log step whose tab was last chosen for the user
        self.selected: tuple[int, ...] = ()
        self.status = ""
        # The job's change counter when a retry was asked: its "retrying …" status says what is under way,
        # so it is cleared once the job has changed since and every step is terminal again.
        self._retry_from: int | None = None
        self.refreshes = 0
        self.last_refresh_cpu_s = 0.0
        self._errors = 0
        self._syncing = False
        self._row_options: tuple[tuple[str, ...], tuple[Any, ...]] = ((), ())  # labels, steps drawn
        self.display_id = uuid.uuid4().hex
        self.displayed = False
        self._lock = threading.RLock()
        self.snapshot: Snapshot = self._take()
        self._build()
        self._apply(self.snapshot)
        REFRESHER.add(self)
        if self.snapshot.all_terminal:  # nothing to refresh until the job changes (a retry)
            REFRESHER.rest(self)

    # -- data ---------------------------------------------------------------------------------
    @property
    def log_step(self) -> int | None:
        """The step the user chose to see the logs of (the first selected one, or the step shown);
        None: the snapshot's choice (the first failed step, else the first running one)."""
        if self.selected:
            return self.selected[0]
        return self.preferred_step

    def _take(self) -> Snapshot:
        return self.session.snapshot(self.handle, state=self.filter_state, page=self.page,  # type: ignore[no-any-return]
                                     page_size=self.page_size, log_step=self.log_step, tail_lines=self.tail_lines,
                                     where=self.where)

    def changed(self) -> bool:
        """True when the job changed since the snapshot drawn (one int compare; never raises)."""
        try:
            return bool(self.session.version(self.handle) != self.snapshot.version)
        except Exception:  # a closed or broken session: nothing will change any more
            return False

    def refresh(self) -> Any:
        """Take a new snapshot and push what changed to the browser; returns the snapshot."""
        with self._lock:
            start = time.thread_time()
            snapshot = self._take()
            if snapshot.pages and self.page >= snapshot.pages:  # the filter shrank the table
                self.page = snapshot.pages - 1
                snapshot = self._take()
            self.snapshot = snapshot
            if self._retry_from is not None and snapshot.all_terminal and snapshot.version != self._retry_from:
                self._retry_from = None
                if self.status.startswith("retrying"):
                    self.status = ""
            self._apply(snapshot)
            self.refreshes += 1
            self.last_refresh_cpu_s = time.thread_time() - start
            return snapshot

    def tick(self) -> bool:
        """One refresh from the refresher thread; True when this dashboard needs no more refreshes."""
        try:
            snapshot = self.refresh()
        except Exception:  # a refresh must never kill the thread that serves every dashboard
            self._errors += 1
            log.warning("nbdist dashboard refresh failed (%d in a row)", self._errors, exc_info=True)
            return self._errors >= MAX_REFRESH_ERRORS
        self._errors = 0
        if snapshot.all_terminal:
            self._update_saved_output()
        return bool(snapshot.all_terminal)

    # -- widgets ------------------------------------------------------------------------------
    def _build(self) -> None:
        import ipywidgets as w  # type: ignore[import-untyped]

        self.header = w.HTML()
        self.progress = w.FloatProgress(min=0.0, max=1.0, layout=w.Layout(width="60%"))
        self.progress.layout.display = "none"  # drawn stacked by state by the pictures; its value stays
        self.percent = w.Label()
        self.pictures = timeline.Pictures(on_pick=self.open_step)
        options = [("all states", _ALL)] + [(state.value, state.value) for state in State]
        self.filter = w.Dropdown(options=options, value=_ALL, description="show", layout=w.Layout(width="14em"))
        self.where_text = w.Text(placeholder="lr=0.1 depth=2", description="where", continuous_update=False,
                                 layout=w.Layout(width="18em"))
        if not self.snapshot.param_names:
            self.where_text.layout.display = "none"
        self.prev_button = w.Button(description="◀", tooltip="previous page", layout=w.Layout(width="3em"))
        self.next_button = w.Button(description="▶", tooltip="next page", layout=w.Layout(width="3em"))
        self.page_label = w.Label()
        self.pager = w.HBox([self.filter, self.where_text, self.prev_button, self.page_label, self.next_button])
        if self.snapshot.kind != "array":  # one row: nothing to page or filter
            self.pager.layout.display = "none"
        self.columns = w.HTML()
        self.rows = w.SelectMultiple(options=[], rows=min(self.page_size, 10), layout=w.Layout(width="100%"))
        self.rows.add_class("nbdist-rows")
        self.kill_button = w.Button(description="Kill selected", icon="stop", button_style="warning", disabled=True)
        single = self.snapshot.kind != "array"  # one step: one "Kill" button, nothing to select
        self.kill_all_button = w.Button(description="Kill" if single else "Kill all", icon="times",
                                        button_style="danger")
        what = "it" if single else "the FAILED, TIMEOUT, OUT_OF_MEMORY and LOST steps"
        self.retry_button = w.Button(description="Retry" if single else "Retry failed", icon="redo",
                                     tooltip=f"re-run {what} as submitted: a function redefined since is not what runs")
        self.retry_killed_box = w.Checkbox(value=False, description="retry killed too", indent=False,
                                           layout=w.Layout(width="10em"))
        # A retry runs the function pickled at submit time, not one redefined since: say so where one clicks.
        new_code = "" if single else "; new code: <code>f.map(array.failed_items())</code>"
        self.retry_note = w.HTML(f'<span style="color:var(--jp-ui-font-color2, #757575);font-size:90%">'
                                 f"retries run the code as submitted{new_code}</span>")
        if single:
            self.kill_button.layout.display = "none"
        self.status_label = w.Label()
        self.failures = w.HTML()
        self.stdout = w.HTML()
        self.stderr = w.HTML()
        self.logs = w.Tab(children=[self.stdout, self.stderr], titles=("stdout", "stderr"))
        # Monospace rows so the step table's columns line up (the <style> is scoped by the class).
        style = w.HTML("<style>.nbdist-rows select{font-family:var(--jp-code-font-family, monospace);"
                       "font-size:var(--jp-code-font-size, 12px)}</style>")
        self.widget = w.VBox([
            style, self.header, w.HBox([self.progress, self.pictures.bar, self.percent, self.pictures.rates]),
            self.pictures.efficiency, self.pictures.timeline,
            self.pager,
            self.columns, self.rows,
            w.HBox([self.kill_button, self.kill_all_button, self.retry_button, self.retry_killed_box,
                    self.retry_note, self.status_label]),
            self.failures, self.logs,
        ])
        self.widget.add_class("nbdist-dashboard")
        self.rows.observe(self._on_select, names="value")
        self.filter.observe(self._on_filter, names="value")
        self.where_text.observe(self._on_where, names="value")
        self.retry_killed_box.observe(self._on_retry_killed, names="value")
        self.prev_button.on_click(lambda _: self._turn(-1))
        self.next_button.on_click(lambda _: self._turn(+1))
        self.kill_button.on_click(lambda _: self._act(self.kill_selected))
        self.kill_all_button.on_click(lambda _: self._act(self.kill_all))
        self.retry_button.on_click(lambda _: self._act(self.retry_failed))

    @staticmethod
    def _set(widget: Any, name: str, value: Any) -> None:
        """Assign a trait only when its value changed, so a refresh sends only differences."""
        if getattr(widget, name) != value:
            setattr(widget, name, value)

    def _apply(self, snap: Snapshot) -> None:
        """Draw one snapshot into the widgets."""
        counts = {name: n for name, n in render.nonzero_counts(snap.counts)}
        failed = any(State(name).is_failure for name in counts)
        retryable = bool(retry_states(self.retry_killed) & {State(name) for name in counts})  # what a retry re-runs
        self._set(self.header, "value", render.header_html(snap))
        self._set(self.progress, "value", float(snap.done_fraction or 0.0))
        style = ("danger" if failed else "success") if snap.all_terminal else ("warning" if failed else "info")
        self._set(self.progress, "bar_style", style)
        self._set(self.percent, "value", f"{round(100 * (snap.done_fraction or 0.0))}%")
        self.pictures.apply(snap)
        self._set(self.page_label, "value", f"page {snap.page + 1}/{max(snap.pages, 1)}")
        self._set(self.prev_button, "disabled", snap.page <= 0)
        self._set(self.next_button, "disabled", snap.page >= snap.pages - 1)
        self._set(self.kill_all_button, "disabled", bool(snap.all_terminal))
        self._set(self.retry_button, "disabled", not retryable)
        self._set(self.retry_note.layout, "display", None if retryable else "none")
        self._set(self.retry_killed_box.layout, "display",
                  None if any(counts.get(state.value) for state in SPARED_STATES) else "none")
        self._set(self.status_label, "value", self.status)
        self._set(self.failures, "value", render.failures_html(snap.failure_groups, kind=snap.kind))
        self._set(self.rows, "rows", max(2, min(10, len(snap.rows))))
        widths = render.param_widths(snap.rows, snap.param_names)
        self._set(self.columns, "value", '<pre style="margin:0 0 0 4px;font-family:var(--jp-code-font-family, '
                  'monospace);font-size:var(--jp-code-font-size, 12px)">'
                  f"{html.escape(render.column_header(snap.param_names, widths))}</pre>")
        self._draw_rows(snap.rows, snap.param_names, widths)
        self._set(self.kill_button, "disabled", not self._selected_live(snap))
        step = "" if snap.log_step is None else f" · step {snap.log_step}"
        self._set(self.logs, "titles", (f"stdout{step}", f"stderr{step}"))
        self._open_tab(snap)
        self._set(self.stdout, "value", render.pre_html(_clip(render.tail_text(snap.stdout_tail))))
        self._set(self.stderr, "value", render.pre_html(_clip(render.tail_text(snap.stderr_tail))))

    def _selected_live(self, snap: Snapshot) -> bool:
        """True when a selected step can still be killed (not terminal)."""
        return any(row.step in self.selected and not row.state.is_terminal for row in snap.rows)

    def _open_tab(self, snap: Snapshot) -> None:
        """Open stderr when the log step shown failed, stdout otherwise — once per step shown, so
        the user's own choice of tab is kept while the step stays the same."""
        row = next((row for row in snap.rows if row.step == snap.log_step), None)
        key = (snap.log_step, None if row is None else row.state.is_failure)
        if row is None or key == self._tab_step:
            return
        self._tab_step = key
        self._set(self.logs, "selected_index", 1 if row.state.is_failure else 0)

    def _draw_rows(self, rows: Any, names: Any = (), widths: Any = ()) -> None:
        labels = tuple(render.row_label(row, names, widths) for row in rows)
        steps = tuple(row.step for row in rows)
        if (labels, steps) == self._row_options:
            return
        self._row_options = (labels, steps)
        keep = tuple(i for i, step in enumerate(steps) if step in self.selected)
        self._syncing = True  # new options reset the selection; restore it without reacting to it
        try:
            with self.rows.hold_sync():
                self.rows.options = list(zip(labels, steps))
                if keep:
                    self.rows.index = keep
        finally:
            self._syncing = False

    # -- events -------------------------------------------------------------------------------
    def open_step(self, step: int) -> None:
        """Show the logs of ``step`` (a click on its bar in the timeline)."""
        self.preferred_step, self.selected = step, ()
        self.refresh()

    def _on_select(self, change: Any) -> None:
        if self._syncing:
            return
        self.selected = tuple(change["new"])
        self.status = ""  # an earlier action's outcome no longer describes what is shown
        self._set(self.kill_button, "disabled", not self._selected_live(self.snapshot))
        self.refresh()

    def _on_filter(self, change: Any) -> None:
        self.filter_state = change["new"] or None
        self.page = 0
        self.status = ""
        self.refresh()

    def _on_where(self, change: Any) -> None:
        """``lr=0.1 depth=2``: only the steps with these parameter values; a bad filter says why."""
        where: dict[str, str] = {}
        for word in str(change["new"]).replace(",", " ").split():
            key, sep, value = word.partition("=")
            if not sep or not key:
                self.status = f"filter {word!r}: write name=value, e.g. {self.snapshot.param_names[0]}=1"
                self.refresh()
                return
            where[key] = value
        unknown = [key for key in where if key not in self.snapshot.param_names]
        if unknown:
            self.status = f"no parameter {unknown[0]!r}; parameters: {', '.join(self.snapshot.param_names)}"
            self.refresh()
            return
        self.where = where
        self.page = 0
        self.status = ""
        self.refresh()

    def _on_retry_killed(self, change: Any) -> None:
        self.retry_killed = bool(change["new"])
        self.status = ""
        self.refresh()

    def _turn(self, delta: int) -> None:
        self.page = max(0, min(self.page + delta, max(self.snapshot.pages - 1, 0)))
        self.status = ""
        self.refresh()

    def _act(self, action: Any) -> None:
        """Run a button's action; show its outcome or error in the status label, never raise."""
        try:
            self.status = action()
        except Exception as exc:  # shown to the user in the dashboard; the kernel must not see a traceback
            log.warning("nbdist dashboard action failed", exc_info=True)
            self.status = f"error: {exc}"
        self.refresh()
        if not self.snapshot.all_terminal:
            REFRESHER.add(self)

    # -- actions (public so that code and tests can press the buttons) ----------------------
    def kill_selected(self) -> str:
        """Kill the selected steps that are not finished."""
        if self.snapshot.kind != "array":
            return self.kill_all()
        killed = [step for step in self.selected if self.handle.step(step).cancel()]
        return f"killed {render.steps_label(killed)}" if killed else "nothing to kill: the selected steps had ended"

    def kill_all(self) -> str:
        """Kill every unfinished step."""
        before = self.snapshot.total - round(self.snapshot.done_fraction * self.snapshot.total)
        if not self.handle.cancel():
            return "nothing to kill: every step had ended"
        return "killed" if self.snapshot.kind != "array" else f"killed {before} unfinished step{'s' * (before != 1)}"

    def retry_failed(self) -> str:
        """Re-run, as submitted, what the session's retry rule chooses (FAILED, TIMEOUT, OUT_OF_MEMORY,
        LOST; with "retry killed too", KILLED and SKIPPED as well): ``Array.retry_failed``, or for a
        single job ``Job.retry``."""
        self._retry_from = self.session.version(self.handle)
        if self.snapshot.kind != "array":
            state = self.handle.state
            if not choose_retry([self.handle], self.retry_killed).chosen:
                return f"nothing to retry: it is {state.value}"
            self.handle.retry()
            return f"retrying (after {state.value})"
        steps = self.handle.retry_failed(killed=self.retry_killed)
        if not steps:
            return "nothing to retry"
        return f"retrying {render.steps_label([job.step for job in steps])}"

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        REFRESHER.discard(self)
        self.widget.close_all() if hasattr(self.widget, "close_all") else self.widget.close()

    # -- display ------------------------------------------------------------------------------
    def _picture_bundle(self) -> dict[str, Any]:
        """The snapshot as text and HTML (with :data:`FALLBACK_CSS`): what a saved notebook shows."""
        html_text = render.snapshot_html(self.snapshot, pictures=timeline.pictures_html(self.snapshot),
                                         css_class="nbdist-picture")
        return {"text/plain": render.snapshot_text(self.snapshot), "text/html": FALLBACK_CSS + html_text}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = render.snapshot_text(self.snapshot)
        bundle["text/html"] = render.snapshot_html(self.snapshot, pictures=timeline.pictures_html(self.snapshot))
        return bundle

    def __repr__(self) -> str:
        return render.snapshot_text(self.snapshot)


class _StaticView:
    """Text and HTML drawing of one snapshot, for kernels without ipywidgets."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": render.snapshot_text(self.snapshot),
                "text/html": render.snapshot_html(self.snapshot, pictures=timeline.pictures_html(self.snapshot))}


def show(handle: Any, *, session: Any = None, **options: Any) -> Any:
    """The dashboard of a job or array (displayed when it is a cell's result or passed to ``display``).

    Without ipywidgets installed, a static text/HTML drawing of the current snapshot is returned.
    """
    try:
        import ipywidgets  # noqa: F401 - only checking that it is there
    except ImportError:
        owner = session or getattr(handle, "session", None) or default_session()
        return _StaticView(owner.snapshot(handle))
    return Dashboard(handle, session=session, **options)
