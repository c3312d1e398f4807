"""Resource strings and task names: one definition, clear errors, no path escapes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, strategies as st

from nbdist.cluster_protocol.naming import log_stem
from nbdist.cluster_protocol.resources import (Resources, check_array_length, command_line, format_memory,
                                               format_runtime, parse_memory, parse_runtime, positive_int)


@pytest.mark.parametrize(
    "text, megabytes",
    [("512M", 512), ("2G", 2048), ("1.5GB", 1536), ("300K", 300 / 1024), ("64", 64), (100, 100), ("4gib", 4096), ("1T", 1024**2)],
)
def test_parse_memory(text, megabytes):
    assert parse_memory(text) == pytest.approx(megabytes)


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1:30:00", 5400), ("5:00", 300), ("1-00:00:00", 86400), (45, 45), ("0.5", 0.5), ("3min", 180)],
)
def test_parse_runtime(text, seconds):
    assert parse_runtime(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "0", "1X", "G", True, float("nan"), "1.2.3M"])
def test_bad_memory_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(bad)


@pytest.mark.parametrize("bad", ["", "soon", "-5s", "0", "1w", "1:99:99:99", False, float("inf")])
def test_bad_runtime_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="runtime"):
        parse_runtime(bad)


def test_formatting_round_trips():
    assert format_memory(1536) == "1.5G" and parse_memory(format_memory(1536)) == 1536
    assert format_runtime(5400) == "1h30m" and parse_runtime("1h") == 3600
    assert format_runtime(0.2) == "0s"


def test_resources_parse_all_keys():
    parsed = Resources.parse({"cores": "2", "memory": "1G", "runtime": "1m", "queue": "debug", "stdout": "/o",
                              "stderr": "/e", "env": {"A": 1}, "cwd": "/tmp", "max_concurrent": 3, "after": "j1"},
                             max_cores=4)
    assert (parsed.cores, parsed.memory_mb, parsed.runtime_s, parsed.env, parsed.after) == (2, 1024, 60, {"A": "1"}, ("j1",))
    with pytest.raises(ValueError, match="unknown resource"):
        Resources.parse({"gpu": 1})
    with pytest.raises(ValueError, match="invalid environment variable"):
        Resources.parse({"env": {"A=B": "x"}})


@given(st.text(min_size=0, max_size=300))
def test_no_task_name_leaves_the_log_folder(name):
    stem = log_stem(name)
    assert stem and "/" not in stem and "\0" not in stem and not stem.startswith(".")
    folder = "/logs/job"
    path = os.path.normpath(os.path.join(folder, f"{stem}.o12_3"))
    assert os.path.dirname(path) == folder


@pytest.mark.parametrize("value", [1, 7, 10**6])
def test_positive_int_accepts_positive_ints(value):
    assert positive_int(value, "parallelism") == value


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.0, "2", None])
def test_positive_int_names_what_is_wrong(bad):
    with pytest.raises(ValueError, match=r"^parallelism must be a positive integer, not "):
        positive_int(bad, "parallelism")


def test_every_check_says_the_same():
    for requested, what in [({"cores": 0}, "cores"), ({"cores": "two"}, "cores"), ({"max_concurrent": 0}, "max_concurrent")]:
        with pytest.raises(ValueError, match=f"{what} must be a positive integer"):
            Resources.parse(requested)
    with pytest.raises(ValueError, match="array_length must be a positive integer, not 0"):
        check_array_length(0)
    assert Resources.parse({"cores": " 3 "}).cores == 3 and Resources.parse({"cores": None}).cores == 1


def test_command_line_one_word_is_a_shell_line_several_are_argv():
    assert command_line(["echo $HOME | wc -c"]) == "echo $HOME | wc -c"
    assert command_line(["printf", "%s|", "two words", "$(echo no)"]) == "printf '%s|' 'two words' '$(echo no)'"
