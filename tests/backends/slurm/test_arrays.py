"""Arrays of any length as sbatch calls (:mod:`nbdist.backends.slurm.arrays`), and the refusals of a site's
submit limits at the CLI boundary (sbatch's exact texts, as Slurm 22.05 prints them). Units: no Slurm."""

from __future__ import annotations

import subprocess

import pytest

from nbdist.backends.slurm import cli
from nbdist.backends.slurm.arrays import ArrayPlan, default_steps_per_task, submit_limited
from nbdist.backends.slurm.submitter import Submitter, slurm_ids_of
from nbdist.cluster_protocol.resources import Resources

# What sbatch prints on stderr when an association's or a QOS's MaxSubmitJobs is reached.
ASSOC_LIMIT = ("sbatch: error: AssocMaxSubmitJobLimit\n"
               "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
               "(job submit limit, user's size and/or time limits)\n")
QOS_LIMIT = ("sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
             "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
             "(job submit limit, user's size and/or time limits)\n")
# An array whose tasks would pass MaxJobCount (the controller's job records), below MaxArraySize.
JOB_COUNT = "sbatch: error: Batch job submission failed: Invalid job array specification\n"


@pytest.mark.parametrize(("length", "per_task", "size", "calls"), [
    (1500, 1, 1001, [(0, 1001), (1001, 499)]),
    (10_000, 4, 1001, [(0, 1001), (1001, 1001), (2002, 498)]),
    (10, 4, 1001, [(0, 3)]),
    (7, 1, 3, [(0, 3), (3, 3), (6, 1)]),
])
def test_an_array_becomes_as_many_calls_as_max_array_size_needs(length, per_task, size, calls):
    plan = ArrayPlan(length, per_task, size, None)
    made = []
    while (call := plan.next_call(0)) is not None:
        made.append((call.offset, call.tasks))
        plan.submitted(call, str(100 + len(made)))
    assert made == calls
    ids = slurm_ids_of(plan, plan.calls)
    assert sorted(ids) == list(range(length))  # every step runs in exactly one Slurm task
    assert ids[length - 1] == plan.slurm_id(length - 1)
    assert all(call.base in (None, "101") for call in [plan.next_call(0)] if call)


def test_max_concurrent_holds_across_calls_and_throttles_rise_as_calls_drain():
    plan = ArrayPlan(25, 1, 10, 3)
    first = plan.next_call(0)
    assert (first.tasks, first.throttle) == (10, 3)
    plan.submitted(first, "7")
    assert plan.next_call(10) is None  # 10 unfinished tasks: no budget for a second call
    second = plan.next_call(1)  # 9 ended: the second call gets what is left
    assert (second.offset, second.throttle, second.base) == (10, 2, "7")
    plan.submitted(second, "8")
    assert list(plan.throttles({"8": 10})) == [(plan.calls[1], 3)]  # the first drained: all 3 to the second
    assert list(plan.throttles({"7": 1, "8": 10})) == []  # 1 + 2: nothing may rise


def test_the_default_packs_only_arrays_that_would_crowd_the_controller():
    assert default_steps_per_task(1000, 10_000) == 1
    assert default_steps_per_task(2500, 10_000) == 1
    assert default_steps_per_task(10_000, 10_000) == 4
    assert default_steps_per_task(100_000, 10_000) == 40


@pytest.mark.parametrize(("stderr", "tasks", "limited"), [
    (ASSOC_LIMIT, 10, True), (QOS_LIMIT, 1, True), (JOB_COUNT, 500, True), (JOB_COUNT, 1001, False),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available\n", 1, False),
])
def test_submit_limit_refusals_are_told_from_errors(stderr, tasks, limited):
    assert submit_limited(cli.error_text(stderr), tasks, 1001) is limited


def fake_sbatch(monkeypatch, accept):
    """sbatch at the CLI boundary: ``accept(tasks)`` says whether a call of that many tasks goes through."""
    calls = []

    def run_cli(argv, input_text=None, env=None):
        tasks = next((int(a.rpartition("-")[2].split("%")[0]) + 1 for a in argv if a.startswith("--array=")), 1)
        calls.append(tasks)
        if accept(tasks):
            return subprocess.CompletedProcess(argv, 0, f"{len(calls)}\n", "")
        return subprocess.CompletedProcess(argv, 1, "", ASSOC_LIMIT)

    monkeypatch.setattr(cli, "run_cli", run_cli)
    return calls


def test_a_submit_limit_halves_the_call_then_holds_the_rest_back(monkeypatch, tmp_path):
    submitter = Submitter(None, str(tmp_path), (), {}, None, (), "/bin/nbdist-worker")
    room = {"left": 6}

    def accept(tasks):  # the site's MaxSubmitJobs: room for 6 more jobs (array tasks count one each)
        if tasks > room["left"]:
            return False
        room["left"] -= tasks
        return True

    calls = fake_sbatch(monkeypatch, accept)
    plan = ArrayPlan(20, 1, 1001, None)
    made = submitter.make_calls(plan, "true", "capped", Resources.parse({}), 0)
    # Halved until a call fits, doubled after one does, until a single task no longer fits.
    assert calls == [20, 10, 5, 10, 5, 2, 1, 2, 1]
    assert [c.tasks for c in made] == [5, 1] and plan.next_task == 6
    assert "AssocMaxSubmitJobLimit" in plan.held and not plan.complete
    room["left"] = 100  # jobs finished: the poller tries again and the rest goes out
    made = submitter.make_calls(plan, "true", "capped", Resources.parse({}), 0)
    assert [c.tasks for c in made] == [1, 2, 4, 7] and plan.complete and plan.held is None


def test_a_first_call_refused_at_one_task_submits_nothing(monkeypatch, tmp_path):
    submitter = Submitter(None, str(tmp_path), (), {}, None, (), "/bin/nbdist-worker")
    fake_sbatch(monkeypatch, lambda tasks: False)
    plan = ArrayPlan(4, 1, 1001, None)
    submitter.make_calls(plan, "true", "none", Resources.parse({}), 0)
    assert plan.base is None and "AssocMaxSubmitJobLimit" in plan.held
