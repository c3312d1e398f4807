"""The pictures only draw the core's rules (issue 21 point 2): the stacked bar's colour groups are the
session's (``group_of``/``group_counts``, the timeline's groups too), and the efficiency line with its
hint is built once, the same in the live widget and in the saved bundle."""

from __future__ import annotations

import re

import pytest

from nbdist import State
from nbdist.session import BAR_GROUPS, Snapshot, group_counts
from nbdist.session.progress import Efficiency, Progress, group_of
from nbdist.views import timeline


def test_the_stacked_bar_draws_the_sessions_groups() -> None:
    assert BAR_GROUPS == ("done", "failed", "killed", "running", "queued")
    for state in State:
        bar = timeline.stacked_bar_html({state.value: 3}, 3)
        assert re.findall(r'class="nbdist-bar-(\w+)"', bar) == [group_of(state)], state
        assert group_counts({state.value: 3}) == {group: 3 * (group == group_of(state)) for group in BAR_GROUPS}
    counts = {"DONE": 6, "FAILED": 1, "TIMEOUT": 1, "KILLED": 1, "SKIPPED": 1, "RUNNING": 2, "PENDING": 1, "QUEUED": 2}
    assert group_counts(counts) == {"done": 6, "failed": 2, "killed": 2, "running": 2, "queued": 3}
    assert list(group_counts(counts)) == list(BAR_GROUPS)


def _snapshot(hint: str | None) -> Snapshot:
    efficiency = Efficiency(attempts=4, cpu_percent=12.0, max_rss_mb=3.0, memory_mb=2048.0, memory_percent=0.1,
                            longest_s=0.4, runtime_s=None, runtime_percent=None, cores=1, out_of_memory=0, timeouts=0,
                            hint=hint)
    return Snapshot("1", "eff", "multiprocess", "array", {"DONE": 4}, 4, 1.0, 1.0, True, [], 0, 1, None, None, "", "",
                    progress=Progress(throughput_per_min=None, eta_s=None, efficiency=efficiency, timeline=None))


@pytest.mark.parametrize("hint", [None, "asked for 2048 MB per step, used at most 3 MB <&>"])
def test_the_efficiency_line_is_built_once(hint: str | None) -> None:
    pytest.importorskip("ipywidgets")
    snapshot = _snapshot(hint)
    pictures = timeline.Pictures(on_pick=lambda step: None)
    pictures.apply(snapshot)
    line = pictures.efficiency.value
    assert "efficiency of 4 attempts: CPU 12% of 1 core" in line
    assert line == timeline.efficiency_html(snapshot.progress.efficiency)
    assert line in timeline.pictures_html(snapshot)  # the saved bundle shows what the live widget showed
    assert ("hint: asked for 2048 MB per step, used at most 3 MB &lt;&amp;&gt;" in line) is (hint is not None)
