"""End-to-end smoke test of `kit demo`: fetch -> train x2 -> blend -> dry-run submit, via the CLI."""

from __future__ import annotations

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
    for run in ("demo-a", "demo-b", "demo-blend"):
        oof = pd.read_csv(tmp_path / "runs" / run / "oof.csv", dtype={"Id": str})
        assert oof["Id"].is_unique and len(oof) == 1438
