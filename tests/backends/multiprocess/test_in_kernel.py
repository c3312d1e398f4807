"""The distributor inside a real, running Jupyter kernel (threads and an event loop in the process)."""

from __future__ import annotations

import textwrap

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

CODE = textwrap.dedent(
    """
    import time, threading, asyncio
    from nbdist.multiprocess import MultiprocessDistributor
    d = MultiprocessDistributor("kernel", parallelism=2, log_dir=LOG_DIR)
    d.start()
    ids = d.submit_array_to_batch_distributor("echo step $ARRAY_STEP_ID; exit $((ARRAY_STEP_ID % 2))", "k", {}, 6)
    sleeper = d.submit_to_batch_distributor("sleep 60", "sleeper", {})
    while d.get_submitted_or_running(list(ids.values())):
        time.sleep(0.01)
    letters = "".join(d.get_remote_exit_info(ids[s])[0] for s in range(6))
    t0 = time.monotonic(); d.stop(); stop_s = time.monotonic() - t0
    print(letters, d.get_remote_exit_info(sleeper)[0], stop_s < 1.0, threading.active_count() > 1,
          asyncio.get_event_loop().is_running())
    """
)


def test_distributor_runs_in_a_real_kernel(tmp_path):
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        outputs = []

        def collect(message):
            if message["msg_type"] == "stream":
                outputs.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                outputs.append("\n".join(message["content"]["traceback"]))

        client.execute_interactive(f"LOG_DIR = {str(tmp_path)!r}\n" + CODE, timeout=60, output_hook=collect)
        assert "".join(outputs).split() == ["DEDEDE", "K", "True", "True", "True"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
