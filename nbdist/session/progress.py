"""Progress as data: timeline bars or bins, throughput, ETA and seff-style efficiency of a record.

The snapshot (:mod:`.snapshot`) asks :func:`progress_of` for a :class:`Progress`; views only draw it.
What has ended does not change, so a :class:`Tracker` (one per record, kept on ``rec.tracker``)
takes each ended attempt once from ``rec.ended_log`` and adds it to running sums and to the
timeline's bins; a refresh then costs the steps still running plus a few hundred slots, not the
whole array:

- up to :data:`MAX_BARS` steps, the timeline is one bar per step (start → end, or → now while it
  runs), packed into lanes as a task stream is (a step takes the first lane free when it started);
- beyond, it is :data:`SLOTS` time slots holding the average number of steps running in each slot,
  stacked by how they ended. A slot's contribution of an ended step is added once (full slots
  through a difference array); when the axis outgrows the slots, their width doubles and pairs
  merge — averages merge exactly, so nothing is recomputed from the steps.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster_protocol.resources import parse_memory, parse_runtime
from .records import STATE_OF_CODE
from .state import State

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["BAR_GROUPS", "GROUPS", "MAX_BARS", "SLOTS", "Bar", "Efficiency", "Progress", "Timeline", "Tracker",
           "group_counts", "group_of", "progress_of"]

# Up to this many steps a timeline draws one bar per step; beyond, binned slots (a picture of 10,000
# bars is neither readable nor cheap to send).
MAX_BARS = 500
# Time slots of a binned timeline: fine enough to see waves of steps, few enough to send in ~10 KB.
SLOTS = 120
# A lane is free for a step that starts this soon before the previous one ended (the backend's start
# and end times come from different clocks: a freed core's next step may seem to start a bit early).
LANE_SLACK_S = 0.25
# Throughput counts the steps that ended within this many seconds.
THROUGHPUT_WINDOW_S = 60.0
# What a timeline colours by: how an attempt ended (or that it still runs); the stacked bar adds the
# steps still waiting. The one mapping of states to colour groups: views only draw it.
GROUPS = ("done", "failed", "killed", "running")
BAR_GROUPS = GROUPS + ("queued",)
_GROUP = {State.DONE: "done", State.FAILED: "failed", State.TIMEOUT: "failed", State.OUT_OF_MEMORY: "failed",
          State.LOST: "failed", State.KILLED: "killed", State.SKIPPED: "killed", State.RUNNING: "running",
          State.QUEUED: "queued", State.PENDING: "queued"}
# Hints: asked for this many times what was used at most (over several steps) is "far more".
OVERSIZE_FACTOR = 4.0
_HINT_MIN_STEPS = 3


def group_of(state: State) -> str:
    """The colour group of a state (an attempt that was retried counts as failed)."""
    return _GROUP.get(state, "failed")


def group_counts(counts: Mapping[State | str, int]) -> dict[str, int]:
    """Steps per colour group, every one of :data:`BAR_GROUPS` in order, from steps per state
    (``Snapshot.counts``: ``{"DONE": 6, "FAILED": 2, ...}``) — what the stacked bar draws."""
    sums = dict.fromkeys(BAR_GROUPS, 0)
    for state, n in counts.items():
        try:
            group = group_of(State(str(getattr(state, "value", state)).upper()))
        except ValueError:  # a state this version does not know (a newer registry): still waiting, as far as we know
            group = "queued"
        sums[group] += int(n)
    return sums


@dataclass(frozen=True)
class Bar:
    """One step on the timeline: seconds from the timeline's start, its lane, its colour group."""

    step: int | None
    index: int
    start: float
    end: float
    lane: int
    group: str
    state: str
    label: str = ""  # the step's parameters, ``lr=0.1 depth=3`` (an ``over=`` sweep)


@dataclass(frozen=True)
class Timeline:
    """What a timeline draws: bars (``bins`` empty) or bins (``bars`` empty) over ``[0, span_s]``.

    ``bins[group][k]`` is the average number of steps of ``group`` running in slot ``k`` (``slot_s``
    seconds wide; slot 0 starts at ``t0``, an epoch time); ``picks[k]`` is the step a click on slot
    ``k`` opens (one that started there, a failed one first; None if none did).
    """

    t0: float
    span_s: float
    now_s: float
    bars: tuple[Bar, ...] = ()
    lanes: int = 0
    bins: dict[str, tuple[float, ...]] = field(default_factory=dict)
    slot_s: float = 0.0
    picks: tuple[int | None, ...] = ()

    @property
    def binned(self) -> bool:
        return bool(self.bins)


@dataclass(frozen=True)
class Efficiency:
    """seff for a job: what its finished attempts used against what they asked for.

    ``cpu_percent`` is CPU time / (cores × wall); ``memory_percent`` the largest max RSS / memory
    asked; ``runtime_percent`` the longest runtime / runtime limit (None when not asked or unknown).
    """

    attempts: int
    cpu_percent: float | None
    max_rss_mb: float | None
    memory_mb: float | None
    memory_percent: float | None
    longest_s: float | None
    runtime_s: float | None
    runtime_percent: float | None
    cores: int
    out_of_memory: int
    timeouts: int
    hint: str | None
    # Of the attempts that held GPUs (NVML-measured): GPUs asked per step, mean utilisation, peak memory.
    gpus: int = 0
    gpu_percent: float | None = None
    gpu_mem_peak_mb: float | None = None


@dataclass(frozen=True)
class Progress:
    """Throughput (steps/min over the last minute), ETA, efficiency and the timeline of a record."""

    throughput_per_min: float | None
    eta_s: float | None
    efficiency: Efficiency | None
    timeline: Timeline | None


def _limit(value: Any, parse: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(parse(value))
    except (TypeError, ValueError):
        return None


class Tracker:
    """Running sums of a record's ended attempts (see the module docstring); under the session's lock."""

    def __init__(self, rec: JobRecord) -> None:
        self.rec = rec
        self.cursor = 0
        self.ends: deque[float] = deque()  # end times of recent attempts (throughput)
        self.attempts = 0
        self.cpu_s = 0.0
        self.core_wall_s = 0.0  # cores × wall of the attempts whose CPU time is known
        self.max_rss_mb: float | None = None
        self.longest_s: float | None = None
        self.gpu_wall_s = 0.0  # wall of the attempts whose GPU utilisation is known
        self.gpu_busy_s = 0.0  # their wall × utilisation
        self.gpu_mem_peak_mb: float | None = None
        self.out_of_memory = 0
        self.timeouts = 0
        self.t0 = rec.created
        self.slot_s = 1.0
        self.full = {group: [0.0] * (SLOTS + 1) for group in GROUPS}  # difference arrays of whole slots
        self.part = {group: [0.0] * SLOTS for group in GROUPS}  # everything else, per slot
        self.first_failed: list[int | None] = [None] * SLOTS  # per slot: a step that started there
        self.first_any: list[int | None] = [None] * SLOTS
        self.binned = rec.n > MAX_BARS
        for index, state in enumerate(rec.states):  # what ended before the tracker existed
            if state.is_terminal:
                self._add(index, state, None)
        self.ends = deque(sorted(self.ends))
        self.cursor = len(rec.ended_log)

    def catch_up(self, now: float) -> None:
        """Add the attempts that ended since the last call."""
        log = self.rec.ended_log
        for entry in log[self.cursor:]:
            self._add(entry >> 4, STATE_OF_CODE[entry & 15], now)
        self.cursor = len(log)
        while self.ends and self.ends[0] < now - THROUGHPUT_WINDOW_S:
            self.ends.popleft()

    def _add(self, index: int, state: State, now: float | None) -> None:
        rec = self.rec
        start, wall = rec.started[index], rec.runtimes[index]
        if start is None:
            return  # never started (cancelled while queued, skipped): no attempt to count
        end = start + wall if wall is not None else (now or start)
        self.ends.append(end)
        self.attempts += 1
        self.out_of_memory += state is State.OUT_OF_MEMORY
        self.timeouts += state is State.TIMEOUT
        if wall is not None:
            self.longest_s = max(self.longest_s or 0.0, wall)
        rss, cpu = rec.rss[index], rec.cpu[index]
        if rss is not None:
            self.max_rss_mb = max(self.max_rss_mb or 0.0, rss)
        gpu = rec.gpu.get(index) if rec.gpu else None
        if gpu:
            if "gpu_percent" in gpu and wall:
                self.gpu_wall_s += wall
                self.gpu_busy_s += wall * gpu["gpu_percent"] / 100
            if "gpu_mem_peak_mb" in gpu:
                self.gpu_mem_peak_mb = max(self.gpu_mem_peak_mb or 0.0, gpu["gpu_mem_peak_mb"])
        if cpu is not None and wall:
            self.cpu_s += cpu
            self.core_wall_s += wall * int(rec.limits(index).get("cores") or 1)
        if self.binned:
            group = group_of(state)
            self._reach(end)  # before taking the lists: widening replaces them
            self._fill(self.full[group], self.part[group], start, end, 1.0)
            slot = min(max(int((start - self.t0) / self.slot_s), 0), SLOTS - 1)
            step = index if rec.steps is None else rec.steps[index]
            if group == "failed" and self.first_failed[slot] is None:
                self.first_failed[slot] = step
            if self.first_any[slot] is None:
                self.first_any[slot] = step

    def _fill(self, full: list[float], part: list[float], start: float, end: float, weight: float) -> None:
        """Add one step running from ``start`` to ``end`` to the slots (average concurrency); the
        slots must reach ``end`` (:meth:`_reach`)."""
        width = self.slot_s
        a_pos, b_pos = (start - self.t0) / width, (end - self.t0) / width
        a, b = max(int(a_pos), 0), min(int(b_pos), SLOTS - 1)
        if a >= b:
            part[min(a, SLOTS - 1)] += weight * max(b_pos - a_pos, 0.0)
            return
        part[a] += weight * (a + 1 - a_pos)
        part[b] += weight * (b_pos - b)
        if b > a + 1:
            full[a + 1] += weight
            full[b] -= weight

    def _reach(self, end: float) -> None:
        """Widen the slots until they cover ``end``."""
        while end - self.t0 > SLOTS * self.slot_s:
            self._widen()

    def _widen(self) -> None:
        """Double the slot width, merging pairs of slots (averages of two halves)."""
        self.slot_s *= 2
        for group in GROUPS:
            values = _dense(self.full[group], self.part[group])
            merged = [(values[2 * k] + values[2 * k + 1]) / 2 for k in range(SLOTS // 2)] + [0.0] * (SLOTS // 2)
            self.part[group] = merged
            self.full[group] = [0.0] * (SLOTS + 1)
        for picks in (self.first_failed, self.first_any):
            merged_picks = [picks[2 * k] if picks[2 * k] is not None else picks[2 * k + 1] for k in range(SLOTS // 2)]
            picks[:] = merged_picks + [None] * (SLOTS // 2)

    # ----------------------------------------------------------------- reading
    def timeline(self, now: float) -> Timeline:
        if not self.binned:
            return self._bars(now)
        rec = self.rec
        self._reach(now)
        full, part = [0.0] * (SLOTS + 1), [0.0] * SLOTS
        picks = [f if f is not None else a for f, a in zip(self.first_failed, self.first_any)]
        for index in rec.by_state[State.RUNNING]:
            start = rec.started[index]
            if start:
                self._fill(full, part, start, now, 1.0)
                slot = min(max(int((start - self.t0) / self.slot_s), 0), SLOTS - 1)
                if picks[slot] is None:
                    picks[slot] = rec.step_id(index)
        bins = {group: tuple(round(v, 3) for v in _dense(self.full[group], self.part[group])) for group in GROUPS}
        bins["running"] = tuple(round(v, 3) for v in _dense(full, part))
        return Timeline(t0=self.t0, span_s=SLOTS * self.slot_s, now_s=now - self.t0, bins=bins, slot_s=self.slot_s,
                        picks=tuple(picks))

    def _bars(self, now: float) -> Timeline:
        rec = self.rec
        params = rec.sweep.params if rec.sweep is not None else None
        items = []
        for index in range(rec.n):
            start = rec.started[index]
            state = rec.states[index]
            if start is None or state in (State.QUEUED, State.PENDING):
                continue
            wall = rec.runtimes[index] if state is not State.RUNNING else None
            end = start + wall if wall is not None else now
            items.append((start, index, end, state))
        items.sort()
        lane_ends: list[float] = []
        bars = []
        for start, index, end, state in items:
            lane = next((k for k, lane_end in enumerate(lane_ends) if lane_end <= start + LANE_SLACK_S),
                        len(lane_ends))
            if lane == len(lane_ends):
                lane_ends.append(end)
            else:
                lane_ends[lane] = end
            label = " ".join(f"{key}={value}" for key, value in params[index].items() if key != "step") if params else ""
            bars.append(Bar(rec.step_id(index), index, start - self.t0, end - self.t0, lane, group_of(state),
                            state.value, label))
        return Timeline(t0=self.t0, span_s=_nice_span(now - self.t0), now_s=now - self.t0, bars=tuple(bars),
                        lanes=len(lane_ends))

    def efficiency(self) -> Efficiency | None:
        if not self.attempts:
            return None
        limits = self.rec.base_limits
        cores = int(limits.get("cores") or 1)
        memory = _limit(limits.get("memory"), parse_memory)
        runtime = _limit(limits.get("runtime"), parse_runtime)
        rss, longest = self.max_rss_mb, self.longest_s
        memory_percent = 100 * rss / memory if memory and rss is not None else None
        runtime_percent = 100 * longest / runtime if runtime and longest is not None else None
        cpu_percent = 100 * self.cpu_s / self.core_wall_s if self.core_wall_s else None
        return Efficiency(
            attempts=self.attempts, cpu_percent=cpu_percent, max_rss_mb=rss, memory_mb=memory,
            memory_percent=memory_percent, longest_s=longest, runtime_s=runtime, runtime_percent=runtime_percent,
            cores=cores, out_of_memory=self.out_of_memory, timeouts=self.timeouts,
            hint=self._hint(cores, cpu_percent, memory, memory_percent, runtime, runtime_percent),
            gpus=int(str(self.rec.resources.get("gpus") or 0).rpartition(":")[2] or 0),
            gpu_percent=100 * self.gpu_busy_s / self.gpu_wall_s if self.gpu_wall_s else None,
            gpu_mem_peak_mb=self.gpu_mem_peak_mb)

    def _hint(self, cores: int, cpu_percent: float | None, memory: float | None, memory_percent: float | None,
              runtime: float | None, runtime_percent: float | None) -> str | None:
        """One line of advice when the asks are far off: killed for too little, or asked far too much."""
        if self.out_of_memory and memory:
            return (f"{self.out_of_memory} attempt(s) ran out of memory at {memory:.0f} MB: ask for more "
                    f"(memory=\"{_round_up_mb(memory * 1.5)}\") or set max_attempts to retry with ×1.5")
        if self.timeouts and runtime:
            return (f"{self.timeouts} attempt(s) hit the runtime limit of {runtime:.0f}s: ask for more "
                    f"(runtime=\"{int(runtime * 1.5) + 1}s\") or set max_attempts to retry with ×1.5")
        if self.attempts < _HINT_MIN_STEPS:
            return None
        if memory_percent is not None and memory_percent * OVERSIZE_FACTOR < 100 and self.max_rss_mb:
            return (f"asked for {memory:.0f} MB per step, used at most {self.max_rss_mb:.0f} MB: "
                    f"memory=\"{_round_up_mb(self.max_rss_mb * 1.5)}\" would do")
        if cores > 1 and cpu_percent is not None and cpu_percent * OVERSIZE_FACTOR < 100:
            used = max(1, round(cores * cpu_percent / 100 + 0.5))
            return f"asked for {cores} cores per step, used {cpu_percent:.0f}% of them: cores={used} would do"
        if runtime_percent is not None and runtime_percent * OVERSIZE_FACTOR < 100 and self.longest_s:
            return (f"runtime limit {runtime:.0f}s, longest step {self.longest_s:.0f}s: a tighter limit "
                    f"(runtime=\"{int(self.longest_s * 2) + 1}s\") schedules sooner on a cluster")
        return None

    def rates(self, now: float) -> tuple[float | None, float | None]:
        """``(steps per minute over the recent window, seconds left)``; None when not known yet."""
        rec = self.rec
        if rec.all_terminal:
            return None, None
        window = min(THROUGHPUT_WINDOW_S, now - self.t0)
        if not self.ends or window <= 0:
            return None, None
        per_s = len(self.ends) / window
        return per_s * 60, (rec.n - rec.n_terminal) / per_s


def _dense(full: list[float], part: list[float]) -> list[float]:
    """Slot values: the prefix sums of the difference array plus the partial contributions."""
    values, level = [], 0.0
    for k in range(SLOTS):
        level += full[k]
        values.append(level + part[k])
    return values


def _nice_span(seconds: float) -> float:
    """An axis length ≥ ``seconds`` that grows in steps (1, 2, 5 × 10^k), so bars move rarely."""
    span = 10.0
    while span < seconds * 1.1:
        span *= 2.5 if str(span).startswith("2") else 2
    return span


def _round_up_mb(megabytes: float) -> str:
    if megabytes >= 1024:
        return f"{-(-megabytes // 512) / 2:g}G"
    return f"{int(-(-megabytes // 64) * 64)}M"


def progress_of(rec: JobRecord, now: float | None = None, *, timeline: bool = True) -> Progress:
    """The Progress of a record now (the session's lock held); its Tracker is made on first use."""
    now = time.time() if now is None else now
    tracker = rec.tracker
    if tracker is None:
        tracker = rec.tracker = Tracker(rec)
    tracker.catch_up(now)
    throughput, eta = tracker.rates(now)
    return Progress(throughput_per_min=throughput, eta_s=eta, efficiency=tracker.efficiency(),
                    timeline=tracker.timeline(now) if timeline else None)

