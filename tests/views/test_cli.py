"""The nbdist CLI on a real registry, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from nbdist import Session, State
from nbdist.views import render
from nbdist.views.cli import main

NBDIST = os.path.join(os.path.dirname(sys.executable), "nbdist")


def test_run_array_reports_progress_and_fails_if_a_step_failed(tmp_path, capsys):
    root = str(tmp_path / "root")
    code = main(["--root", root, "run", "--array", "0-3", "--name", "demo", "--",
                 "echo hi $NBDIST_STEP; test $NBDIST_STEP -ne 2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "demo: 4/4 finished · done 3 · failed 1" in captured.err
    assert "1 × FAILED: exit code 1 (step 2)" in captured.err
    assert main(["--root", root, "run", "--name", "fine", "--", "true"]) == 0


def test_run_keeps_the_quoting_of_argv_words(tmp_path, capsys):
    root = str(tmp_path / "root")
    assert main(["--root", root, "run", "--name", "argv", "--", sys.executable, "-c", "print('a  b'); print(1)"]) == 0
    assert main(["--root", root, "run", "--name", "line", "--", "echo 'c  d' | tr c e"]) == 0
    assert capsys.readouterr().out == "a  b\n1\ne  d\n"  # run streams a job's output
    assert main(["--root", root, "logs", "argv"]) == 0
    assert capsys.readouterr().out == "a  b\n1\n"
    assert main(["--root", root, "logs", "line"]) == 0
    assert capsys.readouterr().out == "e  d\n"


def test_status_and_logs(tmp_path, capsys):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as session:
        session.submit("echo one; echo two; echo bad >&2", name="job").wait(10)
        session.array("echo step $NBDIST_STEP; exit {{step}}", steps=2, name="arr").wait(10)
    assert main(["--root", root, "status"]) == 0
    listing = capsys.readouterr().out
    header, newest, older = listing.splitlines()
    assert header.split()[:2] == ["id", "submitted"] and newest.split()[0] == "2" and older.split()[0] == "1"
    assert newest.split()[3:] == ["array", "arr", "2", "DONE", "1", "FAILED", "1"]
    assert main(["--root", root, "status", "arr"]) == 0
    detail = capsys.readouterr().out
    assert "array arr" in detail and "exit code 1" in detail and "failed ×1 (step 1)" in detail
    # The terminal draws what the notebook draws: the same functions of nbdist.render.
    with Session(root=root) as session:
        session.attach(take_over=False)
        snapshots = [session.snapshot(handle, page_size=1, tail_lines=0) for handle in session.jobs()]
        assert listing == render.status_text(snapshots) + "\n"
        assert detail == render.snapshot_text(session.snapshot("arr")) + "\n"
    assert main(["--root", root, "logs", "job", "--tail", "1"]) == 0
    assert capsys.readouterr().out == "two\n"
    assert main(["--root", root, "logs", "job", "--err"]) == 0
    assert capsys.readouterr().out == "bad\n"
    assert main(["--root", root, "logs", "arr:1"]) == 0
    assert capsys.readouterr().out == "step 1\n"
    assert main(["--root", root, "logs", "nope"]) == 2
    assert "no job or array named 'nope'" in capsys.readouterr().err


def test_kill_from_the_cli_reaches_the_owning_process(tmp_path, capsys):
    root = str(tmp_path / "root")
    runner = subprocess.Popen([NBDIST, "--root", root, "run", "--name", "sleepy", "--", "sleep 60"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            main(["--root", root, "status"])
            if "RUNNING" in capsys.readouterr().out:
                break
            time.sleep(0.1)
        assert main(["--root", root, "kill", "sleepy"]) == 0
        assert capsys.readouterr().out == "killed sleepy (id 1) (asked the kernel that runs it), which was RUNNING\n"
        assert runner.wait(10) == 1
        assert "KILLED" in runner.stderr.read()
    finally:
        runner.kill()
        runner.stderr.close()


def test_retry_from_the_cli_runs_failed_steps_again(tmp_path, capsys):
    root = str(tmp_path / "root")
    marker = tmp_path / "fixed"
    with Session(parallelism=2, root=root) as session:
        assert session.array(f"test $NBDIST_STEP = 0 || test -e {marker}", steps=3, name="flaky").wait(10) \
            is State.FAILED
    marker.touch()
    assert main(["--root", root, "retry", "flaky"]) == 0
    assert "flaky: 3/3 finished · done 3" in capsys.readouterr().err
    assert main(["--root", root, "retry", "flaky"]) == 0
    assert capsys.readouterr().out.startswith("nothing to retry in flaky")


def test_console_script_and_bad_input(tmp_path):
    done = subprocess.run([NBDIST, "--root", str(tmp_path / "r"), "run", "--memory", "lots", "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    expected = "nbdist: memory must be like '512M', '2G' or a number of MB, not 'lots'"
    assert done.stderr.strip().splitlines() == [expected]
    assert subprocess.run([NBDIST, "--root", str(tmp_path / "r"), "status"], capture_output=True,
                          timeout=30).returncode == 0


@pytest.mark.parametrize("argv", [["run"], ["run", "--array", "x", "--", "true"],
                                  ["run", "--array", "0-9999999999", "--", "true"]])
def test_run_usage_errors(tmp_path, capsys, argv):
    assert main(["--root", str(tmp_path / "r"), *argv]) == 2
    assert capsys.readouterr().err.startswith("nbdist: ")


def test_logs_follow_prints_until_the_job_ends(tmp_path, capsys):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as session:
        job = session.submit("for i in 1 2 3; do echo line $i; sleep 0.2; done", name="talker")
        deadline = time.monotonic() + 10
        while job.state is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert main(["--root", root, "logs", "talker", "--follow"]) == 0
        assert job.done()
    assert capsys.readouterr().out == "line 1\nline 2\nline 3\n"


def test_looking_at_an_empty_folder_creates_nothing(tmp_path, capsys):
    root = tmp_path / "nothing-here"
    assert main(["--root", str(root), "status"]) == 0
    assert "no jobs in" in capsys.readouterr().out
    assert main(["--root", str(root), "logs", "x"]) == 2
    assert "no registry in" in capsys.readouterr().err
    assert not root.exists()


def test_run_streams_a_jobs_output_and_groups_failures_with_the_logs_command(tmp_path, capsys):
    """Issue 14 point 10: the output of a single job appears; a failure says its last stderr line
    and which `nbdist logs` command reads more, not a raw path."""
    root = str(tmp_path / "root")
    assert main(["--root", root, "run", "--name", "echo", "--", "echo hi"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "hi\n"
    assert main(["--root", root, "run", "--name", "failing", "--", "echo detail; echo 'ValueError: boom' >&2; exit 3"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "detail\n"
    assert "nbdist: 1 × ValueError: boom" in captured.err
    assert f"nbdist: more: nbdist --root {os.path.abspath(root)} logs failing --err" in captured.err
    assert "/logs/" not in captured.err  # no raw path
    code = main(["--root", root, "run", "--name", "arr", "--array", "6", "--",
                 "test $NBDIST_STEP = 0 && { echo 'KeyError: x' >&2; exit 1; }; sleep 1; test $NBDIST_STEP -lt 4 || "
                 "{ echo 'KeyError: x' >&2; exit 1; }"])
    captured = capsys.readouterr()
    assert code == 1
    # The array's first failure is shown when it happens, with its stderr; then the groups.
    assert "nbdist: step 0 failed: KeyError: x\n  | KeyError: x\n" in captured.err
    assert "nbdist: 3 × KeyError: x (steps 0, 4, 5)" in captured.err
    assert "logs arr:0 --err" in captured.err


def test_kill_retry_forget_clean_say_what_they_did(tmp_path, capsys):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as session:
        flaky = session.array("exit $((NBDIST_STEP % 2))", steps=4, name="flaky")
        flaky.wait(20)
        old = session.submit("true", name="old")
        old.wait(10)
    assert main(["--root", root, "retry", "flaky"]) == 1  # follows the retried steps, which fail again
    out = capsys.readouterr().out
    assert out.startswith("retrying 2 of 4 steps of flaky (id 1): steps 1, 3\n"), out
    assert main(["--root", root, "kill", "flaky"]) == 0
    assert capsys.readouterr().out.startswith("nothing to kill: every step of flaky (id 1) had ended")
    # clean and forget never delete a live job's files.
    live = subprocess.Popen([NBDIST, "--root", root, "run", "--name", "live", "--", "sleep 30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with Session(root=root) as reader:
                reader.attach(take_over=False)
                try:
                    if reader.get("live").state is State.RUNNING:
                        break
                except KeyError:
                    pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert main(["--root", root, "forget", "live"]) == 2
        assert "kill it first" in capsys.readouterr().err
        logs = os.path.join(root, "logs")
        assert main(["--root", root, "clean", "--older-than", "0s"]) == 0
        assert capsys.readouterr().out == "forgot 2 jobs that ended over 0s ago: 14 files removed\n"
        assert sorted(os.listdir(logs)) == ["live"]
        assert main(["--root", root, "status", "--all"]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert len(listing) == 2 and listing[1].split()[4] == "live"
    finally:
        live.terminate()
        live.wait(20)
    assert main(["--root", root, "clean", "--older-than", "7x"]) == 2
    assert "--older-than '7x'" in capsys.readouterr().err


def test_status_without_all_keeps_unfinished_and_recent(tmp_path, capsys):
    root = str(tmp_path / "root")
    with Session(parallelism=2, root=root) as session:
        for i in range(render.RECENT_FINISHED + 3):
            session.submit("true", name=f"j{i}").wait(10)
    assert main(["--root", root, "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + render.RECENT_FINISHED + 1
    assert lines[1].split()[4] == f"j{render.RECENT_FINISHED + 2}" and lines[-1] == "… and 3 older finished (--all shows them)"
    assert main(["--root", root, "status", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + render.RECENT_FINISHED + 3
