"""Both built-in distributors offer the capabilities the session tests for with isinstance/issubclass,
answer the same queries from one task table, and tell a session how to build them."""

from __future__ import annotations

import os

import pytest

from nbdist.backends.multiprocess.distributor import DEFAULT_PARALLELISM
from nbdist.cluster_protocol import (AdoptingDistributor, ClusterDistributor, RemoteExitInfoNotAvailable,
                                     ReportingDistributor, SessionDefaults)
from nbdist.multiprocess import MultiprocessDistributor
from nbdist.slurm import SlurmDistributor


@pytest.mark.parametrize("cls", [MultiprocessDistributor, SlurmDistributor])
def test_both_report_and_give_session_defaults(cls, tmp_path):
    assert issubclass(cls, ReportingDistributor) and issubclass(cls, SessionDefaults)
    distributor = cls("c", log_dir=str(tmp_path))
    assert isinstance(distributor, ClusterDistributor) and isinstance(distributor, ReportingDistributor)
    assert distributor.cluster_name == "c"
    assert os.path.basename(distributor.worker_node_entry_point) == "nbdist-worker"


def test_only_slurm_adopts():
    assert issubclass(SlurmDistributor, AdoptingDistributor)
    assert not issubclass(MultiprocessDistributor, AdoptingDistributor)


@pytest.mark.parametrize("cls", [MultiprocessDistributor, SlurmDistributor])
def test_an_unknown_id_is_one_error_everywhere(cls, tmp_path):
    distributor = cls("c", log_dir=str(tmp_path))
    for query in (distributor.get_remote_exit_info, distributor.get_usage_stats, distributor.log_paths):
        with pytest.raises(RemoteExitInfoNotAvailable, match="unknown distributor id '123'"):
            query("123")
    assert distributor.get_task_reports(["123"]) == {}
    assert distributor.get_submitted_or_running(["123"]) == set()


def test_multiprocess_session_defaults_are_one_consumer_per_cpu_and_logs_under_the_root():
    assert MultiprocessDistributor.session_defaults("/r", None) == {
        "parallelism": os.cpu_count() or 1, "log_dir": os.path.join("/r", "logs")}
    assert MultiprocessDistributor.session_defaults("/r", 5) == {"parallelism": 5, "log_dir": "/r/logs"}
    assert MultiprocessDistributor.max_cores({"parallelism": 5, "log_dir": "/r/logs"}) == 5
    assert MultiprocessDistributor.max_cores({}) == DEFAULT_PARALLELISM


def test_slurm_leaves_parallelism_and_cores_to_the_cluster():
    assert SlurmDistributor.session_defaults("/r", 4) == {}
    assert SlurmDistributor.max_cores({"partition": "debug"}) is None
