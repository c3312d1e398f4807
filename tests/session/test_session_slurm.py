"""The session on a real single-node Slurm: jobs outlive a SIGKILLed kernel and are adopted by attach.

Skips without a reachable Slurm (``scripts/slurm-local.sh start``), like ``tests/test_slurm.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from slurm_helpers import SCRIPT, kill_node, live_jobs, use_local_slurm

import nbdist
from nbdist import Array, State

pytestmark = pytest.mark.slurm

KERNEL = textwrap.dedent(
    """
    import sys, time
    from nbdist import Session

    if __name__ == "__main__":
        session = Session(backend="slurm", root=sys.argv[1])
        job = session.submit("sleep 2; echo adopted", name="survivor")
        arr = session.array("echo step {{x}}", over={"x": ["a", "b"]}, name="sweep")
        dependent = session.submit("echo after", name="dependent", after=[job])
        while job.state is not job.state.RUNNING:
            time.sleep(0.05)
        time.sleep(0.3)
        print("ready", flush=True)
        time.sleep(60)
    """
)


slurm_cluster = pytest.fixture(scope="module", autouse=True)(use_local_slurm)


def test_slurm_jobs_survive_the_kernel_and_are_adopted(tmp_path):
    root = str(tmp_path / "root")
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    kernel = subprocess.Popen([sys.executable, str(script), root], stdout=subprocess.PIPE, text=True)
    session = None
    try:
        assert kernel.stdout.readline().strip() == "ready"
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(5)
        session = nbdist.attach(root)
        survivor = session.get("survivor")
        assert survivor.state in (State.RUNNING, State.DONE)  # not KILLED: Slurm jobs outlive the kernel
        assert survivor.wait(60) is State.DONE and survivor.stdout() == "adopted\n"
        sweep = session.get("sweep")
        assert sweep.wait(60) is State.DONE and [step.stdout() for step in sweep] == ["step a\n", "step b\n"]
        dependent = session.get("dependent")  # held by the dead kernel's session: taken over, then run
        assert dependent.wait(60) is State.DONE and dependent.stdout() == "after\n"
    finally:
        kernel.kill()
        kernel.stdout.close()
        ours = set()
        if session is not None:
            steps = [job for handle in session.jobs() for job in (handle if isinstance(handle, Array) else [handle])]
            ours = {job.distributor_id.split("_")[0] for job in steps if job.distributor_id}
            session.close()
        nbdist.set_default_session(None)
        _no_job_of_ours_left(ours)


def _no_job_of_ours_left(ours: set[str], timeout: float = 30.0) -> None:
    """Only this test's jobs are checked (and cancelled): other work may share the cluster."""
    deadline = time.monotonic() + timeout
    while True:
        left = [line for line in live_jobs() if line.split()[0].split("_")[0] in ours]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if left:
        subprocess.run(["scancel", *sorted(ours)], check=False, capture_output=True, timeout=30)
    assert not left, f"jobs left in squeue: {left}"


@pytest.fixture
def slurm_session(tmp_path):
    session = nbdist.Session(backend="slurm", root=str(tmp_path / "root"), log_dir=str(tmp_path / "slurm-logs"),
                             poll_interval=0.2, max_poll_interval=0.5)
    yield session
    steps = [job for handle in session.jobs() for job in (handle if isinstance(handle, Array) else [handle])]
    ours = {attempt.distributor_id.split("_")[0] for job in steps for attempt in job.attempts
            if attempt.distributor_id}
    session.close()
    _no_job_of_ours_left(ours)


def test_a_packed_array_retries_only_its_failed_steps(slurm_session, tmp_path):
    flag = tmp_path / "fixed"
    # Step 7 fails until the flag exists; the others print their step.
    arr = slurm_session.array(f'[ {{{{step}}}} != 7 ] || [ -e {flag} ] || exit 4; echo "step {{{{step}}}}"',
                              steps=20, name="packed", steps_per_task=5)
    assert arr.wait(120) is State.FAILED
    assert arr.counts()[State.DONE] == 19 and [job.step for job in arr.failed()] == [7]
    assert arr[7].exit_code == 4 and arr[8].stdout() == "step 8\n"  # a failed step did not stop its task
    flag.touch()
    assert [job.step for job in arr.retry_failed()] == [7]
    assert arr.wait(120) is State.DONE
    assert [len(job.attempts) for job in arr] == [1] * 7 + [2] + [1] * 12
    assert arr[7].stdout() == "step 7\n"


@pytest.mark.parametrize(("options", "fragment"), [
    ({"gpus": -1}, "gpus must be"),
    ({"steps_per_task": 0}, "steps_per_task must be a positive integer"),
    ({"steps_per_task": 2.5}, "steps_per_task must be a positive integer"),
    ({"account": "x\n#SBATCH --qos=high"}, "account must be a name"),
    ({"sbatch": ["--comment=a\n#SBATCH --exclusive"]}, "not one '#SBATCH --option' line"),
    ({"gpu": 1}, "unknown resource"),
])
def test_bad_site_options_are_one_clear_line_and_submit_nothing(slurm_session, options, fragment):
    with pytest.raises(ValueError, match=fragment) as caught:
        slurm_session.array("true", steps=3, **options)
    assert "\n" not in str(caught.value)
    assert slurm_session.jobs() == []


def test_the_local_backend_refuses_more_gpus_than_it_has_and_site_options(tmp_path):
    with nbdist.Session(root=str(tmp_path / "local"), parallelism=2, gpus=[0]) as local:
        with pytest.raises(ValueError, match="asks for 2 GPUs but this machine has 1"):
            local.submit("true", gpus=2)
        with pytest.raises(ValueError, match="account, qos: only a batch scheduler"):
            local.array("true", steps=2, account="a", qos="b")
        assert local.jobs() == []
        # gpus=0 and a packing hint ask for nothing a laptop cannot give.
        assert local.array("true", steps=4, gpus=0, steps_per_task=2).wait(30) is State.DONE


def test_the_magic_takes_site_flags_and_refuses_bad_ones_in_one_line(slurm_session, tmp_path):
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "nbdist")
    nbdist.set_default_session(slurm_session)
    try:
        for line, fragment in [("--array 3 --steps-per-task 0", "--steps-per-task 0"),
                               ("--gpus -1", "--gpus -1"), ("--steps-per-task 2", "for an array"),
                               ("--array 3 --steps-per-task two", "invalid int"),
                               ("--account 'a b'", "account must be a name")]:
            with pytest.raises(UsageError, match=fragment):
                ip.run_cell_magic("submit", f"--name bad {line} --quiet", "true")
        assert slurm_session.jobs() == []
        ip.run_cell_magic("submit", "--name gpu --array 4 --steps-per-task 2 --gpus 1 --sbatch=--comment=m "
                          "--quiet --wait --out handle", "echo $SLURM_GPUS_ON_NODE")
        handle = ip.user_ns["handle"]
        assert handle.state is State.DONE and [job.stdout() for job in handle] == ["1\n"] * 4
    finally:
        nbdist.set_default_session(None)


def _running_on(arr: Array, node: str) -> bool:
    ours = {job.distributor_id for job in arr if job.state is State.RUNNING}
    listed = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %N"], capture_output=True, text=True).stdout
    return any(line.split()[0] in ours and line.split()[1] == node for line in listed.splitlines())


def _slurm(*argv: str) -> None:
    subprocess.run([str(SCRIPT), *argv], check=True, capture_output=True, timeout=120)


def test_a_node_that_dies_mid_array_loses_its_steps_and_they_run_again_elsewhere(slurm_session, tmp_path):
    spans = tmp_path / "spans"
    spans.mkdir()
    command = (f's=$(date +%s.%N); sleep 10; echo "$s $(date +%s.%N) $SLURMD_NODENAME" >> {spans}/{{{{step}}}}; '
               "echo ran")
    arr = slurm_session.array(command, steps=6, name="fragile", max_attempts=2, steps_per_task=1, cores=4)
    try:
        deadline = time.monotonic() + 120  # the cluster is shared: wait for a step of ours to run on n1
        while not _running_on(arr, "n1") and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_node("n1")  # its slurmd and job steps die, as when the node loses power
        assert arr.wait(240) is State.DONE
    finally:
        _slurm("start-node", "n1")
    lost = [job for job in arr if len(job.attempts) == 2]
    assert lost, "no step ran on n1"
    for job in lost:
        first = job.attempts[0]
        assert first.state is State.LOST and "node failed" in (first.message or "")
    for job in arr:
        runs = [line.split() for line in (spans / str(job.step)).read_text().splitlines()]
        # The step finished once (a step killed with its node wrote no span), never beside its retry.
        assert len(runs) == 1 and job.stdout() == "ran\n"
        if job in lost:
            assert runs[0][2] == "n2"  # retried on the node that stayed up
