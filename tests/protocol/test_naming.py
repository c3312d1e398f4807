"""The one naming rule: log files ``{name}.o{id}`` / ``.e`` / ``.x`` and ids ``"{job}_{step}"``."""

from __future__ import annotations

import json

import pytest

from nbdist.cluster_protocol.naming import array_id, exit_info_path, log_file, log_stem, split_id, write_json_atomic


@pytest.mark.parametrize("job, step, text", [("12", None, "12"), ("12", 3, "12_3"), ("10073wfd.1", 0, "10073wfd.1_0")])
def test_array_ids_round_trip(job, step, text):
    assert array_id(job, step) == text
    assert split_id(text) == (job, step)


def test_a_name_with_an_underscore_is_not_a_step():
    assert split_id("abc_x") == ("abc_x", None)


def test_log_files_are_named_once_for_every_backend():
    assert log_file("/logs", "my job", "o", "7_1") == "/logs/my_job.o7_1"
    assert log_file("/logs", "my job", "e", "7_1", stem=log_stem("my job")) == "/logs/my_job.e7_1"
    assert exit_info_path("/logs", "my job", "7") == "/logs/my_job.x7"


def test_json_is_written_whole(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(str(path), {"a": 1})
    write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
