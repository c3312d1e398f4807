"""Parsing and checking of ``requested_resources`` (one definition for every backend)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "Resources", "parse_memory", "parse_runtime", "format_memory", "format_runtime", "check_command",
    "check_array_length", "command_line", "positive_int", "SITE_KEYS", "parse_site_options", "THREAD_VARIABLES",
    "thread_variables",
]

# Options only a batch scheduler honours (Slurm's sbatch): a backend that does parses with
# ``site_options=True``; any other refuses one that asks for something (``gpus=0`` asks nothing),
# except ``gpus`` on a backend that places GPUs itself (the multiprocess backend: ``gpus=`` of parse).
SITE_KEYS = ("gpus", "steps_per_task", "account", "qos", "constraint", "reservation", "exclusive", "sbatch",
             "requeue", "signal")
KNOWN_KEYS = ("cores", "memory", "runtime", "queue", "stdout", "stderr", "env", "cwd", "max_concurrent", "after",
              *SITE_KEYS)
_GPUS_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+:)?\d+$")
_SIGNAL_RE = re.compile(r"^(?:[BR]{1,2}:)?(?:SIG)?[A-Z0-9]+(?:@\d+)?$")
_WORD_RE = re.compile(r"^[A-Za-z0-9_.,:|&!*()\[\]@+=-]+$")  # an account, qos, reservation or constraint

_MEMORY_UNITS = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_RUNTIME_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RUNTIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|sec|min|hr)?\s*$", re.IGNORECASE)
_CLOCK_RE = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?\s*$")
# Numeric libraries start one thread per core of the machine unless one of these says otherwise
# (OpenMP, OpenBLAS, MKL, BLIS, Apple's Accelerate, numexpr: loky's list, less numba's, which refuses
# a count above the machine's CPUs): two 1-core tasks would each start a thread per core and
# oversubscribe the CPU. A task gets its ``cores`` in each, unless it or its environment sets one.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_memory(value: str | int | float) -> float:
    """Megabytes from ``"512M"``, ``"2G"``, ``"1.5GB"``, ``"300K"`` or a number of megabytes."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be like '512M' or '2G', not {value!r}")
    if isinstance(value, (int, float)):
        megabytes = float(value)
    else:
        match = _MEMORY_RE.match(str(value))
        if not match:
            raise ValueError(f"memory must be like '512M', '2G' or a number of MB, not {value!r}")
        megabytes = float(match.group(1)) * _MEMORY_UNITS[match.group(2).upper()]
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise ValueError(f"memory must be positive, not {value!r}")
    return megabytes


def parse_runtime(value: str | int | float) -> float:
    """Seconds from ``"90s"``, ``"10m"``, ``"2h"``, ``"1:30:00"``, ``"1-00:00:00"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"runtime must be like '90s', '10m' or '2h', not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value)
        clock = _CLOCK_RE.match(text)
        match = _RUNTIME_RE.match(text)
        if clock:
            days, first, second, third = clock.groups()
            if third is None:  # M:S
                seconds = int(first) * 60 + int(second)
            else:  # H:M:S
                seconds = int(first) * 3600 + int(second) * 60 + int(third)
            seconds += int(days or 0) * 86400
        elif match:
            unit = (match.group(2) or "").lower()[:1]
            seconds = float(match.group(1)) * _RUNTIME_UNITS[unit]
        else:
            raise ValueError(f"runtime must be like '90s', '10m', '2h' or 'H:MM:SS', not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"runtime must be positive, not {value!r}")
    return float(seconds)


def format_memory(megabytes: float) -> str:
    """``1536.0`` → ``"1.5G"``; the inverse of :func:`parse_memory` for display."""
    if megabytes >= 1024:
        return f"{megabytes / 1024:.3g}G"
    return f"{megabytes:.4g}M"


def format_runtime(seconds: float) -> str:
    """``5400`` → ``"1h30m"``; short and exact for display."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def thread_variables(cores: int, inherited: Mapping[str, str]) -> dict[str, str]:
    """:data:`THREAD_VARIABLES` set to ``cores``, less those the ``inherited`` environment sets already.

    The caller applies the task's own ``env`` after these, so a value the user gives always wins.
    """
    count = str(cores)
    return {name: count for name in THREAD_VARIABLES if name not in inherited}


def positive_int(value: object, what: str) -> int:
    """``value`` when it is an int of at least 1 (a bool is not); else ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def command_line(words: Sequence[str]) -> str:
    """One word is a shell command line as it is; several are argv words, quoted back into one line."""
    if len(words) == 1:
        return words[0]
    import shlex  # only the callers with argv words pay for it

    return shlex.join(words)


def check_command(command: object) -> None:
    """A command is a non-empty shell command line."""
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be a non-empty string")
    _check_no_nul(command, "command")


def _check_no_nul(text: str, what: str) -> None:
    """A NUL byte cannot pass through exec (argv, environment, paths): refused here, not by a consumer later."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte")


def check_array_length(array_length: object) -> None:
    """An array has at least one step."""
    positive_int(array_length, "array_length")


@dataclass(frozen=True)
class Resources:
    """Validated ``requested_resources``; unknown or malformed keys raise ``ValueError``."""

    cores: int = 1
    memory_mb: float | None = None
    runtime_s: float | None = None
    queue: str | None = None
    stdout_dir: str | None = None
    stderr_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_concurrent: int | None = None
    after: tuple[str, ...] = ()
    site: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0  # GPUs per task (Slurm: the count of its GRES, which stays in ``site``)

    @classmethod
    def parse(cls, requested: Mapping[str, Any] | None, max_cores: int | None = None,
              site_options: bool = False, gpus: Callable[[], int] | None = None) -> "Resources":
        """Validate ``requested`` (the protocol's ``requested_resources``); ``site_options``: the backend
        honours :data:`SITE_KEYS` (else one that asks for something is a ValueError); ``gpus``: the
        backend places GPUs itself, and this function says how many it has (called only when a task
        asks for some: finding them costs a driver query)."""
        requested = dict(requested or {})
        unknown = sorted(set(requested) - set(KNOWN_KEYS))
        if unknown:
            raise ValueError(f"unknown resource(s) {unknown}; known: {', '.join(KNOWN_KEYS)}")
        site = parse_site_options({key: requested[key] for key in SITE_KEYS if key in requested})
        gpu_count = int(site["gpus"].rpartition(":")[2]) if "gpus" in site else 0
        if gpu_count and not site_options and gpus is not None:
            _check_local_gpus(site.pop("gpus"), gpu_count, gpus)
        asked = sorted(key for key in site if key != "steps_per_task")  # packing is only a speed hint
        if asked and not site_options:
            raise ValueError(f"{', '.join(asked)}: only a batch scheduler (backend='slurm') honours "
                             "this; this backend runs tasks on this machine")
        cores = _cores(requested.get("cores", 1))
        if max_cores is not None and cores > max_cores:
            raise ValueError(f"a task asks for {cores} cores but parallelism is {max_cores}")
        memory = requested.get("memory")
        runtime = requested.get("runtime")
        env = requested.get("env") or {}
        if not isinstance(env, Mapping):
            raise ValueError(f"env must be a dict of strings, not {type(env).__name__}")
        env = {str(key): str(val) for key, val in env.items()}
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
            _check_no_nul(env[key], f"env[{key!r}]")
        for key in ("cwd", "queue", "stdout", "stderr"):
            if isinstance(requested.get(key), str):
                _check_no_nul(requested[key], key)
        max_concurrent = requested.get("max_concurrent")
        if max_concurrent is not None:
            positive_int(max_concurrent, "max_concurrent")
        after = requested.get("after") or ()
        if isinstance(after, str):
            after = (after,)
        return cls(
            cores=cores,
            memory_mb=parse_memory(memory) if memory is not None else None,
            runtime_s=parse_runtime(runtime) if runtime is not None else None,
            queue=requested.get("queue"),
            stdout_dir=requested.get("stdout"),
            stderr_dir=requested.get("stderr"),
            env=env,
            cwd=requested.get("cwd"),
            max_concurrent=max_concurrent,
            after=tuple(str(item) for item in after),
            site=site,
            gpus=gpu_count,
        )


def _check_local_gpus(text: str, count: int, available: Callable[[], int]) -> None:
    """A request for GPUs this machine places itself: a plain number, and no more than it has."""
    if ":" in text:
        raise ValueError(f"gpus={text!r}: a GPU type is Slurm's (GRES); this backend takes a number of GPUs")
    have = available()
    if count > have:
        found = f"this machine has {have}" if have else "no GPU was found on this machine"
        raise ValueError(f"a task asks for {count} GPU{'s' if count != 1 else ''} but {found} (declare them with "
                         "Session(gpus=[0, 1, ...]) or NBDIST_GPUS=0,1,...)")


def parse_site_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Checked :data:`SITE_KEYS` values (unset and "nothing asked" ones dropped); ValueError on a bad one.

    Values end up in sbatch's argv or ``#SBATCH`` lines: none may hold a newline or start an option.
    """
    site: dict[str, Any] = {}
    for key, value in options.items():
        if key not in SITE_KEYS:
            raise ValueError(f"unknown site option {key!r}; known: {', '.join(SITE_KEYS)}")
        if value is None or value is False:
            continue
        if key == "gpus":
            text = str(value).strip()
            if isinstance(value, bool) or not _GPUS_RE.match(text):
                raise ValueError(f"gpus must be a number of GPUs (0 or more) or 'TYPE:N', not {value!r}")
            if int(text.rpartition(":")[2]) > 0:
                site[key] = text
        elif key == "steps_per_task":
            site[key] = positive_int(value, "steps_per_task")
        elif key in ("exclusive", "requeue"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be True or False, not {value!r}")
            site[key] = True
        elif key == "sbatch":
            site[key] = _sbatch_lines(value)
        elif key == "signal":
            if not isinstance(value, str) or not _SIGNAL_RE.match(value.strip()):
                raise ValueError(f"signal must be like 'B:USR1@60' (sbatch --signal), not {value!r}")
            site[key] = value.strip()
        else:
            if not isinstance(value, str) or not _WORD_RE.match(value) or value.startswith("-"):
                raise ValueError(f"{key} must be a name (letters, digits, _.,:|&!*[]@+=-), not {value!r}")
            site[key] = value
    return site


def _sbatch_lines(value: object) -> tuple[str, ...]:
    """Extra ``#SBATCH`` lines: ``"--mail-type=END"`` or ``"#SBATCH --mail-type=END"``, one option a line."""
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, (list, tuple)):
        raise ValueError(f"sbatch must be a list of '#SBATCH --option' lines, not {type(value).__name__}")
    checked = []
    for line in lines:
        text = str(line).strip()
        text = text[len("#SBATCH"):].strip() if text.startswith("#SBATCH") else text
        if not text.startswith("-") or any(char in text for char in "\n\r\0"):
            raise ValueError(f"sbatch: {line!r} is not one '#SBATCH --option' line")
        checked.append(text)
    return tuple(checked)


def _cores(raw: object) -> int:
    """``cores`` as given: an int, or a string of one (``"2"``); None means 1."""
    if raw is None:
        return 1
    value = raw
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            value = raw
    try:
        return positive_int(value, "cores")
    except ValueError:
        raise ValueError(f"cores must be a positive integer, not {raw!r}") from None
