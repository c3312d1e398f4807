"""The OS interface (nbdist.backends._task.system): the Linux and the portable implementation side by side.

Both run here (the portable one is what macOS and the BSDs get; ``NBDIST_PORTABLE=1`` forces it on
Linux, and ``make test`` runs the local backend's and the session's suites a second time so).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from nbdist.backends._task.system import SYSTEM, LinuxSystem, PortableSystem, choose_system

IMPLEMENTATIONS = [PortableSystem()] + ([LinuxSystem()] if sys.platform.startswith("linux") else [])


def test_the_variable_forces_the_portable_implementation():
    assert choose_system({"NBDIST_PORTABLE": "1"}, "linux").name == "portable"
    assert choose_system({}, "darwin").name == "portable"
    assert choose_system({}, "freebsd14").name == "portable"
    if hasattr(os, "pidfd_open"):
        assert choose_system({}, "linux").name == "linux"
    assert SYSTEM.name == ("portable" if os.environ.get("NBDIST_PORTABLE") == "1" or not hasattr(os, "pidfd_open")
                           else "linux")


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_an_exit_is_seen_without_polling_and_the_child_is_left_to_reap(system):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(7)"])
    watch = system.watch_exit(child.pid)
    try:
        poller = select.poll()
        poller.register(watch.fileno(), select.POLLIN)
        assert poller.poll(0) == []  # still running
        started = time.monotonic()
        assert poller.poll(10_000), "the exit was not seen"
        assert time.monotonic() - started < 5
        _, status, _ = os.wait4(child.pid, 0)  # not reaped by the watch: its status and usage are ours
        assert os.waitstatus_to_exitcode(status) == 7
        child.returncode = 7
    finally:
        watch.close()
        child.kill()
        child.wait()


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_a_process_watched_once_per_call_costs_one_thread_and_no_descriptors(system):
    # A warm worker is watched once per call: 200 watches closed while it runs leave no thread or fd
    # behind each, and every watch open at its exit sees it.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        fds_before = len(os.listdir("/dev/fd"))
        for _ in range(200):
            system.watch_exit(child.pid).close()
        open_watches = [system.watch_exit(child.pid) for _ in range(3)]
        waiting = [thread for thread in threading.enumerate() if thread.name == f"nbdist-exit-{child.pid}"]
        assert len(waiting) <= 1, len(waiting)
        assert len(os.listdir("/dev/fd")) <= fds_before + 2 * len(open_watches)
        child.stdin.close()  # it exits
        for watch in open_watches:
            assert select.select([watch], [], [], 10)[0], "an open watch did not see the exit"
            watch.close()
        assert len(os.listdir("/dev/fd")) <= fds_before
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_has_exited_is_true_from_the_zombie_on(system):
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not system.has_exited(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while not system.has_exited(child.pid):  # a zombie now (not reaped: nobody waited)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.waitpid(child.pid, os.WNOHANG)[0] == child.pid
        child.returncode = -9
        assert system.has_exited(child.pid)  # reaped: gone
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_children_and_names_agree(system):
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        assert {child.pid for child in children} <= set(system.children())
        assert system.children(children[0].pid) == []
        assert system.process_name(children[0].pid) == "sleep"
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert system.process_name(children[0].pid) is None


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_descendants_reach_grandchildren_with_a_start_that_tells_a_reused_pid(system):
    # A shell that starts a grandchild (sleep) in the background, prints its pid and waits for it.
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    with parent.stdout:
        grandchild = int(parent.stdout.readline())
    try:
        found = system.descendants(parent.pid)
        assert grandchild in found and system.started(grandchild) == found[grandchild]
        assert system.descendants(grandchild) == {}
        later = subprocess.Popen(["sleep", "30"])  # started after it: never an earlier start, whatever its pid
        try:
            assert system.started(later.pid) >= found[grandchild]
        finally:
            later.kill()
            later.wait()
    finally:
        os.kill(grandchild, signal.SIGKILL)
        parent.wait(5)  # the shell's wait reaps the grandchild, then it exits
    assert system.started(grandchild) is None  # gone: a kill by its remembered start skips it
    assert system.descendants(parent.pid) == {}


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_usage_units(system):
    import resource

    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert 10 < system.max_rss_mb(ru_maxrss) < 100_000  # a Python process: tens of MB, not KB or TB
    assert 5 < system.rss_mb() < 100_000
    assert system.peak_rss_mb(system.reset_peak_rss()) >= 5


HELPER = """
import os, signal, socket, sys, time
sys.path.insert(0, {root!r})
from nbdist.backends._task.system import {cls}
fd = int(sys.argv[1])
os.setpgid(0, 0)
{cls}().die_with_parent(signal.SIGKILL, os.getppid(), fd)
print("ready", flush=True)
time.sleep(60)  # as a warm worker in the middle of a long call
"""


@pytest.mark.parametrize("system", IMPLEMENTATIONS, ids=lambda system: system.name)
def test_a_helper_dies_with_its_parent_even_mid_call(system, tmp_path):
    """The parent here is a middle process that is SIGKILLed; the helper (its child) must end too."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("nbdist").__file__)))
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER.format(root=root, cls=type(system).__name__))
    middle_code = (
        "import socket, subprocess, sys, time\n"
        "mine, theirs = socket.socketpair()\n"
        f"child = subprocess.Popen([sys.executable, {str(helper)!r}, str(theirs.fileno())], pass_fds=[theirs.fileno()],"
        " stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline().strip() == 'ready'\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")
    middle = subprocess.Popen([sys.executable, "-c", middle_code], stdout=subprocess.PIPE, text=True)
    helper_pid = int(middle.stdout.readline())
    middle.send_signal(signal.SIGKILL)
    middle.wait()
    middle.stdout.close()
    deadline = time.monotonic() + 5
    import psutil

    def alive() -> bool:
        try:
            return psutil.Process(helper_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(), "the helper outlived its parent"
