"""Issue 18 point 5: the timeline of a finished job ends where the job did, and stays that picture
however long after it is drawn (it used to stretch with the clock: a 52 s job on a 0–8m20s axis)."""

from __future__ import annotations

import dataclasses
import time
import types
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")

import nbdist.session.snapshot as snapshot_module
from nbdist import Session
from nbdist.session.progress import Timeline
from nbdist.views import render, timeline

SVG = "{http://www.w3.org/2000/svg}"


def _svg(text: str) -> ET.Element:
    return ET.fromstring(text[text.index("<svg"):text.index("</svg>") + len("</svg>")])


def _ticks(root: ET.Element) -> list[str]:
    return [text.text or "" for text in root.iter(f"{SVG}text") if text.get("text-anchor")]


def test_a_finished_jobs_axis_ends_where_it_did_and_does_not_stretch(tmp_path, monkeypatch) -> None:
    with Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        array = session.array("sleep 0.6", steps=3, name="nap")
        array.wait(timeout=60)
        first = session.snapshot(array)
        later = types.SimpleNamespace(time=lambda: time.time() + 500.0)  # ten minutes after it ended
        monkeypatch.setattr(snapshot_module, "time", later)
        second = session.snapshot(array)
    bars = first.progress.timeline.bars
    end = max(bar.end for bar in bars)
    assert timeline.axis_span(first) == pytest.approx(end)
    svg = timeline.timeline_svg(first)
    assert timeline.timeline_svg(second) == svg  # the same picture ten minutes later
    assert second.progress.timeline.now_s == first.progress.timeline.now_s
    assert second.elapsed_s == first.elapsed_s
    root = _svg(svg)
    assert _ticks(root)[-1] == render.format_seconds(end)  # not a rounded-up 10s, 20s … 16m40s
    right = max(float(rect.get("x")) + float(rect.get("width")) for rect in root.iter(f"{SVG}rect")
                if rect.get("data-pick") is not None)
    assert right == pytest.approx(600, abs=1.0)  # the last step ends at the right edge


def test_a_finished_binned_timeline_ends_with_the_slot_the_job_ended_in(tmp_path) -> None:
    with Session(root=str(tmp_path / ".nbdist"), parallelism=2) as session:
        job = session.submit("true", name="one")
        job.wait(timeout=60)
        snap = session.snapshot(job)
    slots = 120
    done = tuple([2.0] * 31 + [0.0] * (slots - 31))
    binned = Timeline(t0=0.0, span_s=slots * 1.0, now_s=30.5, bins={"done": done, "running": (0.0,) * slots},
                      slot_s=1.0, picks=(None,) * slots)
    finished = dataclasses.replace(snap, progress=dataclasses.replace(snap.progress, timeline=binned))
    assert finished.all_terminal and timeline.axis_span(finished) == 31.0
    root = _svg(timeline.timeline_svg(finished))
    assert _ticks(root)[-1] == "31.0s"
    path = root.find(f"{SVG}path").get("d")
    assert "H600" in path and "H601" not in path  # the 31 slots fill the width
    running = dataclasses.replace(finished, all_terminal=False)
    assert timeline.axis_span(running) == 120.0  # while work runs, the core's axis ahead of now
    assert _ticks(_svg(timeline.timeline_svg(running)))[-1] == "2m00s"
