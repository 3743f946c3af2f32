"""Every shown score says what it is: a run's CV labelled with what test.csv holds (folds, refit,
both, a blend), and `kit estimate`'s held-out score of the same recipe shown beside it in kit
train, kit submit and the ledger -- and never for another recipe or other overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_kit import honest, recipe, show
from kaggle_kit.blend import blend
from kaggle_kit.ledger import LEDGER_COLUMNS, read_ledger
from kaggle_kit.rundir import RunDir
from kaggle_kit.submit import show_ledger, submit
from kaggle_kit.workspace import write_json, write_text
from tests.conftest import REPO
from tests.fx_blend import make_comp, make_run, write_json_key

# ----------------------------------------------------------------------------- kit train labels


def test_train_summary_says_what_cv_and_test_csv_are(train_tiny):
    """One fold model + a refit in test.csv: the CV is not test.csv's score, and says so."""
    s = train_tiny("demo", "cv.folds=[0]", "cv.refit=true", "cv.test_from=both",
                   "tta.views=[orig,hflip]", "train.epochs=1", name="both")
    saved = json.loads((train_tiny.runs_dir / "both" / "summary.json").read_text())
    assert saved["cv_is"] == "OOF of 1 fold model, trained on 75% of train; TTA 2 views"
    assert saved["test_is"] == ("mean of 1 fold model + 1 refit model (100% of train); "
                                "TTA 2 views")
    assert saved["cv_honest"] is False
    line = show.run_lines(s, train_tiny.runs_dir)
    assert ("CV is: one fold model; test.csv = fold + refit: expect higher; run kit estimate "
            "for the submission's own score") in line


def test_train_fold_bag_is_honest_slight_under_estimate(train_tiny):
    s = train_tiny("demo", "cv.folds=[0,1]", "train.epochs=1", name="bag")
    assert s["cv_honest"] is True and s["test_is"] == "mean of 2 fold models"
    assert "each trained on 75% of train" in s["cv_is"]
    assert "test.csv = their mean: honest, a slight under-estimate" in show.run_lines(
        s, train_tiny.runs_dir)


@pytest.mark.parametrize("folds, members, label", [
    (["fold0"], ["fold0"], "one fold model; test.csv = that model: honest"),
    (["fold0", "fold1"], ["refit0", "refit1"],
     "OOF of 2 fold models; test.csv = 2 refits: expect higher; run kit estimate"),
    ([], ["refit0"], "no CV (refit only); test.csv = refit: no estimate in this run; run kit"),
])
def test_labels_of_each_test_from(folds, members, label):
    lab = honest.describe_train(folds, members, 0.75)
    assert lab["cv_label"].startswith(label)
    assert lab["cv_honest"] is (not any(m.startswith("refit") for m in members) and bool(folds))


# ----------------------------------------------------------------------------- kit blend labels


def test_blend_label_depends_on_what_members_test_csv_hold(tmp_path):
    comp = make_comp(tmp_path / "data")
    a, b = (make_run(tmp_path / "runs", n, comp, seed=i) for i, n in enumerate("ab"))
    out = blend([a.root, b.root], method="mean", name="bl", runs_dir=tmp_path / "runs",
                data_dir=tmp_path / "data", submissions_dir=tmp_path / "subs")
    s = RunDir(tmp_path / "runs" / "bl").summary()
    assert s["cv_honest"] is True and "slight under-estimate" in s["cv_label"]
    assert f"CV is: {s['cv_label']}" in out
    assert "a = mean of 4 fold models" in s["test_is"]  # derived for members from before labels

    write_json_key(b.summary_path, test_from="both",
                   test_members=["fold0", "fold1", "fold2", "fold3", "refit0"])
    blend([a.root, b.root], method="mean", name="bl2", runs_dir=tmp_path / "runs",
          data_dir=tmp_path / "data", submissions_dir=tmp_path / "subs")
    s2 = RunDir(tmp_path / "runs" / "bl2").summary()
    assert s2["cv_honest"] is False and "expect higher" in s2["cv_label"]
    assert "b = mean of 4 fold models + 1 refit model (100% of train)" in s2["test_is"]


# ----------------------------------------------------------------------------- estimates linked


TINY_RECIPE = ["competition=tiny", "cv.folds=[0]", "cv.refit=true", "cv.test_from=both"]


def _train_run(runs: Path, name: str, overrides: list[str]) -> RunDir:
    """runs/<name>/ as kit train leaves it for the tiny competition (recipe.yaml + labels)."""
    from tests.fx_kaggle import write_tiny_run

    run = write_tiny_run(runs, name=name)
    write_text(run.recipe_path, recipe.dump(recipe.load(REPO / "recipes" / "demo.yaml", overrides)))
    write_json_key(run.summary_path, kind="train", test_from="both",
                   **honest.describe_train(["fold0"], ["fold0", "refit0"], 0.75))
    return run


def _estimate_run(runs: Path, name: str, overrides: list[str], fold: int, acc: float,
                  cv_shown: dict | None = None) -> None:
    """runs/<name>/ as kit estimate leaves it: the recipe on tiny-ho<fold> + estimate.json."""
    root = runs / name
    root.mkdir(parents=True)
    rec = recipe.load(REPO / "recipes" / "demo.yaml", [*overrides, f"competition=tiny-ho{fold}"])
    write_text(root / "recipe.yaml", recipe.dump(rec))
    write_json(root / "estimate.json", {
        "metric": "accuracy", "n_holdout": 2, "holdout": {"accuracy": acc, "log_loss": 0.5},
        "recipe": "recipes/demo.yaml", "overrides": overrides, "competition": "tiny",
        "holdout_fold": fold, "run": name, "test_from": "both",
        "trained_on": "6 of 8 train images", "n_trained": 6, "n_train": 8,
        **({"cv_shown": cv_shown} if cv_shown else {})})


def test_submit_and_ledger_show_the_estimate_of_the_same_recipe(kaggle_double, tiny_comp,
                                                                tmp_path):
    runs, subs = tmp_path / "runs", tmp_path / "submissions"
    ws = {"data_dir": tmp_path / "data", "runs_dir": runs, "submissions_dir": subs}
    run = _train_run(runs, "r", TINY_RECIPE)
    # reordered overrides resolve to the same recipe; a recipe with other epochs is not this one
    _estimate_run(runs, "r-ho3", [*reversed(TINY_RECIPE)], 3, 0.865)
    _estimate_run(runs, "other-ho2", [*TINY_RECIPE, "train.epochs=9"], 2, 0.5)

    dry = submit(run.root, dry_run=True, **ws)
    assert ("CV 0.75000 (accuracy; one fold model; test.csv = fold + refit: expect higher); "
            "holdout estimate 0.8650 (fold 3 held out, trained on 75%)") in dry
    assert "0.5000" not in dry and "run kit estimate" not in dry

    submit(run.root, message="m", timeout=30, poll_s=0.2, **ws)
    row = read_ledger(subs).iloc[-1]
    assert row["estimate"] == "0.86500" and row["cv"] == "0.75000"
    assert row["cv_is"] == "one fold model; test.csv = fold + refit: expect higher"
    assert row["estimate_is"] == "holdout estimate 0.8650 (fold 3 held out, trained on 75%)"
    table = show_ledger(subs)
    assert "holdout" in table and "lb-holdout" in table
    assert "-0.0317" in table  # public 0.83333 (5 of 6) - holdout 0.865
    assert "r: holdout estimate 0.8650 (fold 3 held out" in table
    # the CV's description sits under the table, once per run, not as a (very wide) column
    assert table.count("r: cv is one fold model; test.csv = fold + refit: expect higher") == 1
    assert "cv is" not in table.splitlines()[0]


def test_no_estimate_is_invented_for_another_recipe(kaggle_double, tiny_comp, tmp_path):
    runs, subs = tmp_path / "runs", tmp_path / "submissions"
    ws = {"data_dir": tmp_path / "data", "runs_dir": runs, "submissions_dir": subs}
    run = _train_run(runs, "r", TINY_RECIPE)
    _estimate_run(runs, "r-ho3", [*TINY_RECIPE, "seed=1"], 3, 0.865)  # other overrides
    assert honest.find_estimates(run.root, runs) == []
    dry = submit(run.root, dry_run=True, **ws)
    assert "holdout" not in dry and "run kit estimate for the submission's own score" in dry
    submit(run.root, message="m", timeout=30, poll_s=0.2, **ws)
    row = read_ledger(subs).iloc[-1]
    assert row["estimate"] == "" and row["estimate_is"] == ""
    assert "holdout estimate" not in show_ledger(subs)


def test_train_line_shows_an_estimate_made_before_the_run(tmp_path):
    runs = tmp_path / "runs"
    run = _train_run(runs, "r", TINY_RECIPE)
    _estimate_run(runs, "x-ho1", TINY_RECIPE, 1, 0.9)
    _estimate_run(runs, "x-ho2", TINY_RECIPE, 2, 0.8)
    ests = honest.find_estimates(run.root, runs)
    line = show.run_lines(run.summary(), runs, ests)
    assert ("holdout estimate 0.8500 (mean of 2: folds 1, 2 held out, each trained on 75%)"
            in line)
    assert "run kit estimate" not in line


def test_estimate_scaled_to_all_images_by_the_two_runs_cv(kaggle_double, tiny_comp, tmp_path):
    """The holdout error times the ratio of the CV errors (this run's fold models trained on 4/3
    as many images as the estimate run's): 1 - 0.20 * 0.25 / 0.30 = 0.8333, shown by kit train's
    line, kit submit and the ledger; only for error-like metrics and with both CVs known."""
    runs, subs = tmp_path / "runs", tmp_path / "submissions"
    ws = {"data_dir": tmp_path / "data", "runs_dir": runs, "submissions_dir": subs}
    run = _train_run(runs, "r", TINY_RECIPE)
    assert run.summary()["cv"]["accuracy"] == 0.75
    _estimate_run(runs, "r-ho3", TINY_RECIPE, 3, 0.80, cv_shown={"accuracy": 0.70})
    ests = honest.find_estimates(run.root, runs)
    assert honest.scaled_estimate(run.summary(), ests, "accuracy") == pytest.approx(1 - 0.2 * 0.25 / 0.3)
    want = "scaled to all train images: 0.8333 (an extrapolation"
    assert want in show.run_lines(run.summary(), runs, ests)
    assert want in submit(run.root, dry_run=True, **ws)
    submit(run.root, message="m", timeout=30, poll_s=0.2, **ws)
    row = read_ledger(subs).iloc[-1]
    assert row["estimate"] == "0.80000" and want in row["estimate_is"]  # the measured one stays
    assert want in show_ledger(subs)
    # lower-is-better metrics, blends and estimates without the estimate run's CV: no scaling
    assert honest.scaled_estimate(run.summary(), ests, "log_loss") is None
    assert honest.scaled_estimate({**run.summary(), "kind": "blend"}, ests, "accuracy") is None
    no_cv = [{k: v for k, v in e.items() if k != "cv_shown"} for e in ests]
    assert honest.scaled_estimate(run.summary(), no_cv, "accuracy") is None


def test_old_ledger_without_the_new_columns_still_reads_and_appends(kaggle_double, tiny_comp,
                                                                   tmp_path):
    runs, subs = tmp_path / "runs", tmp_path / "submissions"
    subs.mkdir()
    old = LEDGER_COLUMNS[:LEDGER_COLUMNS.index("metric") + 1]
    (subs / "ledger.csv").write_text(",".join(old) + "\n" + ",".join(
        ["2026-01-01T00:00:00+00:00", "tiny", "f.csv", "", "old", "train", "0.7", "m", "9",
         "complete", "0.71", "", "accuracy"]) + "\n")
    before = (subs / "ledger.csv").read_text()
    run = _train_run(runs, "r", TINY_RECIPE)
    _estimate_run(runs, "r-ho3", TINY_RECIPE, 3, 0.865)
    submit(run.root, timeout=30, poll_s=0.2, data_dir=tmp_path / "data", runs_dir=runs,
           submissions_dir=subs)
    assert (subs / "ledger.csv").read_text().startswith(before)  # appended, never rewritten
    df = read_ledger(subs)
    assert df["estimate"].tolist() == ["", ""]  # the old header has no such column: not invented
    assert "holdout 0.86500" in df["message"].iloc[-1]  # ... but the default message keeps it
    table = show_ledger(subs)
    assert "(not recorded)" in table and "old" in table
