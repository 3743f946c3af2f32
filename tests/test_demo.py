"""End-to-end smoke test of `kit demo`: fetch -> train x2 -> blend -> dry-run submit, via the CLI."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaggle_kit.cli import app


@pytest.mark.slow  # ~1-2 min; the quick suite covers the same steps in test_train / test_blend
def test_kit_demo_end_to_end(tmp_path):
    # shrunk members (--epochs 1): this checks the pipeline; test_learning checks the score
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    subs = sorted((tmp_path / "submissions").glob("*-demo-blend.csv"))
    assert len(subs) == 1, result.output
    sub = pd.read_csv(subs[0], dtype=str)
    sample = pd.read_csv(tmp_path / "data" / "demo" / "files" / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns)
    assert sub["Id"].tolist() == sample["Id"].tolist()
    assert "valid submission" in result.output and "nothing uploaded" in result.output
    headers = [line.strip("─ ").split()[0] for line in result.output.splitlines()
               if line.startswith("─") and "/5 " in line]
    assert headers == ["1/5", "2/5", "3/5", "4/5", "5/5"], result.output  # one per step, in order
    assert "tta.views=[orig,shift]" in result.output  # not eaten as rich markup
    for run in ("demo-a", "demo-b", "demo-blend"):  # the closing lines: each run's CV, then next
        assert re.search(rf"runs/{run}: CV accuracy \d\.\d{{4}}", result.output), result.output
    assert "next: kit report" in result.output
    for run in ("demo-a", "demo-b", "demo-blend"):
        oof = pd.read_csv(tmp_path / "runs" / run / "oof.csv", dtype={"Id": str})
        assert oof["Id"].is_unique and len(oof) == 1438
