"""kit submit: build/validate/write on a hand-written tiny competition + run, and the whole upload
-> poll -> ledger flow against the local Kaggle API double with the REAL kaggle client."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaggle_kit import KitError
from kaggle_kit.cli import app
from kaggle_kit.submission import (
    build_submission,
    submission_spec,
    validate_submission,
    write_submission,
)
from kaggle_kit.submit import LEDGER_COLUMNS, read_ledger, show_ledger, submit
from kaggle_kit.workspace import sha256_file
from tests.conftest import REPO
from tests.fx_kaggle import (
    TEST_KEY,
    TINY_CLASSES,
    TINY_IDS,
    TINY_SOLUTION,
    write_tiny_comp,
    write_tiny_run,
)

# ----------------------------------------------------------------------------- build / validate


def test_build_labels_in_sample_order(tiny_comp, tiny_run):
    df = build_submission(tiny_run, tiny_comp)
    assert list(df.columns) == ["Id", "Category"]
    assert df["Id"].tolist() == TINY_IDS  # test.csv is written reversed: order is the sample's
    assert df["Category"].tolist() == [*TINY_SOLUTION[:-1], "cat"]
    validate_submission(df, tiny_comp, "built")


def test_build_probabilities_when_sample_asks(tmp_path):
    comp = write_tiny_comp(tmp_path / "data", probs=True)
    run = write_tiny_run(tmp_path / "runs")
    df = build_submission(run, comp)
    assert list(df.columns) == ["Id", *TINY_CLASSES] and df["Id"].tolist() == TINY_IDS
    assert df.loc[0, "cat"] == pytest.approx(0.8)
    validate_submission(df, comp, "built")
    bad = df.copy()
    bad.loc[[1, 4], "dog"] = 0.95  # rows no longer sum to 1
    with pytest.raises(KitError, match=r"^bad\.csv: 2 row\(s\) that are not probabilities .*line 3: Id='10'"):
        validate_submission(bad, comp, "bad.csv")


def test_build_refuses_a_run_of_another_competition(tiny_comp, tmp_path):
    run = write_tiny_run(tmp_path / "runs")
    test = pd.read_csv(run.test_path, dtype={"Id": str})
    test.loc[0, "Id"] = "999"
    test.to_csv(run.test_path, index=False)
    with pytest.raises(KitError, match=r"test\.csv: Ids differ .*1 missing .*1 extra \(first \['999'\]\)"):
        build_submission(run, tiny_comp)


def _good(tiny_comp, tiny_run) -> pd.DataFrame:
    return build_submission(tiny_run, tiny_comp)


@pytest.mark.parametrize("break_it, expected", [
    (lambda d: d[["Category", "Id"]], r"columns \['Category', 'Id'\] must be exactly \['Id', 'Category'\]"),
    (lambda d: d.assign(Extra=1), r"columns .* must be exactly"),
    (lambda d: d.iloc[:-2], r"2 Id\(s\) of sample_submission.csv missing \(first \['22', '5'\]\)"),
    (lambda d: pd.concat([d, d.iloc[[0]]]), r"2 row\(s\) with a duplicated Id.*line 2: Id='3'.*line 8: Id='3'"),
    (lambda d: d.assign(Id=["3", "10", "7", "1", "22", "77"]), r"1 row\(s\) with an Id not in sample.*line 7: Id='77'"),
    (lambda d: d.assign(Category=["cat", "zebra", "fox", "dog", "", "zebra"]), r"1 row\(s\) with empty cells.*line 6"),
    (lambda d: d.assign(Category=["cat", "zebra", "fox", "dog", "Cat", "zebra"]),
     r"3 row\(s\) with a Category not in the class list.*line 3: Id='10', Category='zebra'; line 6"),
])
def test_validation_errors_name_file_rows_and_count(tiny_comp, tiny_run, break_it, expected):
    with pytest.raises(KitError, match=r"^my_sub\.csv: " + expected):
        validate_submission(break_it(_good(tiny_comp, tiny_run)), tiny_comp, "my_sub.csv")


def test_validation_shows_at_most_five_rows(tiny_comp, tiny_run):
    df = _good(tiny_comp, tiny_run).assign(Category="zebra")
    with pytest.raises(KitError) as e:
        validate_submission(df, tiny_comp, "s.csv")
    assert "6 row(s)" in str(e.value) and str(e.value).count("line ") == 5
    assert "\n" not in str(e.value)


def test_write_submission_names_and_never_overwrites(tiny_comp, tiny_run, tmp_path):
    df = _good(tiny_comp, tiny_run)
    a = write_submission(df, tmp_path / "subs", "tiny-run")
    b = write_submission(df, tmp_path / "subs", "tiny-run")
    assert re.fullmatch(r"\d{8}T\d{6}Z-tiny-run(-1)?\.csv", a.name) and a != b
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == sorted([a.name, b.name])
    pd.testing.assert_frame_equal(pd.read_csv(a, dtype=str), df.astype(str))


# ----------------------------------------------------------------------------- submit flow


@pytest.fixture
def ws(tmp_path, tiny_comp, tiny_run):
    """Keyword arguments of `submit` for the tmp workspace (data/tiny, runs/tiny-run)."""
    return {"data_dir": tmp_path / "data", "runs_dir": tmp_path / "runs",
            "submissions_dir": tmp_path / "submissions"}


def test_submit_run_success_with_score_and_ledger(kaggle_double, tiny_run, ws):
    out = submit(tiny_run.root, message="first try", timeout=30, poll_s=0.2, **ws)
    assert "public score 0.83333" in out and "CV 0.75000" in out  # 5 of 6 right
    assert kaggle_double.uploads == 1
    ledger = read_ledger(ws["submissions_dir"])
    assert list(ledger.columns) == LEDGER_COLUMNS and len(ledger) == 1
    row = ledger.iloc[0]
    assert (row["status"], row["public_score"], row["cv"]) == ("complete", "0.83333", "0.75000")
    assert (row["run"], row["method"], row["competition"], row["message"]) == (
        "tiny-run", "greedy", "tiny", "first try")
    assert row["sha256"] == sha256_file(row["file"]) and Path(row["file"]).parent == ws["submissions_dir"]
    table = show_ledger(ws["submissions_dir"])
    assert re.search(r"tiny-run\s+greedy\s+accuracy\s+0\.75000\s+0\.83333\s+\+0\.0833\s+complete", table)


def test_submit_csv_infers_run_and_competition(kaggle_double, tiny_comp, tiny_run, ws):
    path = write_submission(build_submission(tiny_run, tiny_comp), ws["submissions_dir"], "tiny-run")
    assert "public score" in submit(path, timeout=30, poll_s=0.2, **ws)
    row = read_ledger(ws["submissions_dir"]).iloc[0]
    assert (row["file"], row["run"], row["cv"]) == (str(path), "tiny-run", "0.75000")


def test_newest_first(kaggle_double, tmp_path, ws):
    write_tiny_run(ws["runs_dir"], name="perfect", predicted=TINY_SOLUTION, cv=0.9)
    submit(ws["runs_dir"] / "tiny-run", timeout=30, poll_s=0.2, **ws)
    ledger = read_ledger(ws["submissions_dir"])
    ledger.loc[0, "time"] = "2020-01-01T00:00:00+00:00"  # make the order independent of the clock
    ledger.to_csv(ws["submissions_dir"] / "ledger.csv", index=False)
    submit("perfect", timeout=30, poll_s=0.2, **ws)  # a run name, looked up in runs_dir
    lines = show_ledger(ws["submissions_dir"]).splitlines()
    assert "perfect" in lines[1] and "1.00000" in lines[1] and "tiny-run" in lines[2]


def test_dry_run_uploads_nothing(kaggle_double, tiny_run, ws):
    out = submit(tiny_run.root, dry_run=True, **ws)
    assert out.startswith("dry run:") and "nothing uploaded" in out
    assert kaggle_double.uploads == 0 and kaggle_double.calls == []
    (written,) = ws["submissions_dir"].glob("*-tiny-run.csv")
    assert str(written) in out
    assert not (ws["submissions_dir"] / "ledger.csv").exists()


def test_invalid_csv_is_refused_before_upload(kaggle_double, tmp_path, ws):
    bad = tmp_path / "hand.csv"
    bad.write_text("Id,Category\n3,cat\n10,dog\n7,fox\n1,wolf\n22,cat\n")
    with pytest.raises(KitError, match=r"hand\.csv: 1 Id\(s\) of sample_submission.csv missing"):
        submit(bad, competition="tiny", **ws)
    assert kaggle_double.calls == [] and kaggle_double.uploads == 0


def test_rejected_by_kaggle_with_its_reason(kaggle_double, tmp_path, ws):
    """Kaggle accepts the upload but scoring fails: the row ends as `error` with the reason."""
    shutil.copy(kaggle_double.folder / "tiny.zip", kaggle_double.folder / "unscored.zip")
    write_tiny_comp(ws["data_dir"], name="unscored")  # no unscored.solution.csv on the double
    with pytest.raises(KitError, match=r"Kaggle could not score submission \d+: no solution"):
        submit("tiny-run", competition="unscored", timeout=30, poll_s=0.2, **ws)
    row = read_ledger(ws["submissions_dir"]).iloc[0]
    assert (row["status"], row["public_score"], row["competition"]) == ("error", "", "unscored")
    assert "no solution" in row["error"] and "no solution" in show_ledger(ws["submissions_dir"])


def test_400_with_kaggle_reason(kaggle_double, ws):
    kaggle_double.fail_next(400, "Submission file has 6 rows, expected 1800", method="CreateSubmission")
    with pytest.raises(KitError, match=r"\(400\): Submission file has 6 rows, expected 1800"):
        submit("tiny-run", timeout=30, **ws)
    assert read_ledger(ws["submissions_dir"]).empty  # nothing was submitted


@pytest.mark.parametrize("fault", [
    {"status": 429, "retry_after": "7200"},
    {"status": 400, "message": "Submission not allowed: Your team has used its daily Submission "
                               "allowance (5) today, please try again tomorrow UTC (3.1 hours from now)."},
])
def test_daily_limit_says_when_it_resets(kaggle_double, ws, fault):
    kaggle_double.fail_next(method="CreateSubmission", **fault)
    with pytest.raises(KitError, match=r"daily submission limit reached for 'tiny' .*it resets at "
                                       r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(in \d+\.\d h\)"):
        submit("tiny-run", timeout=30, **ws)
    assert read_ledger(ws["submissions_dir"]).empty


def test_401_403_and_no_credentials(kaggle_double, ws, monkeypatch):
    kaggle_double.fail_next(401)
    with pytest.raises(KitError, match="401"):
        submit("tiny-run", **ws)
    kaggle_double.rules_not_accepted.add("tiny")
    with pytest.raises(KitError, match="https://www.kaggle.com/competitions/tiny/rules"):
        submit("tiny-run", **ws)
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(KitError, match=r"no Kaggle credentials .*KAGGLE_USERNAME.*kaggle\.json"):
        submit("tiny-run", **ws)
    assert kaggle_double.uploads == 0 and read_ledger(ws["submissions_dir"]).empty
    assert len(list(ws["submissions_dir"].glob("*.csv"))) == 1  # retries reuse the identical file


def test_poll_timeout_keeps_pending_then_refresh(kaggle_double, ws):
    kaggle_double.score_after_polls = None  # Kaggle is slow today
    out = submit("tiny-run", timeout=0, **ws)
    assert "not scored after 0 s" in out and "kit submissions --refresh" in out
    assert read_ledger(ws["submissions_dir"]).iloc[0]["status"] == "pending"

    assert "0 of 1 pending row(s) updated" in show_ledger(ws["submissions_dir"], refresh=True)
    kaggle_double.finish_scoring()
    table = show_ledger(ws["submissions_dir"], refresh=True)
    assert "1 of 1 pending row(s) updated" in table and "0.83333" in table
    row = read_ledger(ws["submissions_dir"]).iloc[0]
    assert (row["status"], row["public_score"]) == ("complete", "0.83333")


def test_empty_ledger_message(tmp_path):
    assert "no submissions yet" in show_ledger(tmp_path / "submissions")


# ----------------------------------------------------------------------------- through the CLI


def test_cli_submit_and_submissions(kaggle_double, tiny_run, ws):
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in ws.items()]
    result = CliRunner().invoke(app, ["submit", str(tiny_run.root), "-m", "cli", "--timeout", "30",
                                      *opts])
    assert result.exit_code == 0, result.output
    assert "public score 0.83333" in result.output
    result = CliRunner().invoke(app, ["submissions", f"--submissions-dir={ws['submissions_dir']}"])
    assert result.exit_code == 0 and "0.83333" in result.output and "cli" in result.output


@pytest.mark.parametrize("setup", ["401", "403", "429", "nocreds"])
def test_key_never_printed_by_failing_submit(kaggle_double, tiny_run, ws, setup, monkeypatch):
    """`kit submit` in a real subprocess fails with one line on stderr; the key is nowhere."""
    if setup == "401":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone-else")
    elif setup == "403":
        kaggle_double.rules_not_accepted.add("tiny")
    elif setup == "429":
        kaggle_double.fail_next(429, method="CreateSubmission")
    else:
        monkeypatch.delenv("KAGGLE_USERNAME")
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in ws.items()]
    out = subprocess.run([sys.executable, "-m", "kaggle_kit", "submit", str(tiny_run.root), *opts],
                         capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert TEST_KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("edit, match", [
    ({"columns": ["Id", "other"]}, r"submission columns \['Id', 'other'\] differ from the sample's"),
    ({"id_col": "image"}, r"id column 'image' is not in the sample's columns"),
    ({"kind": "votes"}, r"submission kind 'votes' unknown; choose one of"),
    ({"kind": "prob_positive", "positive": "cat"}, r"prob_positive .* needs task binary"),
])
def test_submission_spec_refuses_a_format_the_sample_contradicts(tmp_path, edit, match):
    """competition.json's "submission" is checked against sample_submission.csv, one line each."""
    from tests.fx_targets import make_target_comp

    comp = make_target_comp(tmp_path, "spec", classes=["bird", "cat", "dog"], kind="label")
    spec = submission_spec(comp)
    assert (spec["kind"], spec["id_col"], spec["prob_columns"]) == ("label", "id", {})
    meta = comp.meta()
    meta["submission"] = {**meta["submission"], **edit}
    comp.write_meta(meta)
    with pytest.raises(KitError, match=match) as e:
        submission_spec(comp)
    assert "\n" not in str(e.value) and "competition.json" in str(e.value)


def test_submission_spec_of_a_fetch_without_the_key_infers_the_kind(tmp_path):
    """Competitions fetched before "submission" existed: one column per class = prob, else label."""
    from tests.fx_targets import make_target_comp

    for kind, expected in (("prob", "prob"), ("label", "label")):
        comp = make_target_comp(tmp_path, f"old_{kind}", classes=["bird", "cat"], kind=kind)
        meta = comp.meta()
        del meta["submission"]
        comp.write_meta(meta)
        spec = submission_spec(comp)
        assert spec["kind"] == expected
        assert spec["prob_columns"] == ({"bird": "bird", "cat": "cat"} if kind == "prob" else {})
