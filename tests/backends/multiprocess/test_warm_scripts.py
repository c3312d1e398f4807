"""Python scripts in the script form (Jobmon's worker, when Jobmon drives nbdist) run warm: forked.

A consumer forks itself and runs the script with ``runpy`` as ``__main__``, with the ``sys.argv`` and
``sys.path[0]`` its own interpreter would give it; the modules it needed are imported by the
consumer for the next run — but never one that starts a thread, nor a module that imports one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from nbdist.cluster_protocol.scripts import script_command
from nbdist.multiprocess import MultiprocessDistributor

REPORT = """\
import json, sys
seen = {name: name in sys.modules for name in ("plain_helper", "needs_spinner", "spins_a_thread")}
import plain_helper, needs_spinner
cmdline = open("/proc/self/cmdline").read()
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__, "cmdline": cmdline, "seen": seen}))
sys.exit(3)
"""


def _run(distributor: MultiprocessDistributor, command: str, logs: Path) -> tuple[dict, dict]:
    task = distributor.submit_to_batch_distributor(command, "script", {"stdout": str(logs), "stderr": str(logs)})
    deadline = time.monotonic() + 60
    while distributor.get_submitted_or_running([task]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    report = distributor.get_task_reports([task])[task]
    out, err = distributor.log_paths(task)
    assert Path(out).read_text(), Path(err).read_text()
    return report, json.loads(Path(out).read_text())


def test_a_script_runs_forked_as_main_and_the_consumer_learns_its_safe_imports(tmp_path, monkeypatch):
    site = tmp_path / "site"  # on the tasks' own sys.path (PYTHONPATH): modules the consumer may import
    site.mkdir()
    (site / "spins_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    (site / "needs_spinner.py").write_text("import spins_a_thread\n")
    (site / "plain_helper.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    scripts = tmp_path / "my scripts"
    scripts.mkdir()
    script = scripts / "report.py"
    script.write_text(REPORT)
    logs = tmp_path / "logs"
    with MultiprocessDistributor("warm", parallelism=1, log_dir=str(logs)) as distributor:
        warm = script_command(sys.executable, str(script), ["a b", "--x"])
        first, one = _run(distributor, warm, logs)
        _run(distributor, warm, logs)  # may start before the consumer has learnt (learning yields to a start)
        second, two = _run(distributor, warm, logs)
        cold, three = _run(distributor, f"exec {sys.executable} '{script}' 'a b' --x", logs)
    for report in (first, second, cold):
        assert (report["status"], report["exit_code"]) == ("E", 3)
    # What the script sees is what its own interpreter gives it.
    for seen in (one, two, three):
        assert (seen["argv"], seen["path0"], seen["name"]) == ([str(script), "a b", "--x"], str(scripts), "__main__")
    # Forked: the process is the consumer's image, never exec'd; the plain command is a new interpreter.
    assert "Consumer.serve" in one["cmdline"] and "Consumer.serve" in two["cmdline"]
    assert "Consumer.serve" not in three["cmdline"] and str(script) in three["cmdline"]
    # The first run imported everything itself; a later one starts with the safe module, never with the
    # module that starts a thread or the one that imports it (the consumer stays single-threaded).
    assert one["seen"] == {"plain_helper": False, "needs_spinner": False, "spins_a_thread": False}
    assert two["seen"] == {"plain_helper": True, "needs_spinner": False, "spins_a_thread": False}
