"""What `kit` prints: run / fetch lines, help pages, `kit recipes`, the empty ledger, partial runs,
the test-distribution warning (once, never on a partial run), epoch lines with labels and ETA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from kaggle_kit import results, show
from kaggle_kit.cli import app
from tests.fx_train import RECIPES, TINY
from tests.test_cli import COMMANDS

SUMMARY = {"run": "r", "cv": {"accuracy": 0.5, "accuracy_std": 0.0, "log_loss": 1.0},
           "per_fold": [{"fold": 0, "accuracy": 0.5}], "per_class": {"a": 0.4, "b": 0.6},
           "timings": {"total_s": 60}, "test_from": "folds", "warnings": []}


def test_run_lines_spread_only_over_two_or_more_folds() -> None:
    one = show.run_lines(SUMMARY, Path("runs"))
    assert "+-" not in one and "CV accuracy 0.5000  log loss" in one
    two = dict(SUMMARY, per_fold=[{"fold": 0, "accuracy": 0.5}, {"fold": 1, "accuracy": 0.5}])
    assert "CV accuracy 0.5000 +- 0.0000" in show.run_lines(two, Path("runs"))


def test_fetch_prints_fetched_once_and_a_noop_says_no_more(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = CliRunner().invoke(app, ["fetch", "demo", "--data-dir", str(data)])
    assert first.exit_code == 0, first.output
    assert f"{data / 'demo'}: fetched" in first.output and "decoded in" in first.output
    again = CliRunner().invoke(app, ["fetch", "demo", "--data-dir", str(data)])
    assert again.exit_code == 0, again.output
    assert "no-op: already fetched and verified" in again.output
    assert "decoded in" not in again.output and "classes," not in again.output


ALL_COMMANDS = sorted(set(typer.main.get_command(app).commands) | {c for c in COMMANDS if c})


@pytest.mark.parametrize("cmd", ALL_COMMANDS)
def test_help_has_no_type_tags_and_no_braces(cmd: str) -> None:
    out = CliRunner().invoke(app, [cmd, "--help"], terminal_width=100).output
    usage = out.splitlines()[0]
    assert usage.startswith(f"Usage: kit {cmd} [OPTIONS]"), out
    assert "<bool>" not in out and "--no-" not in out, out
    # arguments named in capitals (RECIPE, RUN...), never typer's `{recipe}` or a bare `source`
    assert all(re.fullmatch(r"[\[\]A-Z_=.]+", tok) for tok in usage.split()[4:]), usage


def test_recipes_descriptions_in_one_column() -> None:
    out = CliRunner().invoke(app, ["recipes", "--folder", str(RECIPES)]).output.splitlines()
    starts = {len(re.match(r"\S+\s+", line).group(0)) for line in out}
    assert len(out) >= 5 and len(starts) == 1, out


def test_empty_ledger_mentions_dry_run_files(tmp_path: Path) -> None:
    subs = tmp_path / "submissions"
    subs.mkdir()
    (subs / "20260101T000000Z-r.csv").write_text("Id,label\n1,a\n")
    out = CliRunner().invoke(app, ["submissions", "--submissions-dir", str(subs)]).output
    assert "no submissions yet" in out and "1 file(s) from dry runs" in out


def test_partial_run_is_said_and_gets_no_shift_warning(train_tiny, demo_data_dir: Path,
                                                       monkeypatch) -> None:
    monkeypatch.setattr(results, "_distribution_warnings", lambda *a: ["shifted test"])
    summary = train_tiny("demo", "cv.folds=[0]", "train.epochs=1", name="quick")
    assert summary["partial"] == ["1 of 4 folds", "train.epochs=1 (the recipe file sets 5)",
                                  "data.limit=96"]
    assert summary["warnings"] == []
    assert "partial run: 1 of 4 folds" in show.run_lines(summary, train_tiny.runs_dir)


def test_a_recipe_file_that_asks_for_one_fold_is_not_partial(demo_data_dir: Path,
                                                              tmp_path: Path) -> None:
    """Partial is measured against the recipe FILE: `cv.folds: [0]` written in the file (the
    effnet_lite0 design) is the full recipe; the same fold chosen by an override is a quick look."""
    import torch

    from kaggle_kit.train import run

    one = tmp_path / "one_fold.yaml"
    one.write_text((RECIPES / "demo.yaml").read_text() + "cv:\n  folds: [0]\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(one, [*TINY, "train.epochs=1", "cv.refit=false"], name="one",
                      runs_dir=tmp_path / "runs", data_dir=demo_data_dir)
        override = run(RECIPES / "demo.yaml", [*TINY, "train.epochs=1", "cv.refit=false",
                       "cv.folds=[0]"], name="quick", runs_dir=tmp_path / "runs",
                       data_dir=demo_data_dir)
    finally:
        torch.set_num_threads(threads)
    assert summary["partial"] == ["train.epochs=1 (the recipe file sets 5)", "data.limit=96"]
    assert override["partial"][0] == "1 of 4 folds"


def test_dry_run_of_a_partial_run_says_so(tmp_path: Path, tiny_comp, tiny_run) -> None:
    ws = ["--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
          "--submissions-dir", str(tmp_path / "subs")]
    full = CliRunner().invoke(app, ["submit", str(tiny_run.root), "--dry-run", *ws]).output
    assert "nothing uploaded" in full and "partial run" not in full
    tiny_run.write_summary(dict(tiny_run.summary(), partial=["1 of 4 folds"]))
    out = CliRunner().invoke(app, ["submit", str(tiny_run.root), "--dry-run", *ws]).output
    assert "nothing uploaded" in out and "tiny-run is a partial run: 1 of 4 folds" in out


def test_full_run_warns_once_and_epoch_lines_are_labelled(demo_data_dir: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(results, "_distribution_warnings", lambda *a: ["shifted test"])
    monkeypatch.setattr(results, "partial_reasons", lambda *a: [])  # TINY sets data.limit
    args = ["train", str(RECIPES / "demo.yaml"), *TINY, "train.threads=1", "--name", "full",
            "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(demo_data_dir)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.count("shifted test") == 1, result.output
    epoch = [x for x in result.output.splitlines() if " fold1 2/2 " in x]
    assert len(epoch) == 1, result.output
    assert re.search(r"train loss [\d.]+ acc [\d.]+ \| val loss [\d.]+ acc [\d.]+ \|", epoch[0])
    assert re.search(r"\| run ETA \d+:\d\d:\d\d$", epoch[0]), epoch[0]
