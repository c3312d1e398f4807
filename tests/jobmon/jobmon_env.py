"""Jobmon for nbdist's tests: the snapshot in ``../shared/jobmon`` installed in a cached venv.

- :func:`jobmon_venv` builds (once) ``~/.cache/nbdist/jobmon-venv-<hash>``: the snapshot extracted
  under ``src/``, a venv with jobmon_core, jobmon_server, jobmon_client (editable: Jobmon finds its
  package data only so), Jobmon's test dependencies, and this nbdist (editable in *compat* mode:
  Jobmon finds plugins with ``pkgutil.iter_modules``, which sees path entries, not setuptools'
  editable finders). The hash covers the tarball, this pyproject and this repo's path.
- :func:`prepare_jobmon_tests` copies Jobmon's tests to a fresh folder with nbdist's plugin in the
  place of Jobmon's multiprocess plugin (:data:`SUBSTITUTIONS`).
- :class:`LocalJobmon` runs a Jobmon server on a SQLite file, with the ``nbdist`` cluster registered.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
SHARED_JOBMON = REPO.parent / "shared" / "jobmon"
CACHE = Path(os.environ.get("NBDIST_CACHE", Path.home() / ".cache" / "nbdist"))
JOBMON_VERSION = "3.7.0.dev11"  # what the snapshot builds as (it has no .git for setuptools-scm)
TEST_DEPS = ["pytest", "pytest-asyncio>=1.0.0", "mock", "filelock", "pytest-mock", "pytest-timeout"]

# Jobmon's tests name their cluster and import their distributor; in the copy, both become nbdist's.
SUBSTITUTIONS = [
    (r"from jobmon\.plugins\.multiprocess\.multiproc_distributor import MultiprocessDistributor",
     "from jobmon.plugins.nbdist import JobmonDistributor as MultiprocessDistributor"),
    (r'"jobmon\.plugins\.multiprocess\.multiproc_distributor\."(\s*)"MultiprocessDistributor\.',
     r'"nbdist.backends.jobmon.distributor."\1"JobmonDistributor.'),
    (r'"multiprocess"', '"nbdist"'),
]
# After Jobmon's test database is made, the nbdist cluster gets a queue like Jobmon's multiprocess one.
REGISTER_HOOK = (
    "    init_db()\n",
    "    init_db()\n"
    "    from nbdist.backends.jobmon.register import register\n"
    "    register(db_uri, parallelism=3, queues={'null.q': {'cores': [1, 20]}})\n",
)


def tarball() -> Path | None:
    """The Jobmon snapshot, None when ``../shared/jobmon`` is absent."""
    found = sorted(SHARED_JOBMON.glob("jobmon-*.tar.gz")) if SHARED_JOBMON.is_dir() else []
    return found[-1] if found else None


def venv_dir(archive: Path) -> Path:
    digest = hashlib.sha256()
    digest.update(archive.read_bytes())
    digest.update((REPO / "pyproject.toml").read_bytes())
    digest.update(str(REPO).encode())
    return CACHE / f"jobmon-venv-{digest.hexdigest()[:12]}"


def _run(command: list[str], log: Path, **kwargs) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, **kwargs)


def _cached_venv(root: Path, install: Callable[[list[str], Path], None]) -> Path:
    """``root`` with a ready ``venv/`` in it, built once by ``install(pip command, log)``; later calls reuse it."""
    ready = root / ".ready"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse it
        if ready.exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log = root / "install.log"
        base = sys._base_executable if hasattr(sys, "_base_executable") else sys.executable
        _run([base, "-m", "venv", str(root / "venv")], log)
        install([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"], log)
        ready.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        return root


def jobmon_venv(archive: Path) -> Path:
    """The cached venv's folder (``src/``: the snapshot, ``venv/``: the environment); ~2 min to build."""
    root = venv_dir(archive)

    def install(pip: list[str], log: Path) -> None:
        with tarfile.open(archive) as tar:
            tar.extractall(root / "src", filter="data")
        env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION": JOBMON_VERSION}
        _run(pip + ["--upgrade", "pip", "setuptools", "setuptools-scm", "wheel"], log, env=env)
        for package in ("jobmon_core", "jobmon_server", "jobmon_client"):
            _run(pip + ["-e", str(root / "src" / package)], log, env=env)
        _run(pip + TEST_DEPS, log, env=env)
        _run(pip + ["-e", str(REPO), "--config-settings", "editable_mode=compat"], log, env=env)

    return _cached_venv(root, install)


PYPI_CORE = "jobmon-core==3.4.8"  # the seed's version; PyPI's client and server do not fit it (see ../shared/jobmon)


def pypi_core_venv() -> Path:
    """A cached venv with PyPI's :data:`PYPI_CORE` and this nbdist (compat-editable), no server; ~1 min."""
    digest = hashlib.sha256(f"{PYPI_CORE} {REPO}".encode())
    digest.update((REPO / "pyproject.toml").read_bytes())

    def install(pip: list[str], log: Path) -> None:
        _run(pip + [PYPI_CORE], log)
        _run(pip + ["-e", str(REPO), "--config-settings", "editable_mode=compat"], log)

    return _cached_venv(CACHE / f"jobmon-core-venv-{digest.hexdigest()[:12]}", install)


def venv_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment to run the venv's Python with: its bin first on PATH (Jobmon's entry points)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBMON__")}
    env.pop("PYTEST_ADDOPTS", None)
    env["PATH"] = f"{root / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(root / "venv")
    env.update(extra)
    return env


def prepare_jobmon_tests(root: Path, destination: Path) -> dict[str, int]:
    """Copy Jobmon's tests (and its pytest settings) to ``destination``, nbdist in multiprocess's place.

    Returns how many substitutions each pattern made (all must be non-zero, or Jobmon's tests changed).
    """
    source = root / "src"
    shutil.copytree(source / "tests", destination / "tests")
    shutil.copy(source / "pyproject.toml", destination / "pyproject.toml")
    counts = {pattern: 0 for pattern, _ in SUBSTITUTIONS}
    for path in (destination / "tests").rglob("*.py"):
        text = path.read_text()
        for pattern, replacement in SUBSTITUTIONS:
            text, made = re.subn(pattern, replacement, text)
            counts[pattern] += made
        path.write_text(text)
    database = destination / "tests" / "fixtures" / "database.py"
    text = database.read_text()
    if REGISTER_HOOK[0] not in text or "db_uri" not in text:
        raise RuntimeError("Jobmon's tests/fixtures/database.py changed: nbdist cannot register its cluster there")
    database.write_text(text.replace(REGISTER_HOOK[0], REGISTER_HOOK[1], 1))
    counts["register hook"] = 1
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalJobmon:
    """A Jobmon server on a SQLite file in ``folder``, the ``nbdist`` cluster registered; a context manager.

    ``env`` is what a client needs (database, service URL, short heartbeats, no auth).

    Jobmon's server on SQLite can stall for ~25 s under load: its ``async`` routes make blocking
    database calls on the event loop, so when one of them waits for the database lock held by a
    request whose commit needs that same loop, it waits out SQLite's busy timeout five times (seen
    here as ``database is locked`` in ``server.log``, then 503). Jobmon's own test settings (1 s
    heartbeats, no HTTP retries) turn such a stall into task instances lost ``X`` and a client that
    gives up; a real deployment retries and has long heartbeats. So the workflow run syncs every
    ``heartbeat_s`` (fast), while a task instance may miss ``task_heartbeat_s`` × 3.1 s of reports
    (31 s by default, longer than a stall) and a client retries a failed request for ``retries_s``.
    """

    def __init__(self, root: Path, folder: Path, parallelism: int = 2, heartbeat_s: int = 1,
                 queues: dict | None = None, poll_s: int = 1, task_heartbeat_s: int = 10,
                 retries_s: int = 120) -> None:
        self.root = root
        self.folder = folder
        self.python = str(root / "venv" / "bin" / "python")
        self.port = free_port()
        database = folder / "jobmon.sqlite"
        self.db_url = f"sqlite:////{database.resolve()}"
        self.env = venv_env(
            root,
            JOBMON__DB__SQLALCHEMY_DATABASE_URI=self.db_url,
            JOBMON__DB__SQLALCHEMY_CONNECT_ARGS="{}",
            JOBMON__HTTP__SERVICE_URL=f"http://127.0.0.1:{self.port}",
            JOBMON__HTTP__ROUTE_PREFIX="/api/v3",
            JOBMON__AUTH__ENABLED="false",
            JOBMON__SESSION__SECRET_KEY="test",
            JOBMON__HTTP__RETRIES_TIMEOUT=str(retries_s),
            JOBMON__DISTRIBUTOR__POLL_INTERVAL=str(poll_s),
            JOBMON__HEARTBEAT__WORKFLOW_RUN_INTERVAL=str(heartbeat_s),
            JOBMON__HEARTBEAT__TASK_INSTANCE_INTERVAL=str(max(heartbeat_s, task_heartbeat_s)),
        )
        self.parallelism = parallelism
        self.queues = queues
        self.server: subprocess.Popen | None = None

    def python_run(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``code`` with the venv's Python in this server's environment."""
        return subprocess.run([self.python, "-c", code], env=self.env, cwd=self.folder, capture_output=True,
                              text=True, timeout=timeout)

    def __enter__(self) -> "LocalJobmon":
        self.folder.mkdir(parents=True, exist_ok=True)
        queues = self.queues if self.queues is not None else ["null.q"]
        setup = self.python_run(
            "from jobmon.server.web.db import init_db; init_db()\n"
            "from nbdist.backends.jobmon.register import register\n"
            f"register({self.db_url!r}, parallelism={self.parallelism}, queues={queues!r})\n")
        if setup.returncode:
            raise RuntimeError(f"cannot make Jobmon's database: {setup.stderr[-3000:]}")
        self.log = open(self.folder / "server.log", "w")
        self.server = subprocess.Popen(
            [self.python, "-m", "uvicorn", "--factory", "jobmon.server.web.api:get_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            env=self.env, cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"Jobmon's server exited: {(self.folder / 'server.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("Jobmon's server did not listen within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None
            self.log.close()
