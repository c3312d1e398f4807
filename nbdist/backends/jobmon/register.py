"""Register the ``nbdist`` cluster and its queues in a Jobmon database (Jobmon has no API for it).

Jobmon looks a cluster up in three tables: ``cluster_type`` (the plugin's name, ``nbdist``),
``cluster`` (a name, its type, and ``connection_parameters`` — the distributor's constructor
keywords, e.g. ``{"parallelism": 4}``) and ``queue`` (a name, its cluster, and ``parameters`` — the
resource bounds :class:`nbdist.backends.jobmon.queue.JobmonQueue` checks). :func:`register` writes
them, and updates them when they exist, so running it again only changes the figures::

    python -m nbdist.backends.jobmon.register --db sqlite:////path/jobmon.sqlite --queue null.q

or from Python::

    from nbdist.backends.jobmon.register import register
    register("mysql+pymysql://user:pw@host/jobmon", parallelism=8, queues=["null.q", "long.q"])

Then a workflow uses it with ``cluster_name="nbdist"`` and ``compute_resources={"queue": "null.q"}``.
Needs SQLAlchemy (Jobmon's server uses it; ``pip install nbdist[jobmon]`` brings it).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_QUEUE", "default_queue_parameters", "main", "register"]

CLUSTER_TYPE = "nbdist"
DEFAULT_QUEUE = "null.q"  # the name Jobmon's local clusters use, so a workflow switches by cluster_name alone
# A week: long enough for any local task; Jobmon scales runtime up to this bound on a retry.
DEFAULT_MAX_RUNTIME_S = 7 * 86400


def _machine_memory_gib() -> int:
    try:
        return max(1, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30))
    except (ValueError, OSError, AttributeError):
        return 1024


def default_queue_parameters(parallelism: int, max_memory_gib: float | None = None,
                             max_runtime_s: float | None = None) -> dict[str, list[float]]:
    """Bounds of a queue: 1 … ``parallelism`` cores, 0 … the machine's memory (GiB), 1 s … a week."""
    return {
        "cores": [1, parallelism],
        "memory": [0, max_memory_gib if max_memory_gib is not None else _machine_memory_gib()],
        "runtime": [1, max_runtime_s if max_runtime_s is not None else DEFAULT_MAX_RUNTIME_S],
    }


def register(db: str, *, cluster: str = CLUSTER_TYPE, parallelism: int | None = None,
             queues: Iterable[str] | Mapping[str, Mapping[str, Any]] = (DEFAULT_QUEUE,),
             connection_parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write (or update) the ``nbdist`` cluster type, the cluster ``cluster`` and its queues.

    Parameters
    ----------
    db
        SQLAlchemy URL of the Jobmon database (``JOBMON__DB__SQLALCHEMY_DATABASE_URI``).
    cluster
        The cluster's name, what workflows pass as ``cluster_name``.
    parallelism
        Cores the distributor uses at a time (default: this machine's CPU count).
    queues
        Queue names (bounds from :func:`default_queue_parameters`), or ``{name: parameters}``.
    connection_parameters
        Further constructor keywords of the distributor (``log_dir``, ``kill_grace``).

    Returns
    -------
    dict
        ``{"cluster_type_id", "cluster_id", "queue_ids": {name: id}}``.
    """
    from sqlalchemy import create_engine, text

    parallelism = parallelism or os.cpu_count() or 1
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"parallelism must be a positive integer, not {parallelism!r}")
    if isinstance(queues, Mapping):
        queue_parameters = {name: dict(parameters) for name, parameters in queues.items()}
    else:
        queue_parameters = {name: default_queue_parameters(parallelism) for name in queues}
    if not queue_parameters:
        raise ValueError("register at least one queue")
    connection = json.dumps({**dict(connection_parameters or {}), "parallelism": parallelism})

    engine = create_engine(db)
    try:
        with engine.begin() as conn:
            def one(sql: str, **values: Any) -> Any:
                return conn.execute(text(sql), values).scalar()

            type_id = one("SELECT id FROM cluster_type WHERE name = :name", name=CLUSTER_TYPE)
            if type_id is None:
                conn.execute(text("INSERT INTO cluster_type (name) VALUES (:name)"), {"name": CLUSTER_TYPE})
                type_id = one("SELECT id FROM cluster_type WHERE name = :name", name=CLUSTER_TYPE)
            cluster_id = one("SELECT id FROM cluster WHERE name = :name", name=cluster)
            if cluster_id is None:
                conn.execute(text("INSERT INTO cluster (name, cluster_type_id, connection_parameters) "
                                  "VALUES (:name, :type_id, :params)"),
                             {"name": cluster, "type_id": type_id, "params": connection})
                cluster_id = one("SELECT id FROM cluster WHERE name = :name", name=cluster)
            else:
                conn.execute(text("UPDATE cluster SET cluster_type_id = :type_id, connection_parameters = :params "
                                  "WHERE id = :id"), {"type_id": type_id, "params": connection, "id": cluster_id})
            queue_ids = {}
            for name, parameters in queue_parameters.items():
                # JSON of numbers and lists is also a Python literal: Jobmon reads it with ast.literal_eval.
                values = {"name": name, "cluster_id": cluster_id, "params": json.dumps(parameters)}
                queue_id = one("SELECT id FROM queue WHERE name = :name AND cluster_id = :cluster_id", **values)
                if queue_id is None:
                    conn.execute(text("INSERT INTO queue (name, cluster_id, parameters) "
                                      "VALUES (:name, :cluster_id, :params)"), values)
                    queue_id = one("SELECT id FROM queue WHERE name = :name AND cluster_id = :cluster_id", **values)
                else:
                    conn.execute(text("UPDATE queue SET parameters = :params WHERE id = :id"),
                                 {"params": values["params"], "id": queue_id})
                queue_ids[name] = queue_id
    finally:
        engine.dispose()
    return {"cluster_type_id": type_id, "cluster_id": cluster_id, "queue_ids": queue_ids}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nbdist.backends.jobmon.register --db URL [--queue NAME ...]``."""
    parser = argparse.ArgumentParser(prog="python -m nbdist.backends.jobmon.register",
                                     description="Register the nbdist cluster and its queues in a Jobmon database.")
    parser.add_argument("--db", default=os.environ.get("JOBMON__DB__SQLALCHEMY_DATABASE_URI"),
                        help="SQLAlchemy URL of Jobmon's database (default: $JOBMON__DB__SQLALCHEMY_DATABASE_URI)")
    parser.add_argument("--cluster", default=CLUSTER_TYPE, help="cluster name workflows use (default: nbdist)")
    parser.add_argument("--queue", action="append", dest="queues", metavar="NAME",
                        help=f"a queue to register (repeatable; default: {DEFAULT_QUEUE})")
    parser.add_argument("--parallelism", type=int, default=None, help="cores used at a time (default: CPU count)")
    parser.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                        help="most memory one task may ask for, in GiB (default: the machine's)")
    parser.add_argument("--max-runtime", type=float, default=None, metavar="SECONDS",
                        help=f"longest runtime one task may ask for (default: {DEFAULT_MAX_RUNTIME_S})")
    args = parser.parse_args(argv)
    if not args.db:
        parser.error("--db is required (or set JOBMON__DB__SQLALCHEMY_DATABASE_URI)")
    parallelism = args.parallelism or os.cpu_count() or 1
    parameters = default_queue_parameters(parallelism, args.max_memory, args.max_runtime)
    names = args.queues or [DEFAULT_QUEUE]
    try:
        ids = register(args.db, cluster=args.cluster, parallelism=parallelism,
                       queues={name: parameters for name in names})
    except ValueError as exc:
        parser.error(str(exc))
    print(f"cluster {args.cluster!r} (type nbdist, parallelism {parallelism}) id {ids['cluster_id']}; "
          + ", ".join(f"queue {name!r} id {queue_id}" for name, queue_id in ids["queue_ids"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
