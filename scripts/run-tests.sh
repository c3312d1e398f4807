#!/usr/bin/env bash
# Runs the whole suite: starts the local two-node Slurm when it can (root, Slurm installed) and stops it after
# (unless it was already up).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
slurm_started=0
if [ -x scripts/slurm-local.sh ] && [ "${NBDIST_NO_SLURM:-0}" != 1 ]; then
    # A cluster that was already up (a developer's, or another run's) stays up afterwards.
    scripts/slurm-local.sh status >/dev/null 2>&1 && slurm_was_up=1 || slurm_was_up=0
    if scripts/slurm-local.sh start; then
        [ "$slurm_was_up" = 1 ] || slurm_started=1
        eval "$(scripts/slurm-local.sh env)"
    else
        echo "run-tests: local Slurm not started; the Slurm suite will skip (fail under NBDIST_REQUIRE_ALL=1)" >&2
    fi
fi
stop_slurm() { [ "$slurm_started" = 1 ] && scripts/slurm-local.sh stop; }
trap stop_slurm EXIT
"$PY" -m pytest "$@"
status=$?
if [ $# -eq 0 ]; then
    # The portable implementation of the OS interface (what macOS and the BSDs run), forced on Linux: the
    # local backend's and the session's suites once more, fault tests included (README: "Platforms").
    echo "run-tests: again with NBDIST_PORTABLE=1 (the portable process handling)"
    NBDIST_PORTABLE=1 "$PY" -m pytest -q -p no:cacheprovider -m "not slurm and not gpu" \
        tests/backends/multiprocess tests/backends/test_system.py tests/backends/test_worker.py tests/session \
        || status=$?
fi
exit $status
