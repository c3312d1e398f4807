"""Notebook functions as jobs: a call, or a map over items, becomes ordinary nbdist work.

A call is pickled (cloudpickle: functions, lambdas and closures defined in the notebook travel by
value) into a call file beside the job's logs, and the job carries it as data, a
:class:`~nbdist.cluster_protocol.pycall.PythonCall` (a backend with warm workers runs it in one; a
scheduler runs its command form); a map writes its function and
shared arguments once and its items once (one pickle each), so every step reads only its own. The
job is then a job like any other — logs, limits, kill, retry, the dashboard — and its handle's
``result()`` reads the value back (:mod:`nbdist.session.outcomes`).

nbdist's options never mix with a function's own keyword arguments: they are fields of
:class:`Options`, given to an :class:`~nbdist.session.executor.Executor` or to :func:`function`
(``@nbdist.function(cores=2)``), and everything passed to ``submit``/``map``/``call`` goes to the
function.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..cluster_protocol.pycall import Call, PythonCall, call_path, chunk_steps, encode_call, encode_items, \
    items_path, write_encoded, write_encoded_items
from ..cluster_protocol.resources import positive_int
from .defaults import current_default, default_session
from .handles import Array, Job
from .records import job_name
from .session import Session
from .sweep import scalar_row

__all__ = ["Options", "RemoteFunction", "call", "function", "grid_rows", "map", "map_call", "resolve_session",
           "submit_call"]


@dataclass(frozen=True)
class Options:
    """nbdist's options of a function's jobs (those of :meth:`nbdist.Session.submit`/``array``)."""

    name: str | None = None
    cores: int = 1
    memory: str | int | None = None
    runtime: str | int | None = None
    after: Any = ()
    max_attempts: int = 1
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    max_concurrent: int | None = None
    resource_scales: Mapping[str, float] | None = field(default=None)
    # Items per step of a map (``f.map``/``f.over``); 1: the Array has one step per item.
    chunksize: int = 1
    # Calls a warm worker makes before it is retired (1: a fresh interpreter per call; None: the backend's
    # default). Only a backend with warm workers (multiprocess) reads it.
    max_calls_per_worker: int | None = None
    # GPUs per job or step: the multiprocess backend gives each its own (CUDA_VISIBLE_DEVICES); Slurm: GRES.
    gpus: int | None = None

    def __str__(self) -> str:
        """The options that differ from the defaults, as ``cores=2 memory='4G'``."""
        defaults = Options()
        return " ".join(f"{key}={value!r}" for key, value in asdict(self).items() if value != getattr(defaults, key))

    def job_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Session.submit`` (a name is chosen separately)."""
        # A shallow copy: asdict's deep copy of env and after cost a tenth of a job's submit, per job
        # (a joblib batch each), and the session copies what it keeps.
        options = {option.name: getattr(self, option.name) for option in fields(self)}
        del options["name"], options["max_concurrent"], options["chunksize"], options["max_calls_per_worker"]
        return options


def resolve_session(session: Session | None, backend: str | None) -> tuple[Session, bool]:
    """The session to run on, and whether the caller made it (and so closes it).

    ``backend`` names another backend than the default session's: a session of it is made on the
    default session's root (one registry, one dashboard).
    """
    if session is not None:
        if backend is not None and backend != session.backend_name:
            raise ValueError(f"backend={backend!r} but the session given runs {session.backend_name!r}")
        return session, False
    current = current_default()
    if backend is None or (current is not None and not current.closed and current.backend_name == backend):
        return default_session(), False
    root = current.root if current is not None else ".nbdist"
    return Session(backend=backend, root=root), True


def _function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9._+=-]", "", name).lstrip("._+=-")[:60] or "function"


def _prepare(session: Session, options: Options, fn: Any) -> tuple[str, str, str]:
    """The job's checked name, its log folder and a token naming its call files."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if options.max_calls_per_worker is not None:
        positive_int(options.max_calls_per_worker, "max_calls_per_worker")
    if session.closed:
        raise RuntimeError("this session is closed")
    name = job_name(options.name or _function_name(fn), "")
    return name, os.path.join(session.root, "logs", name), uuid.uuid4().hex[:12]


def submit_call(session: Session, options: Options, fn: Callable[..., Any], args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> Job:
    """Run ``fn(*args, **kwargs)`` as a job; ``job.result()`` is its return value.

    Raises
    ------
    TypeError
        When the function or an argument cannot be pickled: nothing is written or submitted.
    """
    name, log_dir, token = _prepare(session, options, fn)
    data = encode_call(Call(fn, tuple(args), dict(kwargs), list(sys.path)))
    os.makedirs(log_dir, exist_ok=True)
    path = call_path(log_dir, name, token)
    write_encoded(path, data)
    try:
        return session.submit(PythonCall(path, max_calls_per_worker=options.max_calls_per_worker), name=name,
                              **options.job_options())
    except BaseException:
        os.unlink(path)
        raise


def map_call(session: Session, options: Options, fn: Callable[..., Any], items: Iterable[Any], *,
             args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, spread: str = "",
             chunksize: int | None = None) -> Array:
    """Run ``fn`` once per item as one array: ``fn(item, *args, **kwargs)``.

    ``spread="args"`` calls ``fn(*item, *args, **kwargs)`` (``Executor.map`` over several
    iterables), ``spread="kwargs"`` calls ``fn(*args, **item, **kwargs)`` (a grid's step). The
    function and the shared ``args``/``kwargs`` are pickled once, each item once. Each step runs
    ``chunksize`` consecutive items (default: ``options.chunksize``); a step's ``result()`` is then
    the list of its items' values, and the Array's ``results()`` one value per item. With one step per
    item, items that are dicts of named scalars (a grid's rows) are also the steps' parameters
    (``array.params``): the dashboard's columns, ``--where`` filter and timeline labels, as a shell sweep's.
    """
    chunk = options.chunksize if chunksize is None else chunksize
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunksize must be a whole number >= 1, not {chunk!r}")
    name, log_dir, token = _prepare(session, options, fn)
    call = Call(fn, tuple(args), dict(kwargs or {}), list(sys.path), item_as_kwargs=spread == "kwargs",
                item_as_args=spread == "args", chunk=chunk)
    # A step's parameters (a grid's row, a dict item: the dashboard's columns, as a shell sweep's),
    # noted while the items are pickled: an iterator of items is read once and not kept.
    rows: list[dict[str, Any]] | None = [] if chunk == 1 else None

    def noting_rows(items: Iterable[Any]) -> Iterator[Any]:
        nonlocal rows
        for item in items:
            if rows is not None:
                row = scalar_row(item)
                if row is None:
                    rows = None
                else:
                    rows.append(row)
            yield item

    data, blobs = encode_call(call), encode_items(noting_rows(items))
    if not blobs:
        raise ValueError("a map needs at least one item")
    os.makedirs(log_dir, exist_ok=True)
    paths = call_path(log_dir, name, token), items_path(log_dir, name, token)
    write_encoded(paths[0], data)
    try:
        steps = chunk_steps(write_encoded_items(paths[1], blobs), chunk)
        del blobs  # the items are in their file now: a big map does not hold them twice
        call = PythonCall(*paths, max_calls_per_worker=options.max_calls_per_worker)
        return session.array(call, steps=steps, over=rows, name=name, max_concurrent=options.max_concurrent,
                             **options.job_options())
    except BaseException:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        raise


def grid_rows(over: Any) -> list[dict[str, Any]]:
    """The steps of a grid as keyword arguments: a dict of lists (every combination), a list of
    dicts, or a pandas DataFrame (one step per row)."""
    if hasattr(over, "to_dict") and hasattr(over, "columns"):
        return [{str(key): value for key, value in row.items()} for row in over.to_dict("records")]
    if isinstance(over, Mapping):
        keys = [str(key) for key in over]
        columns = [list(values) for values in over.values()]
        return [dict(zip(keys, combination)) for combination in itertools.product(*columns)]
    rows = [dict(row) for row in over]
    if any(set(row) != set(rows[0]) for row in rows):
        raise ValueError("over=: every row must name the same parameters")
    return rows


class RemoteFunction:
    """A function with nbdist options: ``f(...)`` runs here, ``f.submit``/``map``/``over`` as jobs.

    Made by :func:`function` (``@nbdist.function(cores=2, memory="4G")``).
    """

    def __init__(self, fn: Callable[..., Any], options: Options, session: Session | None = None,
                 backend: str | None = None) -> None:
        self.function = fn
        self.options = options
        self._session, self._backend = session, backend
        self.__name__ = getattr(fn, "__name__", "function")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def session(self) -> Session:
        """The session this function's jobs run on (made or found on first use)."""
        if self._session is None or self._session.closed:
            self._session = resolve_session(None, self._backend)[0]
        return self._session

    def submit(self, *args: Any, **kwargs: Any) -> Job:
        """``f(*args, **kwargs)`` as a job: ``job.result()`` is the return value."""
        return submit_call(self.session(), self.options, self.function, args, kwargs)

    def map(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> Array:
        """``f(item, *args, **kwargs)`` for each item, as one array (shared arguments pickled once)."""
        return map_call(self.session(), self.options, self.function, items, args=args, kwargs=kwargs)

    def over(self, grid: Any, **kwargs: Any) -> Array:
        """``f(**params, **kwargs)`` for each step of a grid (see :func:`grid_rows`), as one array."""
        return map_call(self.session(), self.options, self.function, grid_rows(grid), kwargs=kwargs,
                        spread="kwargs")

    def __repr__(self) -> str:
        return f"<nbdist.function {self.__name__} {self.options}>".replace(" >", ">")


def function(fn: Callable[..., Any] | None = None, *, session: Session | None = None, backend: str | None = None,
             **options: Any) -> Any:
    """Give a function nbdist options: ``@nbdist.function`` or ``@nbdist.function(cores=2, memory="4G")``.

    ``options`` are the fields of :class:`Options` (name, cores, memory, runtime, after,
    max_attempts, env, cwd, max_concurrent, resource_scales, chunksize, gpus, max_calls_per_worker); the decorated ``f`` still runs here
    when called, ``f.submit(...)``, ``f.map(items, ...)`` and ``f.over(grid, ...)`` run it as jobs.
    """
    checked = Options(**options)
    if fn is None:
        return lambda inner: RemoteFunction(inner, checked, session, backend)
    return RemoteFunction(fn, checked, session, backend)


def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
    """``fn(*args, **kwargs)`` as a job on the default session with default options (every keyword
    goes to ``fn``; options come from :func:`function` or an Executor)."""
    return submit_call(default_session(), Options(), fn, args, kwargs)


def map(fn: Callable[..., Any], items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Array:  # noqa: A001
    """``fn(item, *args, **kwargs)`` for each item, as one array on the default session."""
    return map_call(default_session(), Options(), fn, items, args=args, kwargs=kwargs)
