"""A Jobmon workflow of N one-line tasks on cluster ``nbdist`` vs Jobmon's own ``multiprocess``, side by side.

    .venv/bin/python benchmarks/jobmon_workflow.py [--tasks 1000] [--parallelism 2] [--rounds 1]

One local Jobmon server (SQLite) serves both clusters, each with the same parallelism; the rounds
alternate the clusters, and the ratio ``nbdist / multiprocess`` of wall times (workflow.run from
start to the last task done) is printed: below 1 means nbdist is faster. Needs ``../shared/jobmon``
(the Jobmon venv of ``tests/jobmon`` is built or reused, ~2 min the first time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "jobmon"))

import jobmon_env  # noqa: E402

WORKFLOW = """
import json, time
from jobmon.client.api import Tool
tool = Tool(name="bench")
workflow = tool.create_workflow(name="bench {cluster} {round}", default_cluster_name="{cluster}",
                                default_compute_resources_set={{"{cluster}": {{"queue": "null.q", "cores": 1}}}})
template = tool.get_task_template(template_name="echo", command_template="echo task {{i}}", node_args=["i"])
workflow.add_tasks(template.create_tasks(i=list(range({tasks})), max_attempts=1))
workflow.bind()
start = time.perf_counter()
status = workflow.run(seconds_until_timeout=3600)
print(json.dumps({{"status": status, "wall_s": time.perf_counter() - start}}))
"""


def run_one(jobmon: jobmon_env.LocalJobmon, cluster: str, tasks: int, round_: int) -> float:
    run = jobmon.python_run(WORKFLOW.format(cluster=cluster, tasks=tasks, round=round_), timeout=3700)
    if run.returncode:
        raise RuntimeError(f"{cluster} workflow failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["status"] != "D":
        raise RuntimeError(f"{cluster} workflow ended {result['status']} (tasks failed: see Jobmon's error log)")
    return result["wall_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    archive = jobmon_env.tarball()
    if archive is None:
        print(f"no Jobmon snapshot in {jobmon_env.SHARED_JOBMON}", file=sys.stderr)
        return 2
    root = jobmon_env.jobmon_venv(archive)
    times: dict[str, list[float]] = {"nbdist": [], "multiprocess": []}
    with tempfile.TemporaryDirectory(prefix="nbdist-jobmon-bench-") as folder:
        # Task instances heartbeat every 30 s (Jobmon's default is 90): on a loaded machine a worker
        # that starts slowly must not be triaged. The workflow run syncs every 5 s, so the end of a
        # run is seen within 5 s; the distributor polls every second.
        with jobmon_env.LocalJobmon(root, Path(folder), parallelism=args.parallelism, heartbeat_s=5,
                                    task_heartbeat_s=30) as jobmon:
            same = jobmon.python_run(
                "from sqlalchemy import create_engine, text\n"
                f"e = create_engine({jobmon.db_url!r})\n"
                "with e.begin() as c:\n"
                f"    c.execute(text(\"UPDATE cluster SET connection_parameters = '{{\\\"parallelism\\\": {args.parallelism}}}' "
                "WHERE name = 'multiprocess'\"))\n")
            if same.returncode:
                raise RuntimeError(same.stderr)
            for round_ in range(args.rounds):
                order = ["nbdist", "multiprocess"] if round_ % 2 == 0 else ["multiprocess", "nbdist"]
                for cluster in order:
                    wall = run_one(jobmon, cluster, args.tasks, round_)
                    times[cluster].append(wall)
                    print(f"round {round_ + 1}: {cluster:<12} {args.tasks} tasks in {wall:7.1f} s "
                          f"({1000 * wall / args.tasks:.0f} ms/task)", flush=True)
    nbdist, multiprocess = (statistics.median(times[name]) for name in ("nbdist", "multiprocess"))
    print(f"median: nbdist {nbdist:.1f} s, Jobmon multiprocess {multiprocess:.1f} s, "
          f"ratio nbdist/multiprocess {nbdist / multiprocess:.2f} (parallelism {args.parallelism})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
