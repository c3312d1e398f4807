"""Regenerate docs/RELIABILITY.md: run the fault, load and bad-input suites and write what they measured.

Usage: ``.venv/bin/python scripts/reliability_report.py [--load-steps 100000] [--skip-slurm]``

Every row of the table names the tests that prove it; the result column is what this run saw, so
the document cannot claim more than the suite shows. Figures come from the benchmark scripts run in
the same invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

# (scenario, what nbdist promises, test node-id prefixes that prove it)
SCENARIOS: list[tuple[str, str, list[str]]] = [
    ("A consumer process SIGKILLed mid-array",
     "its running task is reported lost (U) and killed; steps it never started run elsewhere; no step runs twice; stop() still returns",
     ["tests/backends/multiprocess/test_multiprocess.py::test_a_killed_consumer_loses_only_its_task",
      "tests/backends/multiprocess/test_multiprocess.py::test_no_step_runs_twice_when_a_consumer_dies_mid_array"]),
    ("The process holding the session SIGKILLed mid-array",
     "its local tasks and consumers die with it (no orphan keeps running); attach() in a new process shows every step, none left RUNNING",
     ["tests/backends/multiprocess/test_multiprocess.py::test_tasks_die_with_the_process_that_owns_the_distributor",
      "tests/session/test_attach.py::test_attach_after_the_kernel_is_sigkilled"]),
    ("The owner SIGKILLed alone, or with its whole process group (Jupyter's kernel restart, a terminal's hangup), "
     "also while a consumer is sending it a report (a usage sample, a second into a task)",
     "a shell task, its children, a daemon it detached and a running Python call all end within 1 s of the owner",
     ["tests/session/test_owner_killed.py::test_tasks_end_within_a_second_of_their_owner",
      "tests/backends/multiprocess/test_faults_local.py::"
      "test_a_consumer_that_finds_its_distributor_gone_when_it_reports_kills_its_task"]),
    ("A task that forks a daemon grandchild (setsid) and exits",
     "the daemon is killed when the task ends, on cancel and on stop",
     ["tests/backends/multiprocess/test_multiprocess.py::test_daemons_that_escape_their_group_are_killed"]),
    ("A task that ignores SIGTERM",
     "terminate escalates to SIGKILL after the grace period; reported K",
     ["tests/backends/multiprocess/test_multiprocess.py::test_terminate_escalates_to_sigkill"]),
    ("Cancel of running, queued and just-submitted tasks",
     "running trees are killed; queued tasks never start",
     ["tests/backends/multiprocess/test_multiprocess.py::test_terminate_kills_the_whole_running_tree",
      "tests/backends/multiprocess/test_multiprocess.py::test_queued_tasks_cancelled_never_start",
      "tests/backends/multiprocess/test_multiprocess.py::test_cancel_right_after_submit_never_leaves_it_running"]),
    ("stop() with tasks running", "returns within 1 s, running tasks reported K, no process left",
     ["tests/backends/multiprocess/test_multiprocess.py::test_stop_is_fast_and_leaves_nothing"]),
    ("A task writing 100 MB of stdout", "all of it reaches its log file; the kernel's memory does not grow",
     ["tests/backends/multiprocess/test_faults_local.py::test_100_mb_of_stdout_goes_to_the_file_not_to_memory"]),
    ("The log folder removed mid-run", "running tasks finish; later tasks recreate it",
     ["tests/backends/multiprocess/test_faults_local.py::test_log_folder_removed_mid_run"]),
    ("The log folder read-only", "tasks that cannot open their logs are queueing errors (W) with the reason; others run",
     ["tests/backends/multiprocess/test_faults_local.py::test_read_only_log_folder_gives_queueing_errors_and_loses_nothing"]),
    ("The disk full (a 256 KB tmpfs)", "the task fails with its own error (E), the next tasks run",
     ["tests/backends/multiprocess/test_faults_local.py::test_full_disk"]),
    ("The registry locked by another process", "writes wait (busy timeout) and land; the registry opens afterwards",
     ["tests/backends/multiprocess/test_faults_local.py::test_registry_locked_by_another_process",
      "tests/session/test_registry.py::test_a_second_writer_waits_instead_of_failing"]),
    ("A submit SIGKILLed at a random moment (12 rounds, real processes)",
     "the job exists whole (each step prints its own parameter) or not at all; a row whose scripts are missing never runs: it fails with one line",
     ["tests/session/test_submit_atomic.py"]),
    ("The registry on a read-only or full file system (a tmpfs the test mounts, as root)",
     "status, logs and attach() read it read-only; one line says what cannot be done; submit/kill/retry refuse in one line",
     ["tests/session/test_disk_faults.py::test_a_registry_that_cannot_be_written_can_still_be_inspected"]),
    ("The disk filling up under a session (a tmpfs the test mounts, as root)",
     "\"disk full\" where it happened (submit: nothing left of it; a function's result; close() does not raise); one warning, not one per poll; what ended meanwhile is written once there is space",
     ["tests/session/test_disk_faults.py::test_a_submit_on_a_full_disk_says_so_and_leaves_no_job",
      "tests/session/test_disk_faults.py::test_what_ends_while_the_disk_is_full_is_recorded_once_space_is_back",
      "tests/session/test_disk_faults.py::test_close_on_a_full_disk_warns_and_does_not_raise",
      "tests/session/test_disk_faults.py::test_a_result_that_cannot_be_written_is_a_full_disk_not_a_pickling_error"]),
    ("slurmctld restarted mid-array", "the array completes and stays tracked",
     ["tests/backends/slurm/test_slurm.py::test_the_array_completes_and_is_tracked_across_a_slurmctld_restart"]),
    ("Malformed input (magics, Python API, CLI, resource strings)", "one clear line, nothing submitted",
     ["tests/views/test_bad_input.py", "tests/protocol/test_resources.py", "tests/views/test_magics.py"]),
    ("Shell injection through parameters, names", "values are data, never code (hypothesis property tests)",
     ["tests/session/test_sweep.py", "tests/protocol/test_resources.py::test_no_task_name_leaves_the_log_folder",
      "tests/backends/multiprocess/test_multiprocess.py::test_tasks_inherit_no_descriptor_of_the_distributor"]),
    ("HTML/JS in logs, names, parameters", "shown as text in the widget and the HTML repr",
     ["tests/views/test_widget.py", "tests/browser"]),
    ("Network listeners", "nbdist opens none (distributor, consumers, tasks, session)",
     ["tests/backends/multiprocess/test_faults_local.py::test_no_network_listener",
      "tests/backends/multiprocess/test_faults_local.py::test_a_session_opens_no_listener_either"]),
]


def run_tests(prefixes: list[str], junit: Path) -> dict[str, str]:
    """Run the tests, return ``{node id: "passed" | "failed" | "skipped"}``."""
    existing = [p for p in prefixes if Path(ROOT, p.split("::")[0]).exists()]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *existing],
                   cwd=ROOT, check=False)
    results: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        node = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        results[node] = outcome
    return results


def summarize(prefixes: list[str], results: dict[str, str]) -> str:
    matched = [outcome for node, outcome in results.items() if any(node.startswith(p) for p in prefixes)]
    if not matched:
        return "not run"
    passed = matched.count("passed")
    if passed == len(matched):
        return f"pass ({passed} test{'s' if passed > 1 else ''})"
    return f"**{len(matched) - passed} of {len(matched)} not passed**"


PLATFORMS = """
## Platforms

The promises above are Linux's. The portable process handling (macOS, the BSDs; `NBDIST_PORTABLE=1` on Linux,
which `make test` runs the local backend's and the session's suites with, fault tests included) keeps them but these:

| promise | Linux | portable (macOS, BSD) |
|---|---|---|
| a daemon a task detaches (`setsid`) dies with the task | always: consumers are child subreapers, orphans come back to them | when a usage sample (every second) or the kill saw it while it was still the task's descendant; a task that double-forks and exits within a second escapes |
| a task lost with its consumer is killed | by its `NBDIST_DISTRIBUTOR_ID`, which every descendant inherits | the same where the system shows other processes' environments (the BSDs; not recent macOS): there only its process group |
| a warm worker ends with its consumer, even mid-call | the kernel's parent-death signal | a thread sees the consumer's socket hang up, then kills the worker's group |
| peak RSS of one warm call | the worker's high-water mark, reset before each call | the worker's whole-life peak |
| the owner's death ends its tasks within a second | yes | yes (the consumer sees its pipe close on both) |
| speed: 1,000 `echo` tasks as one array, parallelism 2 (`benchmarks/throughput.py`, beside `xargs -P 2` in the same run) | 1.01 × `xargs` | 1.89 × `xargs` (a waiting thread per task and psutil's tree walks; about 0.6 ms more per task) |
| speed: the same as 1,000 single submits (Jobmon's way), from creating the distributor until `stop()` returned | 1.12–1.14 × `xargs` (a consumer starts in about 28 ms) | not measured |"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-steps", type=int, default=100_000)
    parser.add_argument("--skip-slurm", action="store_true", help="do not run the Slurm rows (no cluster here)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbdist-reliability-"))

    prefixes = sorted({p for _, _, tests in SCENARIOS for p in tests if not (args.skip_slurm and "slurm" in p)})
    results = run_tests(prefixes, work / "junit.xml")

    from throughput import latencies

    from nbdist.multiprocess import MultiprocessDistributor

    kills, stops = [], []
    for _ in range(5):
        distributor = MultiprocessDistributor("latency", parallelism=2, log_dir=str(work / "latency"))
        distributor.start()
        kill_s, stop_s = latencies(distributor)
        kills.append(kill_s)
        stops.append(stop_s)
    load_json = work / "load.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_100k.py"), "--n", str(args.load_steps),
                    "--json", str(load_json)], cwd=ROOT, check=True)
    load = json.loads(load_json.read_text())
    cases = sum(1 for node in results if node.startswith(("tests/views/test_bad_input.py", "tests/protocol/test_resources.py")))

    lines = [
        "# Reliability",
        "",
        f"Regenerated by `scripts/reliability_report.py` on {datetime.date.today()} "
        f"({platform.system()} {platform.machine()}, {os.cpu_count()} cores). Every row names the tests that prove it;",
        "the result is what that run saw.",
        "",
        "| scenario | what nbdist promises | proved by | result |",
        "|---|---|---|---|",
    ]
    for scenario, promise, tests in SCENARIOS:
        names = ", ".join(f"`{t.split('::')[-1]}`" for t in tests)
        lines.append(f"| {scenario} | {promise} | {names} | {summarize(tests, results)} |")
    lines += PLATFORMS.splitlines()
    lines += [
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---|",
        f"| terminate → task reported killed (median of 5, running `sleep`) | {sorted(kills)[2] * 1000:.1f} ms |",
        f"| `stop()` with 2 tasks running (median of 5) | {sorted(stops)[2] * 1000:.0f} ms |",
        f"| load: {load['n']:,} steps of `true`, parallelism 2 | {load['nbdist_s']} s, {load['ratio']} × `xargs -P 2` ({load['xargs_s']} s) |",
        f"| load: exit codes recorded / expected | {load['exit_codes']:,} / {load['n']:,} (stdout files: {load['stdout_files']:,}) |",
        f"| load: submitting the array | {load['submit_s'] * 1000:.0f} ms |",
        f"| load: memory growth of the distributor's process | {load['rss_growth_mb']} MB |",
        f"| bad-input and resource-string cases tried | {cases} |",
    ]
    target = ROOT / "docs" / "RELIABILITY.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
