"""The SQLite registry: WAL, busy timeout, batched writes, compact arrays; and the backend registry."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from nbdist import Session, State
from nbdist.backends import available_backends, load_backend
from nbdist.session.registry import Registry


def test_wal_and_busy_timeout(tmp_path):
    registry = Registry(str(tmp_path))
    assert registry.query("PRAGMA journal_mode")[0][0] == "wal"
    assert registry.query("PRAGMA busy_timeout")[0][0] >= 5000
    registry.close()


def test_a_second_writer_waits_instead_of_failing(tmp_path):
    first, second = Registry(str(tmp_path)), Registry(str(tmp_path))
    first.add_session("a", "multiprocess")
    ids = []
    with first.transaction():  # hold the write lock for a moment
        writer = threading.Thread(target=lambda: ids.append(second.add_job(
            {"name": "x", "kind": "job", "command": "true", "backend": "multiprocess", "n_steps": 1})))
        writer.start()
        time.sleep(0.3)
        assert ids == []
    writer.join(5)
    assert len(ids) == 1 and first.jobs()[0]["name"] == "x"
    first.close()
    second.close()


def test_a_big_array_is_one_row_and_polls_write_in_batches(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        big = session.array("sleep 5", steps=5_000, name="big", max_concurrent=1)
        assert session.registry.query("SELECT COUNT(*) FROM steps")[0][0] <= 1
        big.cancel()
        assert big.wait(30) is State.KILLED

        writes: list[int] = []
        original = session.registry.write

        def counting(steps, attempts, job_updates=()):
            writes.append(len(steps))
            original(steps, attempts, job_updates)

        session.registry.write = counting  # a spy on the one write method: the rows still land in SQLite
        arr = session.array("true", steps=300, name="many")
        assert arr.wait(30) is State.DONE
        session.poll()
        assert not arr.record.usage  # usage lives in the registry once written, not in the kernel's memory
        assert arr[7].usage["wall_s"] >= 0
    steps_written = [count for count in writes if count]
    assert sum(steps_written) >= 300
    assert len(steps_written) < 300 / 5, steps_written  # transactions carry many steps each
    db = sqlite3.connect(str(tmp_path / "root" / "registry.db"))
    try:
        done = db.execute("SELECT COUNT(*) FROM steps WHERE state = 'DONE' AND job_id = ?", (int(arr.id),))
        assert done.fetchone()[0] == 300
        attempts = db.execute("SELECT COUNT(*) FROM attempts WHERE job_id = ?", (int(arr.id),)).fetchone()[0]
        assert attempts == 300
    finally:
        db.close()


def test_backend_plugins_through_entry_points(tmp_path, monkeypatch, caplog):
    dist = tmp_path / "fakeplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[nbdist.backends]\nbroken = no_such_module_anywhere:Distributor\n"
        "local2 = nbdist.multiprocess:MultiprocessDistributor\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"multiprocess", "slurm", "broken", "local2"} <= set(available_backends())
    with caplog.at_level(logging.WARNING, logger="nbdist.backends"):
        with pytest.raises(ValueError, match="backend plugin 'broken' failed to load"):
            load_backend("broken")
    assert "no_such_module_anywhere" in caplog.text
    with pytest.raises(ValueError, match="unknown backend 'nope'; available: .*multiprocess"):
        load_backend("nope")
    with Session(backend="local2", parallelism=1, root=str(tmp_path / "root")) as session:
        assert session.backend_name == "local2"
        assert session.submit("echo plugin").wait(10) is State.DONE


def test_snapshot_of_a_10k_array_is_cheap(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        arr = session.array("sleep 5", steps=10_000, name="wide", max_concurrent=2)
        costs = []
        for page in range(30):
            started = time.perf_counter()
            snap = session.snapshot(arr, page=page, tail_lines=20)
            costs.append(time.perf_counter() - started)
        assert snap.total == 10_000 and len(snap.rows) == 50 and snap.pages == 200
        arr.cancel()
        arr.wait(30)
    costs.sort()
    assert costs[len(costs) // 2] < 0.010, costs


def test_a_failed_registry_write_is_kept_for_the_next_poll(tmp_path):
    with Session(parallelism=2, root=str(tmp_path / "root")) as session:
        original = session.registry.write
        failures = []

        def locked_once(steps, attempts, job_updates=()):
            if not failures and steps:
                failures.append(len(steps))
                raise sqlite3.OperationalError("database is locked")
            original(steps, attempts, job_updates)

        session.registry.write = locked_once  # one real failure mode of SQLite, raised once
        job = session.submit("echo kept", name="kept")
        assert job.wait(10) is State.DONE
        session.poll()
    assert failures
    db = sqlite3.connect(str(tmp_path / "root" / "registry.db"))
    try:
        row = db.execute("SELECT state, exit_code FROM steps WHERE job_id = ?", (int(job.id),)).fetchone()
        attempts = db.execute("SELECT COUNT(*) FROM attempts WHERE job_id = ?", (int(job.id),)).fetchone()[0]
    finally:
        db.close()
    assert row == ("DONE", 0) and attempts == 1


def test_a_registry_from_an_earlier_schema_is_brought_up_to_date(tmp_path):
    db = sqlite3.connect(str(tmp_path / "registry.db"))
    db.execute("CREATE TABLE steps (job_id INTEGER, idx INTEGER, step INTEGER, state TEXT, distributor_id TEXT, "
               "attempt INTEGER, exit_code INTEGER, message TEXT, runtime_s REAL, max_rss_mb REAL, usage TEXT, "
               "started REAL, ended REAL, PRIMARY KEY (job_id, idx)) WITHOUT ROWID")
    db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, pid INTEGER, host TEXT, started REAL, create_time REAL, "
               "backend TEXT, closed REAL)")
    db.commit()
    db.close()
    with Session(parallelism=1, root=str(tmp_path)) as session:
        assert session.submit("echo still works", name="old").wait(10) is State.DONE
        assert session.get("old").stdout() == "still works\n"
