"""Issue 18 point 7: ``%nbdist`` and ``%nbdist --help`` list the sub-commands (as ``%nbdist?`` does), and a
dashboard's "retrying steps …" goes away once the retry has finished (the real IPython test shell, real
processes). The third small one, the end drawn when a blocking wait returns, is in test_handle_display.py."""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest
from IPython.core.error import UsageError

from nbdist.views.magics import NbdistMagics
from nbdist.views.widget import Dashboard

SUB_COMMANDS = ("status", "show", "logs", "kill", "retry", "wait", "forget", "attach", "backend")


@pytest.mark.parametrize("line", ["", "--help", "-h", "help", "retry --help"])
def test_nbdist_without_a_command_or_with_help_lists_the_sub_commands(ip: Any, line: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("nbdist", line)
    out = capsys.readouterr().out
    assert out == inspect.cleandoc(NbdistMagics.nbdist.__doc__ or "") + "\n"  # what %nbdist? shows
    for command in SUB_COMMANDS:
        assert f"%nbdist {command}" in out
    assert "required" not in out


def test_a_wrong_command_is_still_one_line(ip: Any) -> None:
    with pytest.raises(UsageError, match="invalid choice: 'bogus'"):
        ip.run_line_magic("nbdist", "bogus")


def test_the_retrying_label_goes_once_the_retry_finished(tmp_path: Any) -> None:
    import nbdist

    marker = tmp_path / "failed-once"
    with nbdist.Session(root=str(tmp_path / ".nbdist"), parallelism=3) as session:
        # Steps 1 and 2 fail on their first attempt only, so a retry finishes them.
        array = session.array(f'test "$NBDIST_STEP" = 0 || test -e {marker}-$NBDIST_STEP || '
                              f'{{ touch {marker}-$NBDIST_STEP; exit 3; }}', steps=3, name="flaky")
        assert array.wait(timeout=30).is_terminal
        dashboard = Dashboard(array, session=session)
        try:
            dashboard.retry_button.click()
            assert dashboard.status_label.value == "retrying steps 1, 2"
            assert array.wait(timeout=30) is nbdist.State.DONE
            deadline = time.monotonic() + 10
            while not dashboard.snapshot.all_terminal:  # the refresher's next tick, or this one
                assert time.monotonic() < deadline
                dashboard.refresh()
                time.sleep(0.05)
            assert dashboard.status == "" and dashboard.status_label.value == ""
            assert "DONE 3" in dashboard.header.value
        finally:
            dashboard.close()
