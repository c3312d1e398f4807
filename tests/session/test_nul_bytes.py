"""A NUL byte cannot reach exec: it is one clear error at submit, and nothing is submitted.

Before, a NUL in ``env``, ``cwd`` or the command was accepted, then crashed the consumer
(``ValueError: embedded null byte``) and the job ended LOST, again on every retry.
"""

from __future__ import annotations

import pytest

from nbdist import Session, State


@pytest.mark.parametrize("where, options", [
    ("command", {"command": "echo a\0b"}),
    ("env['GREETING']", {"env": {"GREETING": "hi\0there"}}),
    ("cwd", {"cwd": "/tmp\0/elsewhere"}),
])
def test_a_nul_byte_is_refused_at_submit(tmp_path, where, options):
    with Session(parallelism=1, root=str(tmp_path / "root")) as session:
        kwargs = {"command": "echo ok", **options}
        command = kwargs.pop("command")
        with pytest.raises(ValueError, match="NUL byte") as raised:
            session.submit(command, **kwargs)
        assert where.split("[")[0] in str(raised.value)
        with pytest.raises(ValueError, match="NUL byte"):
            session.array(command, steps=2, **kwargs)
        assert session.jobs() == [] and session.registry.jobs() == []
        # The session is unharmed: the next submit runs.
        assert session.submit("echo fine", name="fine").wait(10) is State.DONE
