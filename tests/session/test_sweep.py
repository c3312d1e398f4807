"""Sweeps: steps=, over= and {{param}} placeholders; values are always data, never code."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbdist import Session, State
from nbdist.session.sweep import (
    MAX_ARRAY_STEPS,
    expand,
    parse_array_spec,
    placeholders,
    render,
    script_command,
    write_scripts,
)


def test_grid_is_the_cartesian_product():
    sweep = expand("run {{a}} {{b}}", over={"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(sweep) == 6 and list(sweep.steps) == list(range(6))
    assert sweep.params[0] == {"a": 1, "b": "x"} and sweep.params[5] == {"a": 2, "b": "z"}


def test_list_of_dicts_is_one_step_each():
    sweep = expand("run {{a}}", over=[{"a": 1}, {"a": 5}])
    assert sweep.params == [{"a": 1}, {"a": 5}]


def test_dataframe_like_rows_without_pandas():
    class Frame:  # the two things nbdist uses of a DataFrame (pandas is not a dependency)
        columns = ["lr", "depth"]

        def to_dict(self, orient):
            assert orient == "records"
            return [{"lr": 0.1, "depth": 2}, {"lr": 0.01, "depth": 4}]

    sweep = expand("train {{lr}} {{depth}}", over=Frame())
    assert sweep.params[1] == {"lr": 0.01, "depth": 4}


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [
        ("echo {{nope}}", {"over": {"a": [1]}}, "unknown placeholder"),
        ("echo {{a}}", {"over": {"a": [1], "b": [2]}}, "parameter 'b' is not used"),
        ("echo {{a}}", {"over": [{"a": 1}, {"b": 2}]}, "different parameters"),
        ("echo {{a}}", {"over": {"a": []}}, "empty"),
        ("echo {{a}}", {"over": "abc"}, "dict of lists"),
        ("echo", {"steps": 0}, "positive"),
        ("echo", {"steps": [1, 1]}, "unique"),
        ("echo", {"steps": ["a"]}, "integers"),
        ("echo", {}, "steps= "),
        ("echo {{PATH}}", {"over": {"PATH": [1]}}, "reserved"),
        ("echo {{a-b}}", {"over": {"a-b": [1]}}, "identifier"),
        ("echo", {"steps": 3, "over": {"a": [1]}}, "not both"),
    ],
)
def test_bad_sweeps_are_one_clear_error(command, kwargs, message):
    with pytest.raises(ValueError, match=message):
        expand(command, **kwargs)


def test_parameter_used_as_env_var_only_is_fine():
    assert expand("echo $lr ${depth}", over={"lr": [1], "depth": [2]}).params == [{"lr": 1, "depth": 2}]


def test_placeholders_and_render_quote():
    assert placeholders("a {{ x }} {{y}} {{x}}") == ["x", "y"]
    assert render("echo {{x}}", {"x": "a b; c"}) == "echo 'a b; c'"


def test_array_spec_parsing():
    assert parse_array_spec("10") == (range(10), None)
    assert parse_array_spec("0-3,7,10-14:2") == ([0, 1, 2, 3, 7, 10, 12, 14], None)
    assert parse_array_spec("0-99%4")[1] == 4
    with pytest.raises(ValueError, match="array spec"):
        parse_array_spec("a-b")


def test_array_spec_size_is_capped_per_range_before_any_list_is_built():
    assert len(parse_array_spec(f"0-{MAX_ARRAY_STEPS - 1}")[0]) == MAX_ARRAY_STEPS
    for spec in (f"0-{MAX_ARRAY_STEPS}", f"1,0-{MAX_ARRAY_STEPS - 1}", f"0-{MAX_ARRAY_STEPS}%4", f"{MAX_ARRAY_STEPS + 1}"):
        with pytest.raises(ValueError, match=f"more than {MAX_ARRAY_STEPS} steps"):
            parse_array_spec(spec)
    started = time.perf_counter()
    for spec in ("0-9999999999", "0-9999999999999999999:1", "5,0-99999999999", "99999999999999"):
        with pytest.raises(ValueError, match="more than"):
            parse_array_spec(spec)
    assert time.perf_counter() - started < 1


def test_non_contiguous_steps_keep_their_ids():
    assert list(expand("echo", steps=[5, 3, 9]).steps) == [5, 3, 9]
    assert expand("echo", steps=[2, 4, 6]).steps == range(2, 8, 2)


_VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_NASTY = st.sampled_from(["x; rm -rf ~", "$(touch pwned)", "`touch pwned`", "'", '"', "a\nb", "--", "-n", "$HOME",
                          "${IFS}", "\\", "*", "~", "&& touch pwned", "| touch pwned", "> pwned", " "])


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(_NASTY, _VALUES))
def test_placeholder_values_are_data_never_code(value):
    command = "printf '[%s]' {{v}}; printf '<%s>' \"$v\""
    sweep = expand(command, over={"v": ["first", value, "last"]})
    with tempfile.TemporaryDirectory() as scripts, tempfile.TemporaryDirectory() as folder:
        chunk = write_scripts(scripts, command, sweep)  # exactly what a step runs: its file, its case branch
        done = subprocess.run(["/bin/sh", "-c", script_command(scripts, chunk, 1)], cwd=folder, capture_output=True,
                              timeout=10, env={"PATH": os.environ["PATH"], "HOME": folder})
        assert os.listdir(folder) == []  # nothing was created: no command of the value ran
    assert done.returncode == 0
    assert done.stdout.decode() == f"[{value}]<{value}>"


def test_dangerous_values_end_to_end(tmp_path):
    values = ["x; touch pwned1", "$(touch pwned2)", "`touch pwned3`", "a'b\"c", "two words"]
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        arr = session.array("printf '%s' {{v}} > out-$NBDIST_STEP", over={"v": values}, cwd=str(tmp_path),
                            name="nasty")
        assert arr.wait(10) is State.DONE
    for step, value in enumerate(values):
        assert (tmp_path / f"out-{step}").read_text() == value
    assert not [name for name in os.listdir(tmp_path) if name.startswith("pwned")]
    assert not [name for name in os.listdir(tmp_path / "root") if name.startswith("pwned")]


def test_manifest_next_to_the_logs_and_env_vars(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        arr = session.array("echo $lr $depth {{lr}}", over={"lr": [0.1, 0.01], "depth": [3]}, name="grid")
        assert arr.wait(10) is State.DONE
        assert [job.stdout() for job in arr] == ["0.1 3 0.1\n", "0.01 3 0.01\n"]
        manifest = os.path.join(os.path.dirname(arr[0].log_paths.stdout), f"manifest-{arr.id}.json")
        with open(manifest) as handle:
            written = json.load(handle)
        assert written == [
            {"index": 0, "step": 0, "params": {"lr": 0.1, "depth": 3}},
            {"index": 1, "step": 1, "params": {"lr": 0.01, "depth": 3}},
        ]
        assert arr.params == [{"lr": 0.1, "depth": 3}, {"lr": 0.01, "depth": 3}]


def test_bad_sweep_submits_nothing(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        with pytest.raises(ValueError, match="unknown placeholder"):
            session.array("echo {{typo}}", over={"value": [1]})
        with pytest.raises(ValueError, match="placeholders need an array"):
            session.submit("echo {{x}}")
        assert session.jobs() == []
        assert session.registry.jobs() == []


def test_step_placeholder_is_quoted_text_even_inside_quotes(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        arr = session.array("echo 'in{{step}}side' \"dq{{step}}\" {{step}} $NBDIST_STEP", steps=[3, 7], name="q")
        assert arr.wait(10) is State.DONE
        assert [job.stdout() for job in arr] == ["in3side dq3 3 3\n", "in7side dq7 7 7\n"]


def test_sweep_steps_share_script_files_and_retry_with_their_own_values(tmp_path):
    marker = tmp_path / "fixed"
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        arr = session.array(f"echo {{{{word}}}}; test {{{{word}}}} != two || test -e {marker}",
                            over={"word": ["one", "two", "three"]}, name="words")
        assert arr.wait(10) is State.FAILED and [job.step for job in arr.failed()] == [1]
        assert len(os.listdir(os.path.join(session.root, "scripts", arr.id))) == 1  # three steps, one file
        marker.touch()
        arr.retry_failed()
        assert arr.wait(10) is State.DONE
        assert [job.stdout() for job in arr] == ["one\n", "two\n", "three\n"]
