"""The multiprocess backend's pure parts: prefetch depth, work stealing, the typed pipe protocol."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from nbdist.backends._task.runner import Outcome
from nbdist.backends.multiprocess.messages import (Done, Error, Kill, PickableTask, Returned, Run, Started, Stop,
                                                   Unqueue, receive_message, send_message)
from nbdist.backends.multiprocess.placement import (MEDIUM_TASK_SECONDS, PREFETCH_SHORT, SHORT_TASK_SECONDS,
                                                    STEAL_AFTER_SECONDS, prefetch_depth, seconds_until_slow)


@pytest.mark.parametrize("pace, depth", [
    (None, 0), (MEDIUM_TASK_SECONDS, 0), (5.0, 0), (MEDIUM_TASK_SECONDS / 2, 1), (SHORT_TASK_SECONDS, 1),
    (SHORT_TASK_SECONDS / 2, PREFETCH_SHORT), (0.0, PREFETCH_SHORT)])
def test_prefetch_depth_follows_the_jobs_pace(pace, depth):
    assert prefetch_depth(pace) == depth


def test_a_running_task_turns_slow_after_twice_its_pace_and_never_before_the_floor():
    assert seconds_until_slow(None, 100.0, 100.0) == pytest.approx(STEAL_AFTER_SECONDS)
    assert seconds_until_slow(0.5, 100.0, 100.25) == pytest.approx(0.75)
    assert seconds_until_slow(0.5, 100.0, 101.0) is None
    assert seconds_until_slow(None, None, 100.0) == pytest.approx(STEAL_AFTER_SECONDS)  # not started yet


def test_every_message_crosses_a_real_pipe_intact():
    reader, writer = multiprocessing.Pipe(duplex=False)
    task = PickableTask("p.1_2", "echo hi", "array", 2)
    outcome = Outcome("Z", "runtime limit of 1s exceeded", None, 15, {"wall_s": 1.0}, "runtime")
    commands = [Run([task]), Kill("p.1_2", 0.5), Unqueue(["p.1_3"]), Stop(0.2)]
    events = [Started("p.1_2", 42), Done("p.1_2", outcome), Error("p.1_4", "could not start"), Returned("p.1_3")]
    try:
        for message in [*commands, events]:
            send_message(writer, message)
        received = [receive_message(reader) for _ in range(5)]
    finally:
        reader.close()
        writer.close()
    assert received[1:4] == commands[1:]
    assert type(received[0]) is Run and received[0].tasks[0].spec.command == "echo hi"
    assert received[4] == events and received[4][1].outcome.limit == "runtime"


def test_a_consumers_pipe_end_speaks_multiprocessings_frames():
    """A consumer frames messages itself (no multiprocessing import); the distributor's Pipe reads them, and back."""
    import threading

    from nbdist.backends.multiprocess.messages import PipeEnd

    reader, writer = multiprocessing.Pipe(duplex=False)  # distributor -> consumer
    inbox = PipeEnd(os.dup(reader.fileno()))
    reader.close()
    big = Run([PickableTask(f"j.1_{i}", "echo " + "x" * 1000) for i in range(100)])  # ~100 KB: several reads
    sender = threading.Thread(target=send_message, args=(writer, big))
    sender.start()
    received = receive_message(inbox)
    sender.join()
    assert [task.distributor_id for task in received.tasks] == [task.distributor_id for task in big.tasks]
    writer.close()
    with pytest.raises(EOFError):
        receive_message(inbox)
    inbox.close()

    reader, writer = multiprocessing.Pipe(duplex=False)  # consumer -> distributor
    outbox = PipeEnd(os.dup(writer.fileno()))
    writer.close()
    send_message(outbox, [Started("j.1_0", 42)])
    assert receive_message(reader) == [Started("j.1_0", 42)]
    outbox.close()
    with pytest.raises(EOFError):
        reader.recv_bytes()
    reader.close()
