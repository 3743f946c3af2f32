"""report.py: oof_scores, confusion/curves plots, `kit report` text (alone and --against)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from kaggle_kit import KitError
from kaggle_kit.metrics import oof_scores
from kaggle_kit.plots import write_run_plots
from kaggle_kit.recipe import validate
from kaggle_kit.report import report, targeted_block
from tests.fx_blend import make_comp, make_run, member_probs


def test_oof_scores_match_sklearn_and_join_by_id():
    from sklearn.metrics import accuracy_score, log_loss

    classes = ["a", "b", "c"]
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    p = member_probs(y, 3, signal=1.0, seed=3)
    ids = [f"{i:03d}" for i in range(8)]
    oof = pd.DataFrame(p, columns=classes, index=pd.Index(ids, name="Id"))
    oof.insert(0, "fold", [0, 0, 0, 0, 1, 1, 1, 1])
    labels = pd.Series([classes[i] for i in y], index=ids)[::-1]  # other row order: joined by Id
    s = oof_scores(oof, labels, classes)
    assert s["cv"]["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert s["cv"]["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]))
    f0 = [f for f in s["per_fold"] if f["fold"] == 0][0]
    assert f0["accuracy"] == pytest.approx(accuracy_score(y[:4], p[:4].argmax(1)))
    accs = [f["accuracy"] for f in s["per_fold"]]
    assert s["cv"]["accuracy_std"] == pytest.approx(np.std(accs))
    pred = p.argmax(1)
    assert s["per_class"]["a"] == pytest.approx((pred[y == 0] == 0).mean())
    with pytest.raises(KitError, match="no training label"):
        oof_scores(oof, labels.iloc[1:], classes)


def test_plots_are_written_and_non_empty(tmp_path):
    comp = make_comp(tmp_path / "data", classes=[f"class{i:02d}" for i in range(15)], n_train=600)
    run = make_run(tmp_path / "runs", "r1", comp, signal=2.0)
    write_run_plots(run)  # labels found through data/ next to runs/
    for png in (run.confusion_png, run.curves_png):
        assert png.stat().st_size > 10_000
        with Image.open(png) as im:
            assert im.size[0] > 600 and im.size[1] > 300
    run.confusion_png.unlink()
    labels = comp.labels().set_index("Id")["label"]
    write_run_plots(run, labels)
    assert run.confusion_png.exists()


def test_report_lists_worst_class_first_with_targeted_block(tmp_path):
    comp = make_comp(tmp_path / "data", n_train=400)
    classes = comp.classes
    folds = comp.folds()
    y = folds["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    p = member_probs(y, len(classes), signal=4.0, seed=1)
    leopard, shark = classes.index("leopard"), classes.index("shark")
    flip = np.flatnonzero(y == leopard)[: int(0.6 * (y == leopard).sum())]
    p[flip] = p[flip][:, [*range(leopard), shark, *range(leopard + 1, len(classes))]]
    p[flip, shark] = p[flip].max(1) + 0.1  # 60% of leopards predicted as shark
    run = make_run(tmp_path / "runs", "r1", comp, oof=p / p.sum(1, keepdims=True))
    text = report(run.root, against=None, data_dir=tmp_path / "data")
    table = text.split("most-confused pairs")[0]
    lines = [ln for ln in table.splitlines() if ln.strip().split(" ")[0] in classes]
    assert lines[0].split()[0] == "leopard" and lines[0].split()[3] == "shark"
    assert "leopard <-> shark" in text
    assert "targeted:" in text and "classes: [leopard," in text


@pytest.mark.parametrize("classes", [["0", "3", "10"], ["yes", "null", "1e3", "a: b", "cat"]])
def test_targeted_block_pastes_as_the_class_strings(classes):
    """cassava's classes are "0".."4": the block must read back as those strings (not ints) and
    validate as a recipe's augment section."""
    block = yaml.safe_load(targeted_block(classes, run_name="r1"))
    assert block["augment"]["targeted"]["classes"] == classes
    rec = validate({"competition": "c", "model": {"name": "kit_cnn_s"}, "train": {"epochs": 1, "lr": 0.1}, **block})
    assert rec.augment.targeted.classes == classes


def test_report_against_side_by_side(tmp_path):
    comp = make_comp(tmp_path / "data", n_train=200)
    a = make_run(tmp_path / "runs", "base", comp, signal=1.0, seed=1)
    b = make_run(tmp_path / "runs", "tgt", comp, signal=3.0, seed=2, targeted=["leopard", "shark"])
    text = report(b.root, against=a.root, data_dir=tmp_path / "data")
    assert "base" in text and "tgt" in text and "OVERALL" in text
    assert "leopard *" in text and "'leopard', 'shark'" in text
    sa, sb = a.summary()["cv"]["accuracy"], b.summary()["cv"]["accuracy"]
    assert f"{sb - sa:+.4f}" in text
    other = make_comp(tmp_path / "data", name="other")
    c = make_run(tmp_path / "runs", "c", other)
    with pytest.raises(KitError, match="competition 'other'"):
        report(b.root, against=c.root, data_dir=tmp_path / "data")


def test_suggested_block_is_a_valid_recipe_augment_section(tmp_path):
    import yaml

    from kaggle_kit import augment, recipe

    comp = make_comp(tmp_path / "data")
    run = make_run(tmp_path / "runs", "r1", comp, signal=1.0)
    text = report(run.root, against=None, data_dir=tmp_path / "data")
    block = yaml.safe_load(text[text.index("augment:"):])
    aug = recipe.Augment(**block["augment"])
    assert aug.targeted.classes and set(aug.targeted.classes) <= set(comp.classes)
    assert len(aug.targeted.transforms) >= 2
    pipe = augment.build_transform(aug.targeted.transforms, seed=0)  # real albumentations
    assert pipe(image=np.zeros((32, 32, 3), np.uint8))["image"].shape == (32, 32, 3)


def test_kit_report_cli(tmp_path):
    from typer.testing import CliRunner

    from kaggle_kit.cli import app

    comp = make_comp(tmp_path / "data")
    a = make_run(tmp_path / "runs", "a", comp, signal=1.0)
    b = make_run(tmp_path / "runs", "b", comp, signal=2.0, seed=1)
    res = CliRunner().invoke(app, ["report", str(b.root), "--against", str(a.root),
                                   "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    assert "OVERALL" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "runs" / "nope"),
                                   "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 1 and "not found" in res.output


def test_plots_of_a_run_without_oof_rows_write_curves_only(tmp_path):
    comp = make_comp(tmp_path / "data")
    run = make_run(tmp_path / "runs", "refit_only", comp)
    run.write_oof(run.read_oof().iloc[:0], comp.classes)  # e.g. cv.folds: [] with refit
    write_run_plots(run, comp.labels().set_index("Id")["label"])
    assert run.curves_png.exists() and not run.confusion_png.exists()
