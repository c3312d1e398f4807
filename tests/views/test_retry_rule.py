"""One retry rule through every face: the API, ``%nbdist retry``, ``nbdist retry`` and the dashboard's button.

Real processes: an array whose step 0 fails by itself, whose step 1 is killed on purpose while it runs,
and whose step 2 ends DONE. Every face re-runs step 0 only, and steps 0 and 1 when asked to retry
killed steps too (issue 21 point 2: ``Array.retry_failed()`` re-ran the killed step as well).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

import nbdist
from nbdist import Session, State
from nbdist.views.cli import main

# Step 0 fails; step 1 sleeps on its first attempt only (so it can be killed, and a retry of it ends
# DONE at once); step 2 succeeds.
SCRIPT = 'case $NBDIST_STEP in 0) exit 3;; 1) test -e {marker} || {{ touch {marker}; exec sleep 60; }};; esac'
WAIT_S = 30


def failed_and_killed(session: Session, folder: Path, name: str) -> Any:
    """The array: step 0 FAILED, step 1 KILLED by a cancel while it ran, step 2 DONE."""
    marker = folder / f"{name}-slept"
    array = session.array(SCRIPT.format(marker=marker), steps=3, name=name)
    deadline = time.monotonic() + WAIT_S
    while not (marker.exists() and array[1].state is State.RUNNING and array[0].done() and array[2].done()):
        assert time.monotonic() < deadline, array.counts()
        time.sleep(0.02)
    assert array[1].cancel()
    assert array.wait(WAIT_S).is_terminal
    assert [job.state for job in array] == [State.FAILED, State.KILLED, State.DONE]
    return array


def attempts_after_retry(array: Any) -> list[int]:
    """Attempts per step once the retried steps ended (a retried step 0 fails again at once)."""
    deadline = time.monotonic() + WAIT_S
    while not (len(array[0].attempts) == 2 and array.done()):
        assert time.monotonic() < deadline, [len(job.attempts) for job in array]
        time.sleep(0.02)
    return [len(job.attempts) for job in array]


def _api(array: Any, killed: bool, ip: Any, capsys: Any) -> str:
    steps = array.retry_failed(killed=True) if killed else array.retry_failed()  # the default is the rule too
    return ", ".join(str(job.step) for job in steps)


def _magic(array: Any, killed: bool, ip: Any, capsys: Any) -> str:
    capsys.readouterr()
    ip.run_line_magic("nbdist", f"retry {array.name}" + " --killed" * killed)
    return capsys.readouterr().out


def _widget(array: Any, killed: bool, ip: Any, capsys: Any) -> str:
    pytest.importorskip("ipywidgets")
    from nbdist.views.widget import Dashboard

    dashboard = Dashboard(array, session=array.session)
    try:
        dashboard.retry_killed_box.value = killed
        assert not dashboard.retry_button.disabled
        # Beside the button: a retry runs the code as submitted, and how to run new code on what failed.
        assert "as submitted" in dashboard.retry_button.tooltip
        assert "retries run the code as submitted" in dashboard.retry_note.value
        assert "failed_items()" in dashboard.retry_note.value and dashboard.retry_note.layout.display is None
        dashboard.retry_button.click()
        return str(dashboard.status_label.value)
    finally:
        dashboard.close()


FACES: dict[str, Callable[[Any, bool, Any, Any], str]] = {"api": _api, "magic": _magic, "widget": _widget}


@pytest.mark.parametrize("killed", [False, True], ids=["failed", "killed-too"])
def test_every_face_retries_the_same_steps(ip: Any, session: Session, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], killed: bool) -> None:
    expected = [2, 2, 1] if killed else [2, 1, 1]
    said = {}
    for face, press in FACES.items():
        array = failed_and_killed(session, tmp_path, face)
        said[face] = press(array, killed, ip, capsys)
        assert attempts_after_retry(array) == expected, face
        assert array[1].state is (State.DONE if killed else State.KILLED), face
    # The CLI, from a terminal after the kernel is gone: it takes the array over and follows the retry.
    root = str(tmp_path / "cli-root")
    with Session(parallelism=2, root=root) as owner:
        failed_and_killed(owner, tmp_path, "cli")
    assert main(["--root", root, "retry", "cli"] + ["--killed"] * killed) == 1  # step 0 fails again
    said["cli"] = capsys.readouterr().out
    with Session(root=root) as reader:
        reader.attach(take_over=False)
        assert [len(job.attempts) for job in reader.get("cli")] == expected
    steps = "steps 0, 1" if killed else "step 0"
    assert said["api"] == ("0, 1" if killed else "0")
    assert said["widget"] == f"retrying {steps}"
    for face in ("magic", "cli"):
        assert said[face].startswith(f"retrying {2 if killed else 1} of 3 steps of {face} "), said[face]
        assert said[face].rstrip().endswith(
            steps if killed else f"{steps}; 1 KILLED left alone (--killed retries them too)"), said[face]


def test_the_rule_is_one_function_of_the_session() -> None:
    """What each face re-runs comes from ``nbdist.session.choose_retry``; nothing else lists the states."""
    from nbdist.session import SPARED_STATES, choose_retry, retry_states

    assert retry_states() == {State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST}
    assert retry_states(killed=True) == retry_states() | {State.KILLED, State.SKIPPED} == retry_states() | SPARED_STATES

    class Step:
        def __init__(self, state: State) -> None:
            self.state = state

    steps = [Step(state) for state in State]
    choice = choose_retry(steps)
    assert [step.state for step in choice.chosen] == [State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST]
    assert [step.state for step in choice.spared] == [State.KILLED, State.SKIPPED]
    assert [step.state for step in choose_retry(steps, killed=True).chosen] == [
        State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.KILLED, State.LOST, State.SKIPPED]
    assert nbdist.Array.retry_failed.__kwdefaults__ == {"killed": False}
