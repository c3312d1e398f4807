"""The session inside a real Jupyter kernel: top-level ``await job`` on the kernel's running loop."""

from __future__ import annotations

import textwrap

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

CELLS = [
    textwrap.dedent(
        """
        import asyncio, concurrent.futures, nbdist
        session = nbdist.Session(parallelism=2, root=ROOT)
        job = session.submit("echo from-the-kernel", name="k")
        done = await job
        print(done.state.value, done.stdout().strip(), asyncio.get_running_loop().is_running())
        """
    ),
    textwrap.dedent(
        """
        arr = session.array("exit {{step}}", steps=[0, 2], name="a")
        results = await asyncio.gather(*arr, return_exceptions=True)
        print([type(r).__name__ for r in results], arr.counts()["FAILED"])
        session.close()
        """
    ),
]


def test_await_in_a_real_kernel(tmp_path):
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        outputs: list[str] = []

        def collect(message):
            if message["msg_type"] == "stream":
                outputs.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                outputs.append("\n".join(message["content"]["traceback"]))

        client.execute_interactive(f"ROOT = {str(tmp_path / 'root')!r}", timeout=30, output_hook=collect)
        for cell in CELLS:
            client.execute_interactive(cell, timeout=60, output_hook=collect)
        lines = "".join(outputs).splitlines()
        assert lines == ["DONE from-the-kernel True", "['Job', 'JobFailed'] 1"], outputs
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
