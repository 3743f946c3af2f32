"""kit estimate: the held-out score of exactly what the recipe's test.csv holds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kaggle_kit import KitError
from kaggle_kit.cli import app
from kaggle_kit.estimate import estimate
from kaggle_kit.fetch import fetch
from kaggle_kit.workspace import CompetitionDir, sha256_file
from tests import fx_comps
from tests.conftest import REPO

TINY = ["train.epochs=3", "data.image_size=16", "cv.folds=[0]", "cv.refit=true",
        "cv.test_from=both"]


def test_estimate_scores_the_runs_test_csv_on_the_held_out_fold(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    fetch("demo", data_dir=data)
    parent = CompetitionDir.open(data, "demo")
    folds = parent.folds()
    one = parent.image_path("train", folds["Id"].iloc[0])
    before = sha256_file(one)

    res = CliRunner().invoke(app, ["estimate", str(REPO / "recipes" / "demo.yaml"), *TINY,
                                   "--holdout-fold", "2", "--name", "e", "--data-dir", str(data),
                                   "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    assert "held-out images of fold 2" in res.output

    out = json.loads((runs / "e-ho2" / "estimate.json").read_text())
    held = folds[folds["fold"] == 2].set_index("Id")["label"]
    # the sub-competition never trains on a held-out image, and tests exactly those
    sub = CompetitionDir.open(data, "demo-ho2")
    assert not set(sub.folds()["Id"]) & set(held.index)
    assert sorted(sub.test_ids()) == sorted(held.index)
    # the score is the held-out accuracy of the run's own test.csv (computed independently here)
    test = pd.read_csv(runs / "e-ho2" / "test.csv", dtype={"Id": str}).set_index("Id")
    pred = test.loc[held.index].to_numpy().argmax(1)
    truth = np.array([list(test.columns).index(v) for v in held])
    assert (pred == truth).mean() > 0.5  # a model that learned: a wrong join would show
    assert out["holdout"]["accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-6)
    assert out["n_holdout"] == len(held) and out["test_from"] == "both"
    assert sha256_file(one) == before  # the competition's files are linked, never changed


def test_estimate_refuses_a_folder_it_did_not_make(tmp_path):
    data = tmp_path / "data"
    fetch("demo", data_dir=data)
    (data / "_demo-ho3_src").mkdir()
    (data / "_demo-ho3_src" / "mine.txt").write_text("user file")
    with pytest.raises(KitError, match="not made by kit estimate"):
        estimate(REPO / "recipes" / "demo.yaml", TINY, data_dir=data, runs_dir=tmp_path / "runs")
    assert (data / "_demo-ho3_src" / "mine.txt").read_text() == "user file"
    with pytest.raises(KitError, match="--holdout-fold 9"):
        estimate(REPO / "recipes" / "demo.yaml", TINY, holdout_fold=9, data_dir=data,
                 runs_dir=tmp_path / "runs")


def test_estimate_on_too_few_images_per_class_says_what_to_do(tmp_path):
    """cassava with 4 images a class: without one fold no class has 4 images for 4 folds. The
    error is estimate's (fetch's `--folds` is no estimate option) and leaves no source folder."""
    data = tmp_path / "data"
    slug = "cassava-leaf-disease-classification"
    fetch(slug, data_dir=data, source=fx_comps.cassava(tmp_path, per_class=4))
    with pytest.raises(KitError, match=rf"kit estimate: {slug} without fold 3 .*"
                                       rf"`kit fetch {slug} --refold --folds 2`"):
        estimate(REPO / "recipes" / "demo.yaml", [f"competition={slug}", *TINY], data_dir=data,
                 runs_dir=tmp_path / "runs")
    assert not (data / f"_{slug}-ho3_src").exists() and not (tmp_path / "runs").exists()


def test_blend_scores_the_same_blend_of_the_members_estimate_runs_on_the_held_out_fold(tmp_path):
    from kaggle_kit import honest
    from kaggle_kit.blend import blend
    from kaggle_kit.train import run

    data, runs, subs = tmp_path / "data", tmp_path / "runs", tmp_path / "subs"
    fetch("demo", data_dir=data)
    recipe = REPO / "recipes" / "demo.yaml"
    common = ["train.epochs=1", "data.image_size=16", "cv.folds=[0,1]", "cv.refit=false",
              "cv.test_from=folds"]
    members = {"a": [*common, "seed=1"], "b": [*common, "seed=2", "train.lr=0.2"]}
    for name, over in members.items():
        run(recipe, over, name=name, runs_dir=runs, data_dir=data)
    text = blend([runs / "a", runs / "b"], method="mean", name="before", runs_dir=runs,
                 data_dir=data, submissions_dir=subs)
    assert "no holdout estimate of the blend: run kit estimate" in text
    for name, over in members.items():
        estimate(recipe, over, holdout_fold=2, name=name, runs_dir=runs, data_dir=data)

    text = blend([runs / "a", runs / "b"], method="mean", name="bl", runs_dir=runs, data_dir=data,
                 submissions_dir=subs)
    summary = json.loads((runs / "bl" / "summary.json").read_text())
    [est] = summary["estimates"]
    # computed independently: the mean of the two estimate runs' test.csv on fold 2's labels
    held = CompetitionDir.open(data, "demo").folds().query("fold == 2").set_index("Id")["label"]
    tests = [pd.read_csv(runs / f"{m}-ho2" / "test.csv", dtype={"Id": str}).set_index("Id")
             for m in members]
    mean = (tests[0] + tests[1]) / 2
    pred = mean.loc[held.index].to_numpy().argmax(1)
    truth = np.array([list(mean.columns).index(v) for v in held])
    assert est["holdout"]["accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-6)
    assert est["holdout_fold"] == 2 and est["method"] == "mean"
    assert f"holdout estimate {est['holdout']['accuracy']:.4f} (fold 2 held out" in text
    assert honest.find_estimates(runs / "bl") == summary["estimates"]  # what kit submit shows
