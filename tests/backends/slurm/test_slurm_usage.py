"""Live CPU % and RSS of running Slurm tasks (``sstat``, one call for all of them per interval).

Against the real cluster of ``scripts/slurm-local.sh`` (its ``jobacct_gather/linux`` samples every second).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest
from slurm_helpers import use_local_slurm, wait_done

from nbdist.backends.slurm.usage import UsageSampler, parse_duration, parse_sstat
from nbdist.slurm import SlurmDistributor

# ~150 MB held while it spins for `seconds`: what the dashboard must show while it runs.
BUSY = ("{py} -c \"import time; ballast = bytearray(150 * 2**20); end = time.time() + {seconds}\n"
        "while time.time() < end: pass\"")


def test_sstat_lines_are_summed_per_job_and_a_step_listed_twice_counts_once():
    text = ("15.batch|cpu=00:01:02,energy=0,fs/disk=1690115,mem=96964K,pages=0,vmem=101096K\n"
            "15.0|cpu=00:00:03,energy=0,mem=1M,pages=0\n"
            "14.batch|cpu=1-00:00:00,mem=1.5G\n"
            "15.batch|cpu=00:01:02,energy=0,fs/disk=1690115,mem=96964K,pages=0,vmem=101096K\n"  # asked twice
            "sstat: error: No steps running for job 3\n")
    totals = parse_sstat(text)
    assert set(totals) == {"14", "15"}
    assert totals["15"][0] == 65 and totals["15"][1] == pytest.approx(96964 / 1024 + 1)
    assert totals["14"] == (86400, 1536)
    assert [parse_duration(t) for t in ("00:00:03", "02:03.500", "1-01:00:00", "7.25", "x")] == \
        [3, 123.5, 90000, 7.25, None]


def test_cpu_percent_is_taken_over_the_window_not_the_last_second(monkeypatch):
    sampler = UsageSampler(1.0)
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    reads = iter([(4.0, 10.0), (4.0, 10.0), (9.0, 10.0), (34.0, 10.0)])  # CPU s as Slurm gathers them
    monkeypatch.setattr("nbdist.backends.slurm.usage.sstat", lambda ids: {"7": next(reads)})
    assert sampler.sample({"7": 995.0})["7"]["cpu_percent"] == 80  # young: since it started
    now[0] += 1
    # Slurm had not gathered again: still the average since it started, not 0 %.
    assert sampler.sample({"7": 995.0})["7"]["cpu_percent"] == pytest.approx(66.7, abs=0.1)
    now[0] = 1030.0
    # 30 s after the first sample: over those 30 s, (9 - 4) / 30.
    assert sampler.sample({"7": 995.0})["7"]["cpu_percent"] == pytest.approx(16.7, abs=0.1)
    now[0] = 1060.0
    assert sampler.sample({"7": 995.0})["7"]["cpu_percent"] == pytest.approx(83.3, abs=0.1)  # (34 - 9) / 30


slurm_cluster = pytest.fixture(scope="module")(use_local_slurm)


@pytest.mark.slurm
def test_running_tasks_report_live_cpu_and_rss_from_one_sstat_call_per_interval(slurm_cluster, tmp_path, monkeypatch):
    calls = _logging_sstat(tmp_path / "bin", tmp_path / "sstat.log")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    dist = SlurmDistributor(log_dir=str(tmp_path / "logs"), poll_interval=0.2, max_poll_interval=2.0,
                            usage_interval=1.0)
    dist.start()
    try:
        command = BUSY.format(py=shlex.quote(sys.executable), seconds=10)
        ids = [dist.submit_to_batch_distributor(command, "busy", {}),
               *dist.submit_array_to_batch_distributor(command, "arr", {}, 2).values()]
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(seen) < len(ids) and time.monotonic() < deadline:
            for did, report in dist.get_task_reports(ids).items():
                usage = report["usage"]
                if report["status"] == "R" and usage.get("rss_mb", 0) > 120 and usage.get("cpu_percent", 0) > 5:
                    seen[did] = usage
            time.sleep(0.2)
        assert set(seen) == set(ids), dist.get_task_reports(ids)
        assert all(usage.keys() == {"cpu_percent", "rss_mb"} and usage["rss_mb"] < 400 for usage in seen.values())
        started = time.monotonic()
        time.sleep(3)
        in_3_s = [call for call in calls() if call[0] > started]
        # One call per interval (1 s), each for every running task at once (their raw Slurm ids).
        assert 2 <= len(in_3_s) <= 4, in_3_s
        assert all(len(set(jobs)) == 3 for _, jobs in in_3_s), in_3_s
        reports = wait_done(dist, ids, timeout=60)
        # Once ended, the usage is the worker's own measure, not the last live sample.
        assert all(r["status"] == "D" and "cpu_percent" not in r["usage"] and r["usage"]["max_rss_mb"] > 120
                   for r in reports.values()), reports
        ended = len(calls())
        time.sleep(2)
        assert len(calls()) == ended  # nothing runs: no more sstat
    finally:
        dist.stop(cancel=True)


def _logging_sstat(folder: Path, log: Path):
    """An ``sstat`` wrapper logging the time and the ``--jobs`` of each call; returns a reader of the log."""
    folder.mkdir(parents=True, exist_ok=True)
    real = shutil.which("sstat")
    assert real is not None
    wrapper = folder / "sstat"
    wrapper.write_text(f"#!/bin/sh\necho \"$(date +%s.%N) $*\" >> '{log}'\nexec '{real}' \"$@\"\n")
    wrapper.chmod(0o755)
    offset = time.time() - time.monotonic()

    def calls() -> list[tuple[float, list[str]]]:
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            stamp, *argv = line.split()
            jobs = next(arg for arg in argv if arg.startswith("--jobs=")).split("=", 1)[1].split(",")
            found.append((float(stamp) - offset, jobs))
        return found

    return calls
