"""A task sees the environment of the process that owns the distributor, not the consumer's plumbing."""

from __future__ import annotations

import time

from nbdist.multiprocess import MultiprocessDistributor


def _output_of(tmp_path, command: str) -> str:
    logs = str(tmp_path)
    with MultiprocessDistributor("local", parallelism=1, log_dir=logs) as distributor:
        did = distributor.submit_to_batch_distributor(command, "env", {"stdout": logs, "stderr": logs})
        deadline = time.monotonic() + 30
        while distributor.get_submitted_or_running([did]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        out, _err = distributor.log_paths(did)
        with open(out) as handle:
            return handle.read()


def test_a_task_gets_the_distributors_pythonpath_not_nbdists_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/mine")
    assert _output_of(tmp_path, 'echo "[$PYTHONPATH] [${NBDIST_TASK_PYTHONPATH-unset}]"') == "[/opt/mine] [unset]\n"


def test_a_task_has_no_pythonpath_when_the_distributor_had_none(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert _output_of(tmp_path, 'echo "[${PYTHONPATH-unset}]"') == "[unset]\n"
