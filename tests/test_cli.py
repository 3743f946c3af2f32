"""`kit --help` and every `kit <cmd> --help` work with no Kaggle credentials and no network, and
never import the kaggle client (importing it authenticates)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = ["", "fetch", "train", "recipes", "report", "blend", "submit", "submissions", "demo"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_needs_no_credentials(cmd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json
    code = ("import sys; from kaggle_kit.cli import app\n"
            f"try:\n    app([{cmd!r}, '--help'] if {cmd!r} else ['--help'], prog_name='kit')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'kaggle' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
