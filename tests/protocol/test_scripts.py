"""The command that runs a Python script with a given interpreter (Jobmon's worker entry point)."""

from __future__ import annotations

import subprocess
import sys

from nbdist.cluster_protocol.scripts import script_command, shebang_interpreter


def test_the_script_gets_exactly_its_arguments_through_the_shell(tmp_path):
    script = tmp_path / "my tools" / "run.py"
    script.parent.mkdir()
    script.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    args = ["--name", "it's", "a b", "$HOME", ""]
    command = script_command(sys.executable, str(script), args)
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '["--name", "it\'s", "a b", "$HOME", ""]'


def test_shebang_interpreter(tmp_path):
    cases = {"plain": "#!/venv/bin/python\nprint()\n", "env": "#!/usr/bin/env python3\n", "none": "print()\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert shebang_interpreter(str(tmp_path / "plain")) == "/venv/bin/python"
    assert shebang_interpreter(str(tmp_path / "env")) is None  # arguments: not one interpreter's path
    assert shebang_interpreter(str(tmp_path / "none")) is None
    assert shebang_interpreter(str(tmp_path / "missing")) is None
