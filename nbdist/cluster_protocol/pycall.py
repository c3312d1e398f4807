"""Python calls as tasks: the files a call travels in, and the command that runs one.

A function call (or one step of a map) is a task that carries a :class:`PythonCall` (data: its call
and items files, its interpreter) from the session to the backend. A backend that runs calls itself
(the multiprocess backend: a warm worker interpreter) is given that object; any other runs its
command form, ``python -m nbdist.backends._task.pycall CALL [ITEMS]``, like any command. Either way
logs, limits, kill, usage and exit codes are the same as for shell work. The files live beside the
job's logs::

    {log_dir}/{stem}.c{job}      the call: function, shared args/kwargs, the kernel's sys.path   (once)
    {log_dir}/{stem}.i{job}      a map's items, one pickle each behind an offset table            (once)
    {log_dir}/{stem}.r{task id}  the outcome of one task: its value, or the exception it raised

A map's shared arguments and its function are written once, not once per step; a step reads only
its own item (it seeks to it). An outcome is written by streaming the pickle to the file, and read
the same way, so a 100 MB result is never held twice as bytes.

A chunked map (``Call.chunk`` > 1) runs ``chunk`` consecutive items per step: step ``s`` runs
:func:`chunk_range` ``(s, chunk, count)``, the one rule both sides use, and its outcome holds one
entry per item, each the item's value or its exception, in item order.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .naming import log_file
from .tracebacks import code_sources, restore_sources, user_traceback

__all__ = ["CALL_MODULE", "CELL_PARAMS", "Call", "Cell", "ChunkOutcome", "PythonCall", "RemoteError", "RemoteTraceback",
           "call_command", "call_path", "chunk_range", "chunk_steps", "encode_call", "encode_items", "item_count",
           "items_path", "outcome_kind", "read_call", "read_chunk", "read_item", "read_items", "read_sys_path",
           "read_outcome", "read_outcomes", "result_path", "result_path_for", "step_index", "write_call",
           "write_encoded", "write_encoded_items", "write_error", "write_items", "write_value"]

# The module that runs a call on the task's side (by name: the protocol imports no backend).
CALL_MODULE = "nbdist.backends._task.pycall"
# Exit code of a task whose function raised (as the interpreter's own for an uncaught exception).
RAISED_EXIT_CODE = 1
_OFFSET = struct.Struct("<Q")


class RemoteTraceback(Exception):
    """The traceback printed on the task's side, as the ``__cause__`` of the exception re-raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class RemoteError(Exception):
    """An exception raised by a task's function that could not travel back as itself.

    ``type_name`` is the qualified name of the original type and ``remote_traceback`` the traceback
    printed on the task's side (also in its stderr log).
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.type_name, str(self).partition(": ")[2], self.remote_traceback))


@dataclass
class Call:
    """What a task needs to make one call: ``function(*args, item?, **kwargs)``."""

    function: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    sys_path: list[str] = field(default_factory=list)
    # For a map: the item is passed as the first positional argument (before ``args``), as the
    # keyword arguments themselves when ``item_as_kwargs`` (a grid's step: its parameters by name),
    # or spread as the first positional arguments when ``item_as_args`` (``Executor.map`` over
    # several iterables: the item is the tuple of their values).
    item_as_kwargs: bool = False
    item_as_args: bool = False
    # Items per step of a map (1: one step per item, whose outcome is that item's alone).
    chunk: int = 1
    # The real file names of the notebook functions' code (cloudpickle renames them) and those files'
    # lines, from the kernel's linecache: set by encode_call, applied by read_call (see .tracebacks).
    code_files: dict[Any, str] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def arguments(self, item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments of the call of one item of a map."""
        if self.item_as_kwargs:
            return self.args, {**self.kwargs, **item}
        if self.item_as_args:
            return (*item, *self.args), self.kwargs
        return (item, *self.args), self.kwargs


# The name under which a cell's body finds its parameters (``{{lr}}`` becomes ``__nbdist_params__['lr']``).
CELL_PARAMS = "__nbdist_params__"


@dataclass
class Cell:
    """A notebook cell's body as a function: run it, return the value of its last expression.

    As IPython shows a cell's value: the last statement, if it is an expression and the body does
    not end with ``;``, is the value; otherwise None. ``inputs`` are the kernel variables shipped
    with the cell (``--in``); ``params`` a step's parameters, read by the body as ``CELL_PARAMS[name]``.
    The body runs as ``__main__``.
    """

    source: str
    filename: str = "<cell>"

    def __call__(self, inputs: dict[str, Any], /, **params: Any) -> Any:
        import ast
        import builtins
        import linecache

        # The traceback of a raise in the body then shows its lines, in the task's stderr and here.
        linecache.cache[self.filename] = (len(self.source), None, self.source.splitlines(True), self.filename)
        tree = ast.parse(self.source, self.filename)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not self.source.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        namespace = {"__name__": "__main__", "__builtins__": builtins, **inputs, CELL_PARAMS: params}
        exec(compile(tree, self.filename, "exec"), namespace)
        return None if last is None else eval(compile(last, self.filename, "eval"), namespace)


def _dumps(value: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _dump(value: Any, handle: io.BufferedWriter) -> None:
    import cloudpickle

    cloudpickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _write_atomic(path: str, write: Any) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def call_path(log_dir: str, name: str, job_id: str) -> str:
    """Where a job's call is written."""
    return log_file(log_dir, name, "c", job_id)


def items_path(log_dir: str, name: str, job_id: str) -> str:
    """Where a map's items are written."""
    return log_file(log_dir, name, "i", job_id)


def result_path(log_dir: str, name: str, distributor_id: str) -> str:
    """Where the task ``distributor_id`` writes its outcome."""
    return log_file(log_dir, name, "r", distributor_id)


def result_path_for(call_file: str, distributor_id: str) -> str:
    """The outcome path of task ``distributor_id`` of the job whose call is ``call_file`` (its folder, its stem)."""
    folder, base = os.path.split(call_file)
    stem, sep, _job = base.rpartition(".c")
    if not sep:
        raise ValueError(f"{call_file} is not a call file")
    return log_file(folder, stem, "r", distributor_id)


def encode_call(call: Call) -> bytes:
    """The bytes of a call file; raises ``TypeError`` naming what could not be pickled.

    A header comes first, as a plain pickle: the kernel's ``sys.path``, which the task applies before
    it unpickles the function (it may be a reference to a module only that path reaches), and the
    map's ``chunk``, which the kernel reads without unpickling the function (:func:`read_chunk`).
    """
    if not call.code_files:
        call.code_files, call.sources = code_sources(call.function)
    try:
        data = _dumps(call)
    except Exception as exc:  # cloudpickle raises TypeError, PicklingError, AttributeError, …
        raise TypeError(f"the function or its arguments cannot be pickled: {exc}") from exc
    return pickle.dumps({"sys_path": list(call.sys_path), "chunk": call.chunk}, pickle.HIGHEST_PROTOCOL) + data


def encode_items(items: Iterable[Any]) -> list[bytes]:
    """Each item pickled on its own; raises ``TypeError`` naming the first that cannot be."""
    blobs = []
    for index, item in enumerate(items):
        try:
            blobs.append(_dumps(item))
        except Exception as exc:
            raise TypeError(f"item {index} cannot be pickled: {exc}") from exc
    return blobs


def write_encoded(path: str, data: bytes) -> None:
    """Write the bytes of :func:`encode_call` to ``path`` (atomically)."""
    _write_atomic(path, lambda handle: handle.write(data))


def write_encoded_items(path: str, blobs: Sequence[bytes]) -> int:
    """Write items of :func:`encode_items` behind an offset table, so a step reads only its own; the count."""

    def write(handle: io.BufferedWriter) -> None:
        handle.write(_OFFSET.pack(len(blobs)))
        offset = _OFFSET.size * (len(blobs) + 1)
        for blob in blobs:
            handle.write(_OFFSET.pack(offset))
            offset += len(blob)
        for blob in blobs:
            handle.write(blob)

    _write_atomic(path, write)
    return len(blobs)


def write_call(path: str, call: Call) -> None:
    """Pickle ``call`` to ``path``; raises ``TypeError`` (nothing written) if it cannot be pickled."""
    write_encoded(path, encode_call(call))


def write_items(path: str, items: Iterable[Any]) -> int:
    """Pickle each item on its own behind an offset table; the count (nothing written if one fails)."""
    return write_encoded_items(path, encode_items(items))


def read_call(path: str, apply_environment: bool = False) -> Call:
    """The call written by :func:`write_call`.

    With ``apply_environment`` (the task's side), the kernel's ``sys.path`` entries this process lacks
    are put in front of its own before the function is unpickled, and the notebook's lines the call
    ships are given back to its functions (so a traceback shows them).
    """
    with open(path, "rb") as handle:
        sys_path = pickle.load(handle)["sys_path"]
        if apply_environment:
            sys.path[:0] = [entry for entry in sys_path if entry not in sys.path]
        call: Call = pickle.load(handle)
    if apply_environment:
        restore_sources(call.function, call.code_files, call.sources)
    return call


def read_sys_path(path: str) -> list[str]:
    """The kernel's ``sys.path`` a call file was written with (its header only: no function unpickled)."""
    with open(path, "rb") as handle:
        return list(pickle.load(handle)["sys_path"])


def read_chunk(path: str) -> int:
    """The items per step of the map whose call file is ``path`` (its header only: no function unpickled)."""
    with open(path, "rb") as handle:
        return int(pickle.load(handle)["chunk"])


def chunk_steps(count: int, chunk: int) -> int:
    """How many steps a map of ``count`` items runs with ``chunk`` items per step."""
    return -(-count // chunk)


def chunk_range(step: int, chunk: int, count: int) -> range:
    """The items step ``step`` of a map of ``count`` items runs: ``chunk`` consecutive ones (fewer in the last)."""
    if not 0 <= step < chunk_steps(count, chunk):
        raise IndexError(f"step {step} of a map of {count} items, {chunk} per step")
    return range(step * chunk, min(count, (step + 1) * chunk))


def item_count(path: str) -> int:
    """How many items a map's items file holds."""
    with open(path, "rb") as handle:
        return int(_OFFSET.unpack(handle.read(_OFFSET.size))[0])


def read_items(path: str, indices: range) -> Iterator[Any]:
    """Items ``indices`` of a map, one at a time, read without reading the others."""
    with open(path, "rb") as handle:
        (count,) = _OFFSET.unpack(handle.read(_OFFSET.size))
        for index in indices:
            if not 0 <= index < count:
                raise IndexError(f"item {index} of {count}")
            handle.seek(_OFFSET.size * (index + 1))
            (offset,) = _OFFSET.unpack(handle.read(_OFFSET.size))
            handle.seek(offset)
            yield pickle.load(handle)


def read_item(path: str, index: int) -> Any:
    """Item ``index`` of a map, read without reading the others."""
    return next(read_items(path, range(index, index + 1)))


def step_index(environ: Any = None) -> int:
    """The item of a map this task runs: ``NBDIST_STEP`` when set (a retry sets it), else the
    backend's array index (``ARRAY_STEP_ID``, Slurm's ``SLURM_ARRAY_TASK_ID``); no shell prologue needed."""
    env = os.environ if environ is None else environ
    for key in ("NBDIST_STEP", "ARRAY_STEP_ID", "SLURM_ARRAY_TASK_ID"):
        if env.get(key):
            return int(env[key])
    raise LookupError("this task is not a step of an array: no NBDIST_STEP, ARRAY_STEP_ID or SLURM_ARRAY_TASK_ID")


def write_value(path: str, value: Any) -> None:
    """Stream the function's return value to ``path`` (raises if it cannot be pickled; nothing is left)."""
    _write_atomic(path, lambda handle: (handle.write(b"V"), _dump(value, handle)))


def _error_data(exc: BaseException) -> bytes:
    """The exception a function raised with its traceback, pickled: as itself when it travels, else as a
    :class:`RemoteError`."""
    text = user_traceback(exc)
    exc.__traceback__ = None  # frames hold locals that need not (or cannot) travel
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    try:
        data = _dumps((exc, text))
        pickle.loads(data)  # an exception can pickle but fail to unpickle (a custom __init__)
    except Exception:
        data = _dumps((RemoteError(kind, str(exc), text), text))
    return data


def write_error(path: str, exc: BaseException) -> None:
    """Write the exception a function raised, as itself when it pickles, else as a :class:`RemoteError`."""
    data = _error_data(exc)
    _write_atomic(path, lambda handle: (handle.write(b"E"), handle.write(data)))


# The first byte of an outcome file: one call's value or exception; a chunk whose items all returned,
# or one where some item raised (written last, so the kind is known without unpickling anything).
_KINDS = {b"V": "value", b"E": "error", b"C": "value", b"F": "error"}


class ChunkOutcome:
    """The outcome of a chunk step, written item by item (each value streamed, the file replaced at the end).

    Used as a context manager: the file appears when the block ends normally; an exception that
    leaves it (``sys.exit`` in an item, say) leaves no outcome at all, as for a single call.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.raised = False
        self._temporary = f"{path}.tmp{os.getpid()}"
        self._handle = open(self._temporary, "wb")
        self._handle.write(b"?")

    def value(self, value: Any) -> None:
        """Stream an item's value; raises (nothing of it kept) if it cannot be pickled."""
        start = self._handle.tell()
        try:
            self._handle.write(b"V")
            _dump(value, self._handle)
        except BaseException:
            self._handle.seek(start)
            self._handle.truncate()
            raise

    def error(self, exc: BaseException) -> None:
        """Write the exception an item raised (see :func:`write_error`)."""
        self.raised = True
        self._handle.write(b"E" + _error_data(exc))

    def __enter__(self) -> ChunkOutcome:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self._handle.seek(0)
            self._handle.write(b"F" if self.raised else b"C")
        self._handle.close()
        if kind is None:
            os.replace(self._temporary, self.path)
        else:
            os.unlink(self._temporary)


def outcome_kind(path: str) -> str | None:
    """``"value"``, ``"error"`` (a chunk: some item raised), or None when there is no outcome file
    (nothing is unpickled)."""
    try:
        with open(path, "rb") as handle:
            kind = handle.read(1)
    except FileNotFoundError:
        return None
    return _KINDS.get(kind)


def _entry(kind: bytes, handle: Any) -> tuple[bool, Any]:
    if kind == b"V":
        return True, pickle.load(handle)
    exc, text = pickle.load(handle)
    exc.__cause__ = RemoteTraceback(text)
    return False, exc


def read_outcomes(path: str) -> Iterator[tuple[bool, Any]]:
    """Each item's ``(True, value)`` or ``(False, exception)``, in item order, read one at a time: one
    entry for a single call's outcome, one per item for a chunk's."""
    with open(path, "rb") as handle:
        kind = handle.read(1)
        if kind not in _KINDS:
            raise ValueError(f"{path} is not an nbdist result file")
        if kind in (b"V", b"E"):
            yield _entry(kind, handle)
            return
        while kind := handle.read(1):
            yield _entry(kind, handle)


def read_outcome(path: str) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, exception)`` from a task's outcome file; for a chunk, ``(True, [each
    item's value])`` or its first item's exception.

    The exception carries the remote traceback as its ``__cause__`` (a :class:`RemoteTraceback`),
    as ``concurrent.futures.ProcessPoolExecutor`` does.
    """
    with open(path, "rb") as handle:
        chunk = handle.read(1) in (b"C", b"F")
    values = []
    for ok, value in read_outcomes(path):
        if not ok or not chunk:
            return ok, value
        values.append(value)
    return True, values


@dataclass(frozen=True)
class PythonCall:
    """A Python call as data: what a task runs, carried on the job's record and the backend's task spec.

    ``call`` is the call file, ``items`` a map's items file (None for one call), ``python`` the
    interpreter that runs it (the kernel's). ``max_calls_per_worker`` asks a backend with warm workers
    to retire the worker that ran this call once it has made that many calls (1: a fresh interpreter
    for this call alone); None leaves it to the backend's own default. A backend that runs calls itself
    (one that sets ``TAKES_PYTHON_CALLS = True``, the multiprocess backend) is given this object; any
    other runs :meth:`command`, the one command form (a scheduler needs a command line).
    """

    call: str
    items: str | None = None
    python: str = field(default_factory=lambda: sys.executable)
    max_calls_per_worker: int | None = None

    def command(self) -> str:
        """The shell command that runs the call with ``python`` (Slurm, Jobmon: any backend)."""
        return call_command(self.call, self.items, self.python)

    def result_path(self, distributor_id: str) -> str:
        """Where task ``distributor_id`` of this call writes its outcome."""
        return result_path_for(self.call, distributor_id)

    def to_json(self) -> dict[str, Any]:
        """The call as JSON-able data (a registry row keeps it, so an attached session knows it)."""
        return {key: value for key, value in (("call", self.call), ("items", self.items), ("python", self.python),
                                              ("max_calls_per_worker", self.max_calls_per_worker))
                if value is not None}

    @classmethod
    def from_json(cls, data: Any) -> "PythonCall | None":
        """The call :meth:`to_json` gave (None for None: shell work)."""
        if not data:
            return None
        return cls(str(data["call"]), data.get("items"), str(data.get("python") or sys.executable),
                   data.get("max_calls_per_worker"))


_UNBUFFERED = "PYTHONUNBUFFERED=1"


def call_command(call: str, items: str | None = None, python: str | None = None) -> str:
    """The shell command that runs a call (and, for a map, the step's item) with ``python``.

    ``python`` defaults to this interpreter (``sys.executable``), so the task sees the kernel's
    packages; ``PYTHONUNBUFFERED=1`` makes its prints reach the log as they happen. Nothing parses
    it back: a backend that runs calls warm is given the :class:`PythonCall` itself.
    """
    import shlex

    words: Sequence[str] = [python or sys.executable, "-m", CALL_MODULE, call] + ([items] if items else [])
    return f"{_UNBUFFERED} exec " + " ".join(shlex.quote(word) for word in words)
