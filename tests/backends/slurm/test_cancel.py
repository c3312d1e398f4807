"""Which kills are one ``scancel`` and which are cancel markers (:mod:`nbdist.backends.slurm.cancel`). Units:
no Slurm (the real kills are in ``test_slurm_sites.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from nbdist.backends._table import TaskTable
from nbdist.backends.slurm import cancel
from nbdist.backends.slurm.arrays import ArrayPlan
from nbdist.backends.slurm.task import SlurmTask
from nbdist.cluster_protocol import TaskInstanceStatus as Status
from nbdist.cluster_protocol.naming import cancel_marker_path, exit_info_path
from nbdist.cluster_protocol.resources import Resources


def array(tmp_path, length=6, per_task=3, steps=None):
    """A submitted array (job 100) of ``length`` steps, ``per_task`` a Slurm task; its table tracks ``steps``."""
    plan = ArrayPlan(length, per_task, 1001, None)
    plan.submitted(plan.next_call(0), "100")
    table: TaskTable[SlurmTask] = TaskTable()
    resources = Resources.parse({}, site_options=True)
    table.add(SlurmTask(f"100_{step}", "pack", resources, str(tmp_path), plan.slurm_id(step), plan)
              for step in (range(length) if steps is None else steps))
    return table


def test_one_step_of_a_pack_is_marked_and_a_whole_pack_is_scancelled(tmp_path):
    tasks = array(tmp_path)  # Slurm tasks 100_0 (steps 0-2) and 100_1 (steps 3-5)
    live = tasks.live
    scancel, marked = cancel.split([live["100_1"], live["100_3"], live["100_4"], live["100_5"]], tasks)
    assert scancel == {"100_1"} and [record.distributor_id for record in marked] == ["100_1"]


def test_finished_pack_mates_do_not_count(tmp_path):
    tasks = array(tmp_path)
    tasks.end(tasks.live["100_0"], Status.DONE, "exit code 0")
    # Step 1 ended too, but the poller has not seen it yet: its exit info says so.
    with open(exit_info_path(str(tmp_path), "pack", "100_1"), "w") as handle:
        json.dump({"status": "D"}, handle)
    assert cancel.split([tasks.live["100_2"]], tasks) == ({"100_0"}, [])


def test_a_pack_whose_last_running_steps_are_killed_one_by_one_ends_with_scancel(tmp_path):
    tasks = array(tmp_path)
    tasks.live["100_1"].cancel_requested = True  # marked by an earlier kill
    assert cancel.split([tasks.live["100_0"], tasks.live["100_2"]], tasks) == ({"100_0"}, [])


def test_an_untracked_pack_mate_counts_unless_its_exit_info_is_there(tmp_path):
    tasks = array(tmp_path, steps=[1, 2])  # adopted: step 0 is not in this distributor's table
    targets = [tasks.live["100_1"], tasks.live["100_2"]]
    assert cancel.split(targets, tasks)[0] == set()
    with open(exit_info_path(str(tmp_path), "pack", "100_0"), "w") as handle:
        json.dump({"status": "D"}, handle)
    assert cancel.split(targets, tasks)[0] == {"100_0"}


def test_unpacked_steps_and_held_ones_are_not_marked(tmp_path):
    tasks = array(tmp_path, length=3, per_task=1)
    assert cancel.split(list(tasks.live.values()), tasks) == ({"100_0", "100_1", "100_2"}, [])
    held = tasks.live["100_0"]
    held.slurm_id = None
    assert cancel.split([held], tasks) == (set(), [])


def test_markers_land_where_the_worker_looks_and_a_failed_one_falls_back_to_scancel(tmp_path):
    tasks = array(tmp_path)
    step = tasks.live["100_1"]
    assert cancel.write_markers([step]) == set()
    assert json.loads(Path(cancel_marker_path(str(tmp_path), "pack", "100_1")).read_text())["requested"] > 0
    (tmp_path / "file").write_text("")
    step.stdout_dir = str(tmp_path / "file" / "logs")  # not a folder: the marker cannot be written
    assert cancel.write_markers([step]) == {"100_0"}
