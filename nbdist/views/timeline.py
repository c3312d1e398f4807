"""The dashboard's pictures, hand-drawn SVG: a timeline, a progress bar stacked by state, rates, seff.

They draw a snapshot's :class:`~nbdist.session.progress.Progress` and nothing else, as plain
strings: the live widget sends them to the browser, and the text/HTML bundle of a saved notebook
keeps them as inline SVG (no script), which GitHub, nbviewer, VS Code and nbval show as they are.
Every text from a user or a task (names, parameters, messages) is escaped with :func:`html.escape`.

A click on a bar opens that step's log: :func:`pick_view` is a tiny anywidget (one ``click`` handler
sending the ``data-pick`` of the clicked element to the kernel) when anywidget is installed, else a
plain ``ipywidgets.HTML`` where hovering still names each step and the step table picks the log.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..session import BAR_GROUPS, group_counts
from . import render

if TYPE_CHECKING:
    from ..session import Snapshot

__all__ = ["GROUP_COLORS", "axis_span", "efficiency_html", "efficiency_text", "pick_view", "pictures_html", "rates_text",
           "stacked_bar_html", "timeline_svg"]

# Fixed colours (an SVG attribute cannot read CSS variables), readable on light and dark themes; one per
# colour group of the core (which state is in which group is the session's rule: ``group_of``).
GROUP_COLORS: Mapping[str, str] = {"done": "#388e3c", "failed": "#d32f2f", "killed": "#f57c00",
                                   "running": "#1976d2", "queued": "#9e9e9e"}
_WIDTH = 600  # SVG units: 120 slots × 5, so slot edges are whole numbers
_PLOT_H = 100  # height of a binned timeline's plot
_AXIS_H = 16
_FONT = 'font-family="sans-serif" font-size="10"'
_MUTED = 'style="color:var(--jp-ui-font-color2, #757575);font-size:90%"'


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def stacked_bar_html(counts: Mapping[str, int], total: int) -> str:
    """One bar, a segment per colour group (done, failed, killed, running, queued), with a tooltip each."""
    sums = group_counts(counts)
    parts = []
    for group in BAR_GROUPS:
        n = sums[group]
        if n and total:
            parts.append(f'<div class="nbdist-bar-{group}" title="{group} {n}" style="width:{100 * n / total:.2f}%;'
                         f'background:{GROUP_COLORS[group]}"></div>')
    return (f'<div class="nbdist-stacked" style="display:flex;height:10px;width:100%;min-width:8em;'
            f'background:var(--jp-layout-color3, #ddd);border-radius:2px;overflow:hidden">{"".join(parts)}</div>')


def rates_text(progress: Any) -> str:
    """``"12.5 steps/min · ETA 3m05s"`` while work remains and a rate is known; else ``""``."""
    if progress is None or progress.throughput_per_min is None:
        return ""
    text = f"{progress.throughput_per_min:.3g} steps/min"
    if progress.eta_s is not None:
        text += f" · ETA {render.format_seconds(progress.eta_s)}"
    return text


def efficiency_text(efficiency: Any) -> str:
    """seff in one line: ``efficiency of 40 attempts: CPU 93% of 1 core · max RSS 12.1M of 1.0G (1%) · ...``."""
    if efficiency is None:
        return ""
    eff = efficiency
    noun = "attempt" if eff.attempts == 1 else "attempts"
    parts = []
    if eff.cpu_percent is not None:
        parts.append(f"CPU {eff.cpu_percent:.0f}% of {eff.cores} core{'s' if eff.cores != 1 else ''}")
    if eff.max_rss_mb is not None:
        asked = f" of {render.format_mb(eff.memory_mb)} ({eff.memory_percent:.0f}%)" if eff.memory_percent is not None else ""
        parts.append(f"max RSS {render.format_mb(eff.max_rss_mb)}{asked}")
    if eff.longest_s is not None:
        limit = (f" of {render.format_seconds(eff.runtime_s)} ({eff.runtime_percent:.0f}%)"
                 if eff.runtime_percent is not None else "")
        parts.append(f"longest {render.format_seconds(eff.longest_s)}{limit}")
    if eff.gpu_percent is not None or eff.gpu_mem_peak_mb is not None:  # GPUs asked vs used (NVML's figures)
        used = f"{eff.gpu_percent:.0f}%" if eff.gpu_percent is not None else "?"
        peak = f", memory peak {render.format_mb(eff.gpu_mem_peak_mb)}" if eff.gpu_mem_peak_mb is not None else ""
        parts.append(f"GPU {used} of {eff.gpus} GPU{'s' if eff.gpus != 1 else ''}{peak}")
    return f"efficiency of {eff.attempts} {noun}: " + (" · ".join(parts) or "no usage reported")


def efficiency_html(efficiency: Any) -> str:
    """The efficiency line and its hint, escaped (``""`` before an attempt ended): the bundle's and the widget's."""
    if efficiency is None:
        return ""
    line = f'<div class="nbdist-efficiency" {_MUTED}>{_esc(efficiency_text(efficiency))}</div>'
    if efficiency.hint:
        line += f'<div class="nbdist-hint" style="color:{GROUP_COLORS["killed"]}">hint: {_esc(efficiency.hint)}</div>'
    return line


def timeline_svg(snapshot: Snapshot) -> str:
    """The timeline of a snapshot as an SVG string ("" before any step started)."""
    timeline = snapshot.progress.timeline if snapshot.progress is not None else None
    if timeline is None or (not timeline.bars and not timeline.binned):
        return ""
    title = f"<title>{_esc(f'timeline of {snapshot.kind} {snapshot.name}')}</title>"
    span = axis_span(snapshot)
    if timeline.binned:
        body, height = _bins(timeline, span)
    else:
        body, height = _bars(timeline, span)
    axis = _axis(span, height)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nbdist-timeline" width="{_WIDTH}" '
            f'height="{height + _AXIS_H}" viewBox="0 0 {_WIDTH} {height + _AXIS_H}" {_FONT}>'
            f"{title}{body}{axis}</svg>")


def axis_span(snapshot: Snapshot) -> float:
    """Seconds the timeline's axis covers: while steps run, the core's round length ahead of now (it grows
    in steps, so bars move rarely); once every step ended, up to where the job ended, so a finished job
    fills the picture and stays the same picture however long after it is drawn."""
    timeline = snapshot.progress.timeline if snapshot.progress is not None else None
    if timeline is None:
        return 0.0
    if not snapshot.all_terminal:
        return float(timeline.span_s)
    if timeline.binned:  # whole slots, up to the one the job ended in
        slots = len(next(iter(timeline.bins.values())))
        return float(min(slots, int(timeline.now_s / timeline.slot_s) + 1) * timeline.slot_s)
    end = max((bar.end for bar in timeline.bars), default=0.0)
    return float(end) if end > 0 else float(timeline.span_s)


def _x(seconds: float, span: float) -> float:
    return round(max(seconds, 0.0) / span * _WIDTH, 1)


def _bars(timeline: Any, span: float) -> tuple[str, int]:
    lanes = max(timeline.lanes, 1)
    lane_h = max(2, min(14, 160 // lanes))
    by_group: dict[str, list[str]] = {}
    for bar in timeline.bars:
        x = _x(bar.start, span)
        width = max(round(_x(bar.end, span) - x, 1), 1.0)
        step = "" if bar.step is None else f"step {bar.step} · "
        label = f" · {bar.label}" if bar.label else ""
        tip = _esc(f"{step}{bar.state} · {render.format_seconds(bar.end - bar.start)}{label}")
        pick = "" if bar.step is None else f' data-pick="{bar.step}"'
        by_group.setdefault(bar.group, []).append(
            f'<rect x="{x:g}" y="{bar.lane * lane_h}" width="{width:g}" height="{max(lane_h - 1, 1)}"{pick}>'
            f"<title>{tip}</title></rect>")
    body = "".join(f'<g fill="{GROUP_COLORS[group]}" class="nbdist-tl-{group}">{"".join(rects)}</g>'
                   for group, rects in by_group.items())
    return body, lanes * lane_h


def _bins(timeline: Any, span: float) -> tuple[str, int]:
    bins = timeline.bins
    slots = len(next(iter(bins.values())))
    width = _WIDTH * timeline.slot_s / span
    used = min(slots, int(timeline.now_s / timeline.slot_s) + 1)
    groups = [group for group in BAR_GROUPS if any(bins.get(group, ())[:used])]  # the core's bins: no "queued"
    totals = [sum(bins[group][k] for group in groups) for k in range(used)]
    peak = max(totals, default=0.0) or 1.0

    def y(value: float) -> str:
        return f"{_PLOT_H - value / peak * _PLOT_H:.1f}".rstrip("0").rstrip(".")

    lower = [0.0] * used
    paths = []
    for group in groups:
        upper = [lower[k] + bins[group][k] for k in range(used)]
        forward = "".join(f"H{(k + 1) * width:g}" + (f"V{y(upper[k + 1])}" if k + 1 < used else "")
                          for k in range(used))
        back = "".join(f"H{k * width:g}" + (f"V{y(lower[k - 1])}" if k > 0 else "") for k in reversed(range(used)))
        paths.append(f'<path class="nbdist-tl-{group}" fill="{GROUP_COLORS[group]}" '
                     f'd="M0 {y(upper[0])}{forward}V{y(lower[used - 1])}{back}Z"/>')
        lower = upper
    hits = []
    for k in range(used):
        if not totals[k]:
            continue
        start = k * timeline.slot_s
        shares = ", ".join(f"{group} {bins[group][k]:.2g}" for group in groups if bins[group][k])
        tip = _esc(f"{render.format_seconds(start)}–{render.format_seconds(start + timeline.slot_s)}: "
                   f"steps running {shares}")
        step = timeline.picks[k] if k < len(timeline.picks) else None
        pick = "" if step is None else f' data-pick="{step}"'
        hits.append(f'<rect x="{k * width:g}" width="{width:g}" height="{_PLOT_H}"{pick}><title>{tip}</title></rect>')
    scale = f'<text x="2" y="10" fill="#757575">{peak:.3g} running</text>'
    return "".join(paths) + f'<g fill="#000" fill-opacity="0">{"".join(hits)}</g>' + scale, _PLOT_H


def _axis(span: float, top: int) -> str:
    ticks = []
    for k in range(5):
        x = _WIDTH * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        ticks.append(f'<text x="{x:g}" y="{top + 12}" text-anchor="{anchor}">{_tick(span * k / 4, span)}</text>')
    return f'<g fill="#757575"><rect y="{top}" width="{_WIDTH}" height="1"/>{"".join(ticks)}</g>'


def _tick(seconds: float, span: float) -> str:
    """An axis label: in milliseconds on an axis shorter than a second (a job done in a blink would
    otherwise read ``0.00s`` at every tick)."""
    if span >= 1:
        return render.format_seconds(seconds)
    ms = seconds * 1000
    return f"{ms:.0f}ms" if ms >= 10 or ms == 0 else f"{ms:.1f}ms"


def pictures_html(snapshot: Snapshot) -> str:
    """Stacked bar, rates, efficiency line (and its hint) and the timeline: the bundle's pictures."""
    progress = snapshot.progress
    lines = [stacked_bar_html(snapshot.counts, snapshot.total)]
    rates = rates_text(progress)
    if rates:
        lines.append(f'<div class="nbdist-rates" {_MUTED}>{_esc(rates)}</div>')
    lines.append(efficiency_html(progress.efficiency if progress is not None else None))
    svg = timeline_svg(snapshot)
    if svg:
        lines.append(f'<div class="nbdist-timeline-box" style="overflow-x:auto">{svg}</div>')
    return "".join(lines)


_PICK_ESM = """
function render({ model, el }) {
  const draw = () => { el.innerHTML = model.get("value"); };
  draw();
  model.on("change:value", draw);
  el.addEventListener("click", (event) => {
    const target = event.target.closest("[data-pick]");
    if (target) model.send({ pick: target.getAttribute("data-pick") });
  });
}
export default { render };
"""
_PICK_CLASS: list[Any] = []


def pick_view(on_pick: Callable[[str], None]) -> Any:
    """A widget showing HTML/SVG in its ``value``; a click on an element with ``data-pick`` calls
    ``on_pick(that value)`` (an anywidget of ~10 lines of JS; without anywidget, an ``HTML`` widget)."""
    try:
        import anywidget
        import traitlets
    except ImportError:
        import ipywidgets

        return ipywidgets.HTML()
    if not _PICK_CLASS:
        _PICK_CLASS.append(type("PickView", (anywidget.AnyWidget,), {
            "_esm": _PICK_ESM, "value": traitlets.Unicode("").tag(sync=True),
            "__doc__": "HTML whose clicked ``data-pick`` elements are sent to the kernel."}))
    view = _PICK_CLASS[0]()
    view.on_msg(lambda _widget, content, _buffers: on_pick(str(content.get("pick", ""))) if isinstance(content, dict) else None)
    return view


class Pictures:
    """The dashboard's pictures as widgets: the stacked bar, rates, the efficiency line, the timeline.

    ``on_pick(step)`` is called with the user step id of a clicked bar (or binned slot).
    """

    def __init__(self, on_pick: Callable[[int], None]) -> None:
        import ipywidgets as w

        self.bar = w.HTML(layout=w.Layout(width="60%"))
        self.rates = w.Label()
        self.efficiency = w.HTML()
        self.timeline = pick_view(lambda value: self._picked(value, on_pick))
        self.timeline.add_class("nbdist-timeline-view")

    @staticmethod
    def _picked(value: str, on_pick: Callable[[int], None]) -> None:
        try:
            step = int(value)
        except ValueError:
            return  # not a step (the page's own markup cannot send anything else)
        on_pick(step)

    def apply(self, snapshot: Snapshot) -> None:
        """Draw one snapshot: set only the values that changed (a refresh sends only differences)."""
        progress = snapshot.progress
        line = efficiency_html(progress.efficiency if progress is not None else None)
        for widget, value in ((self.bar, stacked_bar_html(snapshot.counts, snapshot.total)),
                              (self.rates, rates_text(progress)), (self.efficiency, line),
                              (self.timeline, timeline_svg(snapshot))):
            if widget.value != value:
                widget.value = value
