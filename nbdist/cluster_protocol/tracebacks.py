"""Remote tracebacks that point at the notebook's lines, without nbdist's own frames.

cloudpickle sends a notebook function's code by value and renames its file ``<dynamic-code>`` (so a
payload does not depend on where it was defined), and a notebook's cells are files only the kernel's
``linecache`` knows (``<ipython-input-3-…>``, ipykernel's ``/tmp/ipykernel_…/….py``). So a task's
traceback said ``File "<dynamic-code>", line 8`` and showed no line. The kernel therefore ships, with
the call, the real file name of each such code object and the lines of those files
(:func:`code_sources`); the task puts the names back on the unpickled code and the lines in its own
``linecache`` (:func:`restore_sources`) before anything runs, so its stderr log and the traceback
sent back both show the lines. :func:`user_traceback` leaves nbdist's frames (the task runner's) out
of the text.
"""

from __future__ import annotations

import functools
import linecache
import os
import traceback
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["code_sources", "restore_sources", "user_traceback"]

DYNAMIC_FILE = "<dynamic-code>"  # cloudpickle's co_filename of every code object it pickles by value
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# A code object's identity that survives pickling: its file name does not, these do.
CodeKey = tuple[str, int, bytes]


def _key(code: types.CodeType) -> CodeKey:
    return code.co_name, code.co_firstlineno, code.co_code


@functools.lru_cache(maxsize=256)
def _is_real_file(filename: str) -> bool:
    return os.path.isfile(filename)


def _notebook_functions(root: Any) -> Iterator[types.FunctionType]:
    """The functions ``root`` reaches that cloudpickle sends by value (of ``__main__``, or of no real file):
    itself, the functions its globals and closure name, theirs, and so on."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, functools.partial):
            stack.append(obj.func)
            continue
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if not isinstance(obj, types.FunctionType) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if obj.__module__ != "__main__" and _is_real_file(obj.__code__.co_filename):
            continue  # an importable module's function: pickled by reference, its file is on disk
        yield obj
        namespace = obj.__globals__
        stack.extend(namespace[name] for name in _names(obj.__code__) if name in namespace)
        stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _has_contents(cell))


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell (a closure variable not yet assigned)
        return False
    return True


def code_sources(function: Any) -> tuple[dict[CodeKey, str], dict[str, list[str]]]:
    """The kernel's side: the file name of each notebook function ``function`` reaches, and those files'
    lines (from ``linecache``: a notebook's cells are no files)."""
    files: dict[CodeKey, str] = {}
    sources: dict[str, list[str]] = {}
    for fn in _notebook_functions(function):
        filename = fn.__code__.co_filename
        files[_key(fn.__code__)] = filename
        if filename not in sources and not _is_real_file(filename):  # a script's lines the task reads itself
            lines = linecache.getlines(filename)
            if lines:
                sources[filename] = list(lines)
    return files, sources


def _refiled(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_refiled(const, filename) if isinstance(const, types.CodeType) and const.co_filename == DYNAMIC_FILE
                   else const for const in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def restore_sources(function: Any, files: dict[CodeKey, str], sources: dict[str, list[str]]) -> None:
    """The task's side: give the unpickled functions their files' names back and put the lines in ``linecache``."""
    for filename, lines in sources.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)  # no mtime: never checked
    if not files:
        return
    for fn in _notebook_functions(function):
        code = fn.__code__
        filename = files.get(_key(code)) if code.co_filename == DYNAMIC_FILE else None
        if filename is not None:
            fn.__code__ = _refiled(code, filename)


def _internal(filename: str) -> bool:
    return filename.startswith(_PACKAGE)


def _drop_internal(exc: traceback.TracebackException, seen: set[int]) -> None:
    if id(exc) in seen:
        return
    seen.add(id(exc))
    exc.stack = traceback.StackSummary.from_list([frame for frame in exc.stack if not _internal(frame.filename)])
    for linked in (exc.__cause__, exc.__context__, *(getattr(exc, "exceptions", None) or ())):
        if linked is not None:
            _drop_internal(linked, seen)


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as text, as ``traceback.format_exception`` gives it, less nbdist's own
    frames (the task runner's: the user reads only their code's)."""
    formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_internal(formatted, set())
    return "".join(formatted.format())
