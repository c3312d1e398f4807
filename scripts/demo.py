"""`make demo`: a small array end to end, printing each step's state, exit code and log path."""

from __future__ import annotations

import tempfile
import time

from nbdist.multiprocess import MultiprocessDistributor


def main() -> None:
    log_dir = tempfile.mkdtemp(prefix="nbdist-demo-")
    with MultiprocessDistributor("demo", parallelism=2, log_dir=log_dir) as distributor:
        command = 'echo "step $ARRAY_STEP_ID of job $JOB_ID on $(hostname)"; sleep 0.$ARRAY_STEP_ID; exit $((ARRAY_STEP_ID == 3))'
        ids = distributor.submit_array_to_batch_distributor(command, "demo", {"runtime": "1m"}, 6)
        while distributor.get_submitted_or_running(list(ids.values())):
            time.sleep(0.05)
        reports = distributor.get_task_reports(ids.values())
        print(f"{'step':>4}  {'id':<22} {'state':<5} {'exit':>4}  {'wall s':>6}  log")
        for step, distributor_id in ids.items():
            report = reports[distributor_id]
            stdout, _ = distributor.log_paths(distributor_id)
            print(f"{step:>4}  {distributor_id:<22} {report['status']:<5} {report['exit_code']!s:>4}  "
                  f"{report['usage']['wall_s']:>6.2f}  {stdout}")
            print(f"      └─ {open(stdout).read().strip()}")


if __name__ == "__main__":
    main()
