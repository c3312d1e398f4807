"""``python -m nbdist.backends._task.pycall CALL [ITEMS]``: run one Python call as a task.

The call file (:mod:`nbdist.cluster_protocol.pycall`) holds the function and its arguments; for a
map, ITEMS holds one item per step and this step's is item ``$NBDIST_STEP``, or without it the
backend's array index (so an array needs no shell prologue; ``NBDIST_STEP`` is then set for the
function to read, as a shell step would see it). The outcome is written
to ``{stem}.r{distributor id}`` beside the call file, and the exit code says how it went:

- the function returned: its value is written, exit 0;
- it raised: the traceback goes to stderr (the step's ``.e`` log), the exception is written, exit 1;
- it called ``sys.exit(n)``: exit ``n``, nothing written (as for a script);
- its value cannot be pickled: that reason is written as a ``TypeError`` and printed, exit 1.

A step of a chunked map (``Call.chunk`` > 1) calls the function for each of its items
(:func:`~nbdist.cluster_protocol.pycall.chunk_range`), every one of them even after one raised (as
one step per item would), and writes one outcome with each item's value or exception; it exits 1
if any item raised. ``sys.exit`` in an item ends the step there, with no outcome.

A kill, a limit or a crash (a segfault) ends the process as they end any task.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

from ...cluster_protocol.pycall import RAISED_EXIT_CODE, Call, ChunkOutcome, chunk_range, item_count, read_call, \
    read_item, read_items, result_path_for, step_index, write_error, write_value
from ...cluster_protocol.tracebacks import user_traceback
from .node import current_distributor_id

__all__ = ["main", "run_call"]


def run_call(call_file: str, items_file: str | None, distributor_id: str) -> int:
    """Make the call, write its outcome, and return the exit code the task should end with."""
    result = result_path_for(call_file, distributor_id)
    try:
        call = read_call(call_file, apply_environment=True)
        args, kwargs = call.args, call.kwargs
        if items_file is not None:
            index = step_index()
            os.environ.setdefault("NBDIST_STEP", str(index))
            if call.chunk > 1:
                return _run_chunk(call, items_file, index, result)
            args, kwargs = call.arguments(read_item(items_file, index))
        value = call.function(*args, **kwargs)
    except Exception as exc:
        sys.stderr.write(user_traceback(exc))  # the user's frames, not this runner's
        write_error(result, exc)
        return RAISED_EXIT_CODE
    try:
        write_value(result, value)
    except OSError as exc:  # the disk, not the value: a pickling TypeError would send the user the wrong way
        reason = _unwritten(result, exc)
        try:
            write_error(result, reason)  # far smaller than the value: it may fit, and result() raises it
        except OSError:
            pass
        return RAISED_EXIT_CODE
    except Exception as exc:
        reason = _unpicklable(value, exc)
        write_error(result, reason)
        return RAISED_EXIT_CODE
    return 0


def _run_chunk(call: Call, items_file: str, index: int, result: str) -> int:
    """Call the function for each item of chunk step ``index`` and write their outcomes; the exit code."""
    items = chunk_range(index, call.chunk, item_count(items_file))
    try:
        return _run_items(call, items_file, items, result)
    except OSError as exc:  # the outcome file could not be written (the functions' own errors are caught below)
        _unwritten(result, exc)
        return RAISED_EXIT_CODE


def _run_items(call: Call, items_file: str, items: range, result: str) -> int:
    with ChunkOutcome(result) as outcome:
        for item in read_items(items_file, items):
            try:
                args, kwargs = call.arguments(item)
                value = call.function(*args, **kwargs)
            except Exception as exc:
                sys.stderr.write(user_traceback(exc))  # the user's frames, not this runner's
                outcome.error(exc)
                continue
            try:
                outcome.value(value)
            except OSError:
                raise  # the disk, not the value (see _run_chunk)
            except Exception as exc:
                outcome.error(_unpicklable(value, exc))
    return RAISED_EXIT_CODE if outcome.raised else 0


def _unwritten(result: str, exc: OSError) -> OSError:
    """Why the outcome could not be written ("disk full"), printed to the step's stderr."""
    why = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot write"
    reason = OSError(exc.errno, f"{why}: the function's outcome could not be written to {result} ({exc.strerror})")
    print(f"nbdist: {reason.strerror}", file=sys.stderr)
    return reason


def _unpicklable(value: object, exc: Exception) -> TypeError:
    """The reason a value cannot travel back, printed to the step's stderr."""
    reason = TypeError(f"the function returned a {type(value).__qualname__} that cannot be pickled: {exc}")
    print(f"TypeError: {reason}", file=sys.stderr)
    return reason


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m nbdist.backends._task.pycall``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) not in (1, 2):
        print("usage: python -m nbdist.backends._task.pycall CALL [ITEMS]", file=sys.stderr)
        return 2
    distributor_id = current_distributor_id() or f"local{os.getpid()}"
    try:
        return run_call(words[0], words[1] if len(words) == 2 else None, distributor_id)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
