"""Progress as data: timeline bars and bins, throughput, ETA, efficiency and hints.

Bins are checked against what they must hold whatever the slot width (the step-seconds of each
group), and the incremental tracker against one built after the fact; a real array checks bars,
lanes, live usage and the seff line end to end.
"""

from __future__ import annotations

import shlex
import sys
import time

import pytest

from nbdist import Session, State
from nbdist.session.progress import MAX_BARS, SLOTS, Tracker, progress_of
from nbdist.session.records import JobRecord


def _record(n: int, created: float = 1000.0, **resources) -> JobRecord:
    rec = JobRecord(1, "sweep", "array", "true", "multiprocess", n, range(n), State.QUEUED, created)
    rec.resources = dict(cores=1, **resources)
    return rec


def _finish(rec: JobRecord, index: int, start: float, wall: float, state: State = State.DONE,
            rss: float | None = 10.0, cpu: float | None = None) -> None:
    rec.move(index, State.RUNNING)
    rec.started[index], rec.runtimes[index], rec.rss[index] = start, wall, rss
    rec.cpu[index] = wall if cpu is None else cpu
    rec.move(index, state)


def _step_seconds(tracker_bins: tuple[float, ...], slot_s: float) -> float:
    return sum(tracker_bins) * slot_s


def test_bins_hold_every_step_second_through_widening_and_match_a_tracker_built_afterwards() -> None:
    n = MAX_BARS * 4
    rec = _record(n)
    tracker = Tracker(rec)  # made first: takes every attempt from the log as it ends
    expected = {"done": 0.0, "failed": 0.0}
    for index in range(n):
        start, wall = 1000.0 + index * 0.7, 1.0 + index % 7
        state = State.FAILED if index % 10 == 0 else State.DONE
        _finish(rec, index, start, wall, state)
        expected["failed" if state is State.FAILED else "done"] += wall
        if index % 97 == 0:
            tracker.catch_up(start + wall)
    now = 1000.0 + n * 0.7 + 10
    tracker.catch_up(now)
    live = tracker.timeline(now)
    assert live.binned and not live.bars and live.slot_s > 1.0  # the axis widened several times
    for group, seconds in expected.items():
        assert _step_seconds(live.bins[group], live.slot_s) == pytest.approx(seconds, rel=1e-3)
    after = Tracker(rec).timeline(now)  # the same record seen by a tracker made at the end
    assert after.slot_s == live.slot_s
    for group in ("done", "failed"):
        assert after.bins[group] == pytest.approx(live.bins[group], abs=1e-2)
    assert all(len(values) == SLOTS for values in live.bins.values())
    # A click on a slot opens a step that started there, a failed one first.
    first_slot = live.picks[0]
    assert first_slot == 0  # step 0 failed and started in slot 0


def test_running_steps_grow_live_in_bins_and_bars() -> None:
    rec = _record(MAX_BARS + 1)
    rec.move(0, State.RUNNING)
    rec.started[0] = 1000.0
    binned = progress_of(rec, 1010.0).timeline
    assert _step_seconds(binned.bins["running"], binned.slot_s) == pytest.approx(10.0)
    later = progress_of(rec, 1030.0).timeline
    assert _step_seconds(later.bins["running"], later.slot_s) == pytest.approx(30.0)

    small = _record(3)
    small.move(1, State.RUNNING)
    small.started[1] = 1002.0
    _finish(small, 0, 1000.0, 1.5)
    bars = progress_of(small, 1005.0).timeline.bars
    assert [(bar.step, bar.group, bar.end) for bar in bars] == [(0, "done", 1.5), (1, "running", 5.0)]
    assert [bar.lane for bar in bars] == [0, 0]  # step 1 started after step 0 ended: same lane


def test_throughput_and_eta_from_the_last_minute() -> None:
    now = time.time()
    rec = _record(100, created=now - 120)
    progress_of(rec, now - 100)  # the tracker exists before the steps end
    for index in range(30):  # 30 steps ended within the last minute
        _finish(rec, index, now - 50 + index, 1.0)
    progress = progress_of(rec, now)
    assert progress.throughput_per_min == pytest.approx(30.0)
    assert progress.eta_s == pytest.approx(70 / 0.5)  # 70 left at half a step per second
    for index in range(30, 100):
        _finish(rec, index, now, 0.5)
    assert progress_of(rec, now + 1).eta_s is None  # nothing left


def test_efficiency_and_hints() -> None:
    rec = _record(10, memory="4G", runtime="1h")
    for index in range(5):
        _finish(rec, index, 1000.0, 100.0, rss=200.0, cpu=50.0)
    eff = progress_of(rec, 2000.0).efficiency
    assert eff.attempts == 5 and eff.cpu_percent == pytest.approx(50.0)
    assert eff.max_rss_mb == 200.0 and eff.memory_mb == 4096.0 and eff.memory_percent == pytest.approx(200 / 40.96)
    assert eff.runtime_percent == pytest.approx(100 / 36)
    assert "asked for 4096 MB per step, used at most 200 MB" in eff.hint and 'memory="320M"' in eff.hint

    oom = _record(4, memory="1G")
    _finish(oom, 0, 1000.0, 2.0, State.OUT_OF_MEMORY, rss=1030.0)
    hint = progress_of(oom, 1100.0).efficiency.hint
    assert hint.startswith("1 attempt(s) ran out of memory at 1024 MB") and 'memory="1.5G"' in hint

    fitting = _record(4, memory="1G")
    for index in range(4):
        _finish(fitting, index, 1000.0, 2.0, rss=700.0)
    assert progress_of(fitting, 1100.0).efficiency.hint is None


def test_a_real_array_reports_live_usage_bars_and_efficiency(tmp_path) -> None:
    with Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        array = session.array(
            f'{shlex.quote(sys.executable)} -c "import time\nt = time.time()\nwhile time.time() - t < 2.2: pass"; echo "$p"',
            over=[{"p": f"<b>{i}</b>"} for i in range(3)], name="busy", memory="1G")
        deadline = time.monotonic() + 20
        running = []
        while time.monotonic() < deadline and not running:
            time.sleep(0.2)
            running = [row for row in session.snapshot(array).rows if row.cpu_percent is not None]
        assert running, "no live usage reported for running steps"
        assert running[0].state is State.RUNNING and running[0].max_rss_mb > 1
        array.wait(timeout=30)
        snap = session.snapshot(array)
        assert all(row.cpu_percent is None for row in snap.rows)  # finished: no live sample left
        bars = snap.progress.timeline.bars
        assert sorted(bar.step for bar in bars) == [0, 1, 2] and {bar.lane for bar in bars} <= {0, 1}
        assert {bar.label for bar in bars} == {f"p=<b>{i}</b>" for i in range(3)}
        eff = snap.progress.efficiency
        assert eff.attempts == 3 and 0 < eff.cpu_percent <= 110 and eff.memory_mb == 1024.0  # a shared machine: any share
        assert "used at most" in eff.hint
