"""A real Jobmon workflow on cluster ``nbdist``; run by the Jobmon venv's Python against a local server.

Prints one JSON object: the workflow run's status, and per task its final status, the status of
each of its task instances, their distributor ids, requested memory and error-log messages, and
the command line of the process that ran Jobmon's worker for task ``one``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from jobmon.client.api import Tool
from sqlalchemy import create_engine, text

WORKER_CMDLINE = os.path.abspath("worker-cmdline.txt")
# The shell's parent is Jobmon's worker: a new interpreter running its entry point script.
ONE = f"echo one; tr '\\0' ' ' < /proc/$PPID/cmdline > {shlex.quote(WORKER_CMDLINE)}"
# Log folders the task names: one that does not exist yet (made for it), one that cannot be made.
NEW_LOGS = os.path.abspath("new-logs/deeper")
BLOCKED_LOGS = os.path.abspath("a-file/logs")
HOG = f"{sys.executable} -c \"b = b'x' * 1_300_000_000; import time; time.sleep(2)\""


def main() -> None:
    tool = Tool(name="nbdist_workflow_test")
    workflow = tool.create_workflow(
        name="nbdist workflow", default_cluster_name="nbdist",
        default_compute_resources_set={"nbdist": {"queue": "null.q", "cores": 1, "runtime": 120,
                                                  "project": "proj_ignored_by_nbdist"}})
    plain = tool.get_task_template(template_name="plain", command_template="{cmd}", node_args=["cmd"])
    step = tool.get_task_template(template_name="step", command_template="echo step {i}", node_args=["i"])
    tasks = {
        "one": plain.create_task(name="one", cmd=ONE, max_attempts=1),
        "two": plain.create_task(name="two", cmd="echo two; echo to-stderr >&2", max_attempts=1),
        "fails": plain.create_task(name="fails", cmd="echo failing >&2; exit 3", max_attempts=1),
        "hog": plain.create_task(name="hog", cmd=HOG, max_attempts=3, compute_resources={"memory": 1},
                                 resource_scales={"memory": 1.0}),
        "cores": plain.create_task(name="cores", cmd="echo never 1", max_attempts=1, compute_resources={"cores": 99}),
        "runtime": plain.create_task(name="runtime", cmd="echo never 2", max_attempts=1, compute_resources={"runtime": 0}),
    }
    with open("a-file", "w"):
        pass
    tasks["logs"] = plain.create_task(name="logs", cmd="echo into a new folder", max_attempts=1,
                                      compute_resources={"stdout": NEW_LOGS, "stderr": NEW_LOGS})
    tasks["blocked"] = plain.create_task(name="blocked", cmd="echo never 3", max_attempts=1,
                                         compute_resources={"stdout": BLOCKED_LOGS, "stderr": BLOCKED_LOGS})
    steps = step.create_tasks(i=list(range(5)), max_attempts=1)
    after = plain.create_task(name="after", cmd="echo after the array", upstream_tasks=steps, max_attempts=1)
    workflow.add_tasks([*tasks.values(), *steps, after])
    status = workflow.run(fail_fast=False, seconds_until_timeout=240)

    engine = create_engine(os.environ["JOBMON__DB__SQLALCHEMY_DATABASE_URI"])
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.name, t.status, ti.id, ti.status, ti.distributor_id, tr.requested_resources, ti.stdout "
            "FROM task t JOIN task_instance ti ON ti.task_id = t.id "
            "LEFT JOIN task_resources tr ON tr.id = ti.task_resources_id ORDER BY ti.id")).all()
        errors = conn.execute(text("SELECT task_instance_id, description FROM task_instance_error_log")).all()
    engine.dispose()
    messages: dict[int, list[str]] = {}
    for ti_id, description in errors:
        messages.setdefault(ti_id, []).append(description)
    report: dict[str, dict] = {}
    for name, task_status, ti_id, ti_status, distributor_id, resources, stdout in rows:
        entry = report.setdefault(name, {"status": task_status, "instances": []})
        entry["instances"].append({"status": ti_status, "distributor_id": distributor_id, "resources": resources,
                                   "stdout": stdout, "errors": messages.get(ti_id, [])})
    with open(WORKER_CMDLINE) as handle:
        worker_cmdline = handle.read()
    print(json.dumps({"workflow_run_status": status, "tasks": report, "worker_cmdline": worker_cmdline}))


if __name__ == "__main__":
    main()
