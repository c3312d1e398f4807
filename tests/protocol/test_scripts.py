"""The one command form of a Python script a backend may run warm."""

from __future__ import annotations

import sys

from nbdist.cluster_protocol.scripts import ScriptCommand, parse_script_command, script_command, shebang_interpreter


def test_the_form_round_trips_with_any_arguments():
    command = script_command(sys.executable, "/opt/my tools/run.py", ["--name", "it's", "a b", "$HOME", ""])
    assert parse_script_command(command) == ScriptCommand(sys.executable, "/opt/my tools/run.py",
                                                          ("--name", "it's", "a b", "$HOME", ""))


def test_no_other_command_is_taken_for_one():
    form = script_command("/usr/bin/python3", "/x.py", ["a"])
    for other in ["/usr/bin/python3 /x.py a", "exec /usr/bin/python3 /x.py a", form + "; rm -rf ~",
                  form.replace(" exec ", "  exec "), "NBDIST_PYTHON_SCRIPT=1 exec", "NBDIST_PYTHON_SCRIPT=1 exec 'x"]:
        assert parse_script_command(other) is None, other


def test_shebang_interpreter(tmp_path):
    cases = {"plain": "#!/venv/bin/python\nprint()\n", "env": "#!/usr/bin/env python3\n", "none": "print()\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert shebang_interpreter(str(tmp_path / "plain")) == "/venv/bin/python"
    assert shebang_interpreter(str(tmp_path / "env")) is None  # arguments: not one interpreter's path
    assert shebang_interpreter(str(tmp_path / "none")) is None
    assert shebang_interpreter(str(tmp_path / "missing")) is None
