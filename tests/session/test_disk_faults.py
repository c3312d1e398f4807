"""Full and read-only disks, for real: a small tmpfs mounted by the test (root only; CI runs as root).

- Inspecting needs no write access: on a read-only or full file system ``nbdist status``/``logs`` and
  ``attach()`` read the registry read-only and say in one line what cannot be done.
- A full disk is called a full disk, where it happens: a submit (nothing is left of it), a function's
  result, the poller (one warning, not one per poll), ``close()`` (no exception); and what ended while
  the disk was full reaches the registry once there is space again.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

from nbdist import Executor, Session, State

TMPFS_SIZE = "16m"


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh tmpfs of TMPFS_SIZE mounted at a folder of ``tmp_path``; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    folder = tmp_path / "fs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], capture_output=True)
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder) -> str:
    """Fill the file system of ``folder`` to the last block; the filler's path (unlink it to free the space)."""
    path = os.path.join(folder, "filler")
    with open(path, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            try:
                while True:
                    handle.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return path


def _remount_read_only(folder) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=60)


def _cli(root: str, *words: str) -> subprocess.CompletedProcess[str]:
    return _run_python("import sys\nfrom nbdist.views.cli import main\nsys.exit(main(sys.argv[1:]))",
                       "--root", root, *words)


def _registry_with_a_sweep(root: str) -> None:
    with Session(parallelism=2, root=root) as session:
        session.array("echo x={{x}}", over={"x": [1, 2]}, name="sweep").wait(30)


ATTACH_AND_READ = """
    import sys
    import nbdist
    session = nbdist.attach(root=sys.argv[1])
    sweep = session.get("sweep")
    print("steps", [step.state.value for step in sweep], repr(sweep[1].stdout()))
    try:
        session.submit("true", name="more")
    except OSError as exc:
        print("submit refused:", exc)
    try:
        sweep.retry_failed() if sweep.failed() else sweep[0].retry()
    except OSError as exc:
        print("retry refused:", exc)
    session.close()
"""


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_a_registry_that_cannot_be_written_can_still_be_inspected(tmpfs, how):
    root = str(tmpfs / "nbdist")
    _registry_with_a_sweep(root)
    if how == "read-only":
        _remount_read_only(tmpfs)
        reason = "read-only file system"
    else:
        _fill(tmpfs)
        reason = "disk full"

    status = _cli(root, "status")
    assert status.returncode == 0, status.stderr
    assert "sweep" in status.stdout and "DONE 2" in status.stdout
    assert status.stderr.strip().splitlines() == [status.stderr.strip()], status.stderr  # one line
    assert reason in status.stderr and "read-only" in status.stderr and "Traceback" not in status.stderr

    logs = _cli(root, "logs", "sweep:1")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip() == "x=2"

    kill = _cli(root, "kill", "sweep")
    assert "Traceback" not in kill.stderr, kill.stderr

    attached = _run_python(ATTACH_AND_READ, root)
    assert attached.returncode == 0, attached.stderr
    assert "steps ['DONE', 'DONE'] 'x=2\\n'" in attached.stdout
    assert f"submit refused: {reason}" in attached.stdout
    assert f"retry refused: {reason}" in attached.stdout
    assert "Traceback" not in attached.stderr, attached.stderr
    assert len(attached.stderr.strip().splitlines()) == 1 and "read-only" in attached.stderr, attached.stderr


def test_a_submit_on_a_full_disk_says_so_and_leaves_no_job(tmpfs):
    root = str(tmpfs / "nbdist")
    with Session(parallelism=2, root=root) as session:
        session.submit("true", name="first").wait(30)
        filler = _fill(tmpfs)
        with pytest.raises(OSError) as caught:
            session.array("echo x={{x}}", over={"x": list(range(10_000))}, name="sweep")
        assert str(caught.value).startswith("disk full: ") and "\n" not in str(caught.value)
        assert caught.value.errno == errno.ENOSPC
        os.unlink(filler)
    # Space is back, the kernel is gone: nothing of the failed submit is left to run.
    listed = _run_python("""
        import sys
        import nbdist
        session = nbdist.attach(root=sys.argv[1])
        print(sorted(job.name for job in session.jobs()))
        session.close()
    """, root)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "['first']"
    scripts = os.path.join(root, "scripts")
    assert not os.path.exists(scripts) or os.listdir(scripts) == []


def test_what_ends_while_the_disk_is_full_is_recorded_once_space_is_back(tmpfs, caplog):
    root = str(tmpfs / "nbdist")
    caplog.set_level(logging.WARNING, logger="nbdist")
    with Session(parallelism=2, root=root) as session:
        session.submit("true", name="first").wait(30)
        sweep = session.array("sleep 0.5", steps=4, name="sweep")
        while sweep.counts()["RUNNING"] < 2:
            time.sleep(0.01)
        filler = _fill(tmpfs)
        sweep.wait(30)
        assert sweep.state is State.DONE
        time.sleep(2)  # the poller keeps trying: ~100 polls
        warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("disk full: ") and "cannot rollback" not in warnings[0]
        # Another process reads the registry meanwhile (read-only: it cannot write either).
        during = _cli(root, "status", "sweep")
        assert during.returncode == 0 and "Traceback" not in during.stderr, during.stderr
        assert "DONE 4" not in during.stdout

        os.unlink(filler)
        deadline = time.monotonic() + 10
        while True:
            after = _cli(root, "status", "sweep")
            if "DONE 4" in after.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "DONE 4" in after.stdout, after.stdout + after.stderr
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(messages) == 2 and "can be written again" in messages[1], messages


def test_close_on_a_full_disk_warns_and_does_not_raise(tmpfs, caplog):
    root = str(tmpfs / "nbdist")
    caplog.set_level(logging.WARNING, logger="nbdist")
    session = Session(parallelism=2, root=root)
    session.submit("true", name="first").wait(30)
    job = session.submit("sleep 0.3", name="second")
    while job.state is not State.RUNNING:
        time.sleep(0.01)
    filler = _fill(tmpfs)
    job.wait(30)
    session.close()  # raised sqlite3.OperationalError before
    assert session.closed
    messages = " | ".join(record.getMessage() for record in caplog.records)
    assert "disk full" in messages and "lost" in messages, messages
    os.unlink(filler)


def _big(size: int) -> bytes:
    return b"x" * size


def test_a_result_that_cannot_be_written_is_a_full_disk_not_a_pickling_error(tmpfs):
    root = str(tmpfs / "nbdist")
    with Session(parallelism=2, root=root) as session, Executor(session=session) as pool:
        assert pool.submit(_big, 3).result(30) == b"xxx"
        filler = _fill(tmpfs)
        os.unlink(filler)
        # Leave less room than the result needs, but enough for the call, its logs and the registry.
        filler = os.path.join(tmpfs, "filler")
        free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
        with open(filler, "wb") as handle:
            handle.write(b"\0" * (free - (2 << 20)))
        future = pool.submit(_big, 4 << 20)
        with pytest.raises(OSError) as caught:
            future.result(60)
        assert not isinstance(caught.value, TypeError)
        assert caught.value.errno == errno.ENOSPC
        assert "disk full" in str(caught.value) and "pickle" not in str(caught.value)
        os.unlink(filler)
