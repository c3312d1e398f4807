"""``%%submit`` and ``%nbdist`` through a real IPython shell, a real session and real processes.

Every good line is checked by its effect (jobs in the session, states, logs, exit codes, the user
namespace); every bad line must raise ``UsageError`` and submit nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from process_helpers import pid_alive
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

import nbdist
from nbdist.backends import BUILTIN_BACKENDS
from nbdist.views.magics import NbdistMagics
from nbdist.session.sweep import expand, python_command, script_command, write_scripts

WAIT_S = 60


@pytest.fixture()
def local2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second real backend: the multiprocess distributor registered under the name ``local2``."""
    monkeypatch.setitem(BUILTIN_BACKENDS, "local2", BUILTIN_BACKENDS["multiprocess"])


def cell(ip: Any, line: str, body: str) -> None:
    ip.run_cell_magic("submit", line, body)


def test_magics_registered(ip: Any) -> None:
    assert "submit" in ip.magics_manager.magics["cell"]
    assert "nbdist" in ip.magics_manager.magics["line"]
    assert isinstance(ip.magics_manager.registry["NbdistMagics"], NbdistMagics)


def test_submit_help_is_the_docstring(ip: Any) -> None:
    doc = ip.magics_manager.magics["cell"]["submit"].__doc__
    assert doc.startswith("::\n\n  %submit [--name NAME]")
    for text in ("Run the cell body as a batch job or array; show a live dashboard.",
                 "--array SPEC, -a SPEC", "10, 0-99, 0-99:2, 1,5,7", "--over EXPR", "--after NAME [NAME ...]",
                 "--max-attempts K", "--python", "--wait, -w", "--out VAR, -o VAR", "--quiet, -q",
                 "%%submit --name squares --array 0-9 --cores 1 --memory 512M --runtime 5m",
                 "python train.py --lr {{lr}} --depth {{depth}}"):
        assert text in doc, text
    nbdist_doc = ip.magics_manager.magics["line"]["nbdist"].__doc__
    for sub in ("status", "show", "logs", "kill", "retry", "wait", "attach", "backend"):
        assert f"%nbdist {sub}" in nbdist_doc


def test_job_runs_and_its_output_stays_out_of_the_notebook(ip: Any, session: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "--name hello --wait --quiet --out job", "echo hello from the job\necho oops >&2\n")
    job = ip.user_ns["job"]
    assert job is session.get("hello")
    assert job.state == nbdist.State.DONE and job.exit_code == 0
    assert job.stdout() == "hello from the job\n" and job.stderr() == "oops\n"
    out, err = capsys.readouterr()
    assert "hello from the job" not in out + err and "oops" not in out + err


def test_submit_shows_a_dashboard(ip: Any, session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr("nbdist.views.magics.display", lambda obj, **kw: shown.append(obj))
    cell(ip, "--name shown --wait", "echo hi")
    (dashboard,) = shown
    assert dashboard.snapshot.name == "shown" and dashboard.snapshot.all_terminal
    assert "hi" in dashboard.stdout.value
    bundle = dashboard._repr_mimebundle_()
    assert "DONE 1" in bundle["text/plain"] and "application/vnd.jupyter.widget-view+json" in bundle
    dashboard.close()


@pytest.mark.parametrize(("spec", "steps"), [
    ("4", [0, 1, 2, 3]), ("0-3", [0, 1, 2, 3]), ("0-6:3", [0, 3, 6]), ("1,5,7", [1, 5, 7]), ("2-3,9%1", [2, 3, 9]),
])
def test_array_specs(ip: Any, session: Any, spec: str, steps: list[int]) -> None:
    cell(ip, f"--name arr --array {spec} --wait --quiet --out arr", "echo step $NBDIST_STEP")
    arr = ip.user_ns["arr"]
    assert list(arr.steps) == steps
    assert arr.counts()["DONE"] == len(steps)
    assert [job.stdout() for job in arr] == [f"step {step}\n" for step in steps]


def test_over_grid_with_placeholders(ip: Any, session: Any) -> None:
    ip.user_ns["grid"] = {"lr": [0.1, 0.01], "tag": ["a b", "$(touch pwned)"]}
    cell(ip, "--name sweep --over grid --wait --quiet --out sweep", "echo lr={{lr}} tag={{tag}}")
    outputs = sorted(job.stdout() for job in ip.user_ns["sweep"])
    assert outputs == sorted(f"lr={lr} tag={tag}\n" for lr in (0.1, 0.01) for tag in ("a b", "$(touch pwned)"))
    assert not Path("pwned").exists()


def test_over_list_of_dicts_and_env(ip: Any, session: Any) -> None:
    cell(ip, "--name rows --over \"[{'x': 1}, {'x': 2}]\" --wait --quiet --out rows", 'echo "x is $x"')
    assert [job.stdout() for job in ip.user_ns["rows"]] == ["x is 1\n", "x is 2\n"]


def test_over_generators_are_read_once(ip: Any, session: Any) -> None:
    ip.user_ns["gen"] = {"x": (n * n for n in range(3))}
    cell(ip, "--name gen --over gen --wait --quiet --out gen_run", "echo {{x}}")
    assert [job.stdout() for job in ip.user_ns["gen_run"]] == ["0\n", "1\n", "4\n"]


def test_python_body_runs_with_the_kernel_interpreter(ip: Any, session: Any) -> None:
    cell(ip, "--name py --python --wait --quiet", "import sys\nprint(sys.executable)\nprint(6 * 7)\n")
    assert session.get("py").stdout() == f"{sys.executable}\n42\n"


def test_python_placeholders_are_python_literals(ip: Any, session: Any) -> None:
    words = ["two words", "it's", "$(touch pwned)", "abc", "1/0", "os.sep", "__import__('os').system('touch pwned')"]
    ip.user_ns["words"] = {"w": words, "n": [3], "x": [0.5], "b": [True]}
    cell(ip, "--name lit --over words --python --wait --quiet --out lit", "print(repr({{w}}), {{n}} * 2, {{x}}, {{b}})")
    assert [job.stdout() for job in ip.user_ns["lit"]] == [f"{word!r} 6 0.5 True\n" for word in words]
    cell(ip, "--name steps --array 0-4:2 --python --wait --quiet --out steps", "print({{step}} * 10)")
    assert [job.stdout() for job in ip.user_ns["steps"]] == ["0\n", "20\n", "40\n"]
    assert not Path("pwned").exists()


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_CODE = st.sampled_from(["abc", "1/0", "os.sep", "__import__('os').system('touch pwned')", "'", '"""', "\\",
                         "x; touch pwned", "$(touch pwned)", "\nimport os\n", "NBDIST_PYTHON_EOF", "-c", "--", ""])


@settings(max_examples=60, deadline=None)
@given(values=st.one_of(st.lists(st.one_of(_CODE, _TEXT), min_size=1, max_size=3),
                        st.lists(st.integers(), min_size=1, max_size=3),
                        st.lists(st.floats(allow_nan=False), min_size=1, max_size=3)))
def test_python_placeholder_values_are_data_never_code(values: list[Any]) -> None:
    # What %%submit --python --over and array(..., python=True) run: sweep.python_command.
    body = "import sys\nprint(repr({{v}}))\n"
    params = expand(body, over={"v": values}).params
    command = python_command(body, params)
    sweep = expand(command, over=params)
    with tempfile.TemporaryDirectory() as scripts, tempfile.TemporaryDirectory() as folder:
        chunk = write_scripts(scripts, command, sweep)  # exactly what each step runs
        steps = "; ".join(script_command(scripts, chunk, index) for index in range(len(values)))
        done = subprocess.run(["/bin/sh", "-c", steps], cwd=folder, capture_output=True, timeout=30, check=False,
                              env={"PATH": os.environ["PATH"], "HOME": folder})
        assert os.listdir(folder) == []  # nothing was created: no code of a value ran
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines() == [repr(value) for value in values]


def test_after_runs_in_order(ip: Any, session: Any) -> None:
    cell(ip, "--name first --quiet", "sleep 0.5; echo made > made.txt")
    cell(ip, "--name second --after first --wait --quiet", "cat made.txt")
    assert session.get("first").state == nbdist.State.DONE
    assert session.get("second").stdout() == "made\n"


def test_runtime_limit_and_attempts(ip: Any, session: Any) -> None:
    cell(ip, "--name slow --runtime 1s --wait --quiet", "sleep 30")
    assert session.get("slow").state == nbdist.State.TIMEOUT
    cell(ip, "--name flaky --max-attempts 2 --wait --quiet", "exit 3")
    flaky = session.get("flaky")
    assert flaky.state == nbdist.State.FAILED and flaky.exit_code == 3 and len(flaky.attempts) == 2


def test_nbdist_kill_logs_status_wait_retry(ip: Any, session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "--name arr --array 0-2 --quiet", 'echo "out $NBDIST_STEP"; echo "err $NBDIST_STEP" >&2; exit $NBDIST_STEP')
    ip.run_line_magic("nbdist", "wait arr --timeout 60")
    cell(ip, "--name long --quiet", "echo started; sleep 60")
    capsys.readouterr()
    ip.run_line_magic("nbdist", "logs arr:2")
    ip.run_line_magic("nbdist", "logs arr:1 --err")
    assert capsys.readouterr().out == "out 2\nerr 1\n"
    ip.run_line_magic("nbdist", "kill long")
    session.get("long").wait(timeout=WAIT_S)
    assert session.get("long").state == nbdist.State.KILLED
    ip.run_line_magic("nbdist", "status")
    status = capsys.readouterr().out
    assert "long" in status and "KILLED 1" in status and "DONE 1" in status and "FAILED 2" in status
    ip.run_line_magic("nbdist", "retry arr")
    ip.run_line_magic("nbdist", "wait arr")
    arr = session.get("arr")
    assert [len(job.attempts) for job in arr] == [1, 2, 2]


def test_attach_gives_back_jobs(ip: Any, session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "--name kept --wait --quiet", "echo kept")
    nbdist.set_default_session(None)  # as after a kernel restart: attach makes a new session
    ip.run_line_magic("nbdist", f"attach {tmp_path / '.nbdist'}")
    magics = ip.magics_manager.registry["NbdistMagics"]
    attached = magics.sessions.current()
    try:
        assert attached is not session
        assert "kept" in capsys.readouterr().out
        assert attached.get("kept").stdout() == "kept\n"
    finally:
        attached.close()


def test_backend_shows_the_current_backend(ip: Any, session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("nbdist", "backend")
    assert capsys.readouterr().out == f"{session.backend_name}\n"


def test_backend_switch_closes_the_idle_session_and_keeps_its_jobs(ip: Any, session: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # This session's consumers only: other fixtures (a JupyterLab) may have children of their own.
    before = {child.pid for child in psutil.Process().children()}
    cell(ip, "--name before --wait --quiet", "echo before")
    consumers = [child.pid for child in psutil.Process().children() if child.pid not in before]
    assert consumers
    ip.run_line_magic("nbdist", "backend multiprocess --parallelism 1")
    assert ip.magics_manager.registry["NbdistMagics"].sessions.current() is not session
    assert session.closed and not any(pid_alive(pid) for pid in consumers)  # no consumer, no poller left
    capsys.readouterr()
    ip.run_line_magic("nbdist", "logs before")
    ip.run_line_magic("nbdist", "status")
    out = capsys.readouterr().out
    assert out.startswith("before\n") and "before" in out.splitlines()[2] and "DONE 1" in out


def test_replaced_session_with_live_work_stays_until_it_ends(ip: Any, session: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "--name long --quiet", "echo started; sleep 60")
    ip.run_line_magic("nbdist", "backend multiprocess --parallelism 1")
    assert not session.closed
    ip.run_line_magic("nbdist", "kill long")
    assert session.get("long").wait(timeout=WAIT_S) == nbdist.State.KILLED
    cell(ip, "--name next --quiet", "true")
    assert session.closed  # its only job ended: closed at the next cell
    ip.run_line_magic("nbdist", "status")
    assert "KILLED 1" in capsys.readouterr().out


def test_jobs_of_a_backend_option_are_seen_by_status_logs_kill_wait(ip: Any, session: Any, local2: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    magics = ip.magics_manager.registry["NbdistMagics"]
    cell(ip, "--name other --backend local2 --quiet", "echo other; sleep 60")
    cell(ip, "--name quick --backend local2 --quiet", "echo quick")
    other = magics.sessions.backend_sessions()["local2"]
    assert other.get("other").session is other
    ip.run_line_magic("nbdist", "wait quick")
    assert other.get("quick").state == nbdist.State.DONE
    ip.run_line_magic("nbdist", "kill other")
    assert other.get("other").wait(timeout=WAIT_S) == nbdist.State.KILLED
    capsys.readouterr()
    ip.run_line_magic("nbdist", "logs quick")
    ip.run_line_magic("nbdist", "status")
    out = capsys.readouterr().out
    assert out.startswith("quick\n") and "other" in out and "KILLED 1" in out
    ip.run_line_magic("nbdist", "backend local2")  # the session of the --backend cells becomes the current one
    assert magics.sessions.current() is other and not magics.sessions.backend_sessions() and session.closed


def test_wait_timeout_says_what_still_runs(ip: Any, session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cell(ip, "--name napping --quiet", "sleep 60")
    cell(ip, "--name quick --wait --quiet", "true")
    capsys.readouterr()
    started = time.monotonic()
    ip.run_line_magic("nbdist", "wait --timeout 0.5 --quiet")
    assert time.monotonic() - started < 5
    assert capsys.readouterr().out == "still running after 0.5s: napping\n"
    ip.run_line_magic("nbdist", "wait quick --timeout 5")
    assert capsys.readouterr().out == ""
    ip.run_line_magic("nbdist", "kill napping")
    session.get("napping").wait(timeout=WAIT_S)


# -- bad lines: one UsageError, nothing submitted ---------------------------------------------
BAD_SUBMIT = [
    ("--frobnicate", "echo"),
    ("--array", "echo"),
    ("--array abc", "echo"),
    ("--array 5-2", "echo"),
    ("--array 0-9:0", "echo"),
    ('--array ""', "echo"),
    ("--array 0", "echo"),
    ("--array 1,,2", "echo"),
    ("--array 1,1", "echo"),
    ("--array 0-9%0", "echo"),
    ("--array 0-99999999", "echo"),
    ("--array 0-9%2 --max-concurrent 3", "echo"),
    ("--array 3 --over grid", "echo {{x}}"),
    ("--over undefined_name", "echo"),
    ("--over 42", "echo"),
    ("--over \"'abc'\"", "echo"),
    ('--over "{}"', "echo"),
    ("--over \"{'x': 1}\"", "echo $x"),
    ("--over \"[1, 2]\"", "echo"),
    ("--over \"{'x': []}\"", "echo $x"),
    ('--over "1/0"', "echo"),
    ("--over grid", "echo {{nope}}"),
    ("--over grid", "echo nothing uses x"),
    ("--cores 0", "echo"),
    ("--cores many", "echo"),
    ("--cores", "echo"),
    ("--memory lots", "echo"),
    ("--memory -1G", "echo"),
    ("--runtime forever", "echo"),
    ("--runtime 0", "echo"),
    ("--after nosuchjob", "echo"),
    ("--after", "echo"),
    ("--max-attempts 0", "echo"),
    ("--max-attempts x", "echo"),
    ("--max-concurrent 0 --array 3", "echo"),
    ("--max-concurrent 2", "echo"),
    ('--name "bad name"', "echo"),
    ("--name a:b", "echo"),
    ('--name ""', "echo"),
    ("--out 1abc", "echo"),
    ("--out class", "echo"),
    ('--name "unclosed', "echo"),
    ("", ""),
    ("", "   \n\t\n"),
    ("--name ok", "echo {{x}}"),
    ("--backend no-such-backend", "echo"),
    ("positional", "echo"),
]

BAD_NBDIST = [  # (a bare %nbdist lists the sub-commands: test_small_ones.py)
    "frobnicate",
    "show nosuch",
    "status nosuch",
    "logs nosuch",
    "logs done-arr",
    "logs done-arr:x",
    "logs done-arr:99",
    "logs done-arr:0 --tail 0",
    "kill nosuch",
    "retry nosuch",
    "retry done-arr --scale 0",
    "wait nosuch",
    "wait --timeout -1",
    "backend --parallelism 0",
    "backend no-such-backend",
    "logs 'unclosed",
]


@pytest.fixture()
def seeded(ip: Any, session: Any) -> Any:
    """A session with one finished array and the ``grid`` variable, for the bad-line tests."""
    ip.user_ns["grid"] = {"x": [1, 2]}
    cell(ip, "--name done-arr --array 2 --wait --quiet", "echo")
    return session


def _assert_usage_error_and_nothing_submitted(session: Any, run: Any) -> None:
    before = [(h.id, len(h)) if hasattr(h, "retry_failed") else (h.id, 1) for h in session.jobs()]
    with pytest.raises(UsageError) as info:
        run()
    message = str(info.value)
    assert message and "\n" not in message.strip(), message
    after = [(h.id, len(h)) if hasattr(h, "retry_failed") else (h.id, 1) for h in session.jobs()]
    assert after == before


@pytest.mark.parametrize(("line", "body"), BAD_SUBMIT, ids=[f"{i}:{line}" for i, (line, _) in enumerate(BAD_SUBMIT)])
def test_bad_submit_line(ip: Any, seeded: Any, line: str, body: str) -> None:
    _assert_usage_error_and_nothing_submitted(seeded, lambda: cell(ip, line, body))


@pytest.mark.parametrize("line", BAD_NBDIST)
def test_bad_nbdist_line(ip: Any, seeded: Any, line: str) -> None:
    _assert_usage_error_and_nothing_submitted(seeded, lambda: ip.run_line_magic("nbdist", line))


def test_submit_translates_core_errors(ip: Any, session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cores=64 exceeds this machine's 2 cores\nsecond line")

    monkeypatch.setattr(session, "submit", refuse)
    with pytest.raises(UsageError, match=r"^cores=64 exceeds this machine's 2 cores$"):
        cell(ip, "--cores 64", "echo")
