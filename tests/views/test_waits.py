"""A blocking wait from Python in a notebook: its live dashboard after a second, and a one-line interrupt."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from nbdist import Session, State
from nbdist.session import LIVE_AFTER_SECONDS, quiet_waits, set_wait_display


@pytest.fixture
def session(tmp_path):
    with Session(root=str(tmp_path / "root"), parallelism=2) as session:
        yield session


@pytest.fixture
def shown():
    seen: list[Any] = []
    set_wait_display(seen.append)
    yield seen
    set_wait_display(None)


def test_a_slow_wait_shows_its_work_once_and_a_blink_shows_nothing(session, shown):
    quick = session.submit("true", name="quick")
    assert quick.wait() is State.DONE and shown == []
    slow = session.submit("sleep 2", name="slow")
    started = time.monotonic()
    assert slow.wait() is State.DONE
    assert shown == [slow] and time.monotonic() - started >= LIVE_AFTER_SECONDS
    with quiet_waits():
        assert session.submit("sleep 1.5", name="mute").result() is not None
    assert shown == [slow]


def test_a_short_timeout_shows_nothing_and_still_times_out(session, shown):
    slow = session.submit("sleep 5", name="slow")
    assert slow.wait(timeout=0.3) is not State.DONE and shown == []
    slow.cancel()


def test_an_interrupted_wait_is_one_line_and_the_work_goes_on(session):
    slow = session.submit("sleep 30", name="slow")
    slow.wait(timeout=0.2)
    # A real SIGINT, as a kernel interrupt sends (a simulated one cannot wake a blocked lock wait).
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt) as caught:
        slow.result()
    assert str(caught.value) == "stopped waiting for 'slow'; it goes on running (.cancel() it, or %nbdist kill slow)"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert slow.state is State.RUNNING
    slow.cancel()
    assert slow.wait(timeout=10) is State.KILLED
