"""Regression tests of issue 14: no command loses a user's data or accepts corrupt state.

One test per defect of the bad-input audit; each was seen failing on the code before its fix.
docs/reliability.md tables the bad inputs tried here, by kind, with the outcome.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kaggle_kit import KitError
from kaggle_kit.workspace import CompetitionDir, RunDir, check_run_name

QUICK = ["cv.folds=[0]", "train.epochs=1"]  # one fold, one epoch: a few seconds


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): to show nothing was touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- run names (item 1)


@pytest.mark.parametrize("bad", [".", "..", "../x", "/abs/x", "a/b", "a\\b", ".hidden", "", "a\0b",
                                 "x" * 129])
def test_check_run_name_refuses_anything_but_one_plain_component(bad):
    with pytest.raises(KitError, match="not a plain run name"):
        check_run_name(bad)


def test_check_run_name_accepts_plain_names():
    for ok in ("resnet_fast", "blend-mean-0a1b2c3d", "r1.seed=2", "A@b,c+d"):
        assert check_run_name(ok) == ok


@pytest.mark.parametrize("bad", [".", ".."])
def test_train_bad_name_deletes_nothing(train_tiny, bad):
    """`--name .` deleted fold*/refit* under runs/; `--name ..` deleted ./test.csv,
    ./summary.json and ./fold_notes/ -- even though the command then failed."""
    runs = train_tiny.runs_dir
    (runs / "fold0").mkdir(parents=True)
    (runs / "fold0" / "model.pt").write_text("a user's")
    (runs.parent / "fold_notes").mkdir()
    (runs.parent / "fold_notes" / "n.txt").write_text("notes")
    for f in ("test.csv", "summary.json", "oof.csv"):
        (runs.parent / f).write_text("mine")
    before = _files(runs.parent)
    with pytest.raises(KitError, match="not a plain run name"):
        train_tiny("demo", "cv.folds=[7]", name=bad)
    assert _files(runs.parent) == before


@pytest.mark.parametrize("bad", ["../x", str(Path("/tmp") / "kit_abs_x")])
def test_train_name_outside_runs_refused(train_tiny, bad):
    with pytest.raises(KitError, match="not a plain run name"):
        train_tiny("demo", *QUICK, name=bad)
    assert not (train_tiny.runs_dir.parent / "x").exists() and not Path(bad).is_absolute() \
        or not Path(bad).exists()


@pytest.mark.parametrize("bad", [".", "..", "../x", "/abs/x"])
def test_blend_bad_name_refused_before_anything(tmp_path, bad):
    from kaggle_kit.blend import blend

    with pytest.raises(KitError, match="not a plain run name"):
        blend([tmp_path / "a", tmp_path / "b"], name=bad, runs_dir=tmp_path / "runs",
              data_dir=tmp_path / "data", submissions_dir=tmp_path / "subs")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "subs").exists()


# ----------------------------------------------------------------------------- run folders (item 2, smaller)


def _fake_blend(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps({"run": root.name, "kind": "blend",
                                                   "competition": "demo"}))
    (root / "oof.csv").write_text("Id,fold\n")
    (root / "test.csv").write_text("Id\n")
    return _files(root)


def test_train_over_a_blend_needs_force(train_tiny):
    """Training under a blend's name wiped the blend without --force (it has no recipe.yaml)."""
    before = _fake_blend(train_tiny.runs_dir / "AB")
    with pytest.raises(KitError, match="holds a kit blend"):
        train_tiny("demo", *QUICK, name="AB")
    assert _files(train_tiny.runs_dir / "AB") == before


def test_non_kit_folder_refused_even_with_force(train_tiny):
    mine = train_tiny.runs_dir / "mine"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "fold0").mkdir()
    for force in (False, True):
        with pytest.raises(KitError, match="not made by kit"):
            train_tiny("demo", *QUICK, name="mine", force=force)
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "fold0").is_dir()


def test_failed_start_writes_no_run_folder_and_force_keeps_foreign_files(train_tiny):
    """A failed start (bad fold, batch too big) left recipe.yaml, so the corrected rerun was
    refused until --force; --force deleted every fold* entry, a user's fold_notes/ included."""
    with pytest.raises(KitError, match="cv.folds"):
        train_tiny("demo", "cv.folds=[7]", name="r")
    with pytest.raises(KitError, match="batch_size"):
        train_tiny("demo", *QUICK, "train.batch_size=5000", name="r")
    assert not (train_tiny.runs_dir / "r").exists()
    train_tiny("demo", *QUICK, name="r")  # the corrected rerun: no --force needed
    (train_tiny.runs_dir / "r" / "fold_notes").mkdir()
    (train_tiny.runs_dir / "r" / "fold_notes" / "n.txt").write_text("keep")
    train_tiny("demo", *QUICK, "seed=1", name="r", force=True)
    assert (train_tiny.runs_dir / "r" / "fold_notes" / "n.txt").read_text() == "keep"
    assert RunDir(train_tiny.runs_dir / "r").summary()["kind"] == "train"


# ----------------------------------------------------------------------------- resume after refold (item 5)


@pytest.fixture()
def own_demo(demo_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data dir (tests below change its folds.csv / competition.json)."""
    data = tmp_path / "own_data"
    shutil.copytree(demo_data_dir, data)
    return data


def _train(data_dir: Path, runs_dir: Path, *overrides: str, name: str = "r", **kw) -> dict:
    import torch

    from kaggle_kit.train import run
    from tests.fx_train import RECIPES, TINY

    torch.set_num_threads(1)
    return run(RECIPES / "demo.yaml", [*TINY, *overrides], name=name, runs_dir=runs_dir,
               data_dir=data_dir, **kw)


def test_resume_after_refold_refused(own_demo, tmp_path):
    """A fold's state.pt from the old split was continued on the new one (its model had seen
    most of the new fold's images), and resuming a finished run raised a KeyError."""
    from kaggle_kit.fetch import fetch

    class Killed(Exception):
        pass

    def kill(name: str, row: dict) -> None:
        raise Killed  # after the first epoch's checkpoint: as if the process had been killed

    runs = tmp_path / "runs"
    _train(own_demo, runs, "cv.folds=[0]", name="done")
    with pytest.raises(Killed):
        _train(own_demo, runs, "cv.folds=[0]", name="killed", on_epoch=kill)
    assert (runs / "killed" / "fold0" / "state.pt").exists()
    fetch("demo", data_dir=own_demo, refold=True, seed=7)
    for name in ("killed", "done"):
        before = _files(runs / name)
        with pytest.raises(KitError, match="started on another folds.csv"):
            _train(own_demo, runs, "cv.folds=[0]", name=name, resume=True)
        assert _files(runs / name) == before


# ----------------------------------------------------------------------------- diverged weights (item 8)


def test_nan_predictions_fail_the_fold(train_tiny):
    """One SGD step at lr 1e30: the loss of that step is finite, the weights after it are not.
    The fold was marked done with NaN predictions, oof.csv/test.csv got empty cells, then a
    traceback; --resume reused the NaN fold."""
    diverge = ["cv.folds=[0]", "train.epochs=1", "train.batch_size=64", "train.lr=1e30"]
    for resume in (False, True):
        with pytest.raises(KitError, match="NaN or inf"):
            train_tiny("demo", *diverge, name="nan", resume=resume)
        run = RunDir(train_tiny.runs_dir / "nan")
        assert not (run.fold_dir(0) / "done.json").exists()
        assert not run.oof_path.exists() and not run.test_path.exists()


# ----------------------------------------------------------------------------- refit-only run (issue 23)


def test_refit_only_run_works_end_to_end(train_tiny):
    """`'cv.folds=[]' cv.refit=true cv.test_from=refit` trained, then raised KeyError "['Id'] not
    in index" in RunDir.write_oof and wrote no test.csv."""
    s = train_tiny("demo", "cv.folds=[]", "cv.refit=true", "cv.test_from=refit", "train.epochs=1",
                   name="refit")
    run = RunDir(train_tiny.runs_dir / "refit")
    assert s["cv"] is None and "no CV estimate" in s["cv_note"]
    assert s["test_members"] == ["refit0"]
    test = run.read_test(s["classes"])
    assert len(test) > 0 and test.notna().all().all()
    assert run.read_oof().empty


@pytest.mark.parametrize("overrides, match", [
    (["cv.folds=[]"], "refit-only run needs refit"),
    (["cv.folds=[]", "cv.refit=true"], "refit-only run needs refit"),
    (["cv.refit=-1", "cv.test_from=refit"], "refit: -1"),
    (["cv.folds=[-1]"], "fold numbers >= 0"),
    (["seed=-1"], "seed"),
    (["seed=99999999999"], "seed"),
])
def test_bad_cv_and_seed_refused_before_training(train_tiny, overrides, match):
    """seed=-1 was a traceback; cv.refit=-1 cv.test_from=refit exited 0 with an empty test.csv."""
    with pytest.raises(KitError, match=match):
        train_tiny("demo", *overrides, name="bad")
    assert not (train_tiny.runs_dir / "bad").exists()


# ----------------------------------------------------------------------------- folds.csv vs fetch (items 7, 11)


def _edit_folds(data: Path, edit) -> None:
    path = data / "demo" / "folds.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("edit, match", [
    (lambda ls: ls[:1] + ls[201:], "changed since kit fetch"),  # 200 rows deleted
    (lambda ls: [ls[0], ls[1].rsplit(",", 1)[0] + ",x", *ls[2:]], "changed since kit fetch"),
    (lambda ls: [ls[0], ls[2].split(",")[0] + "," + ",".join(ls[1].split(",")[1:]), *ls[2:]],
     "changed since kit fetch"),  # an Id moved onto another row
])
def test_edited_folds_csv_refused(own_demo, tmp_path, edit, match):
    _edit_folds(own_demo, edit)
    with pytest.raises(KitError, match=match):
        _train(own_demo, tmp_path / "runs", *QUICK)
    assert not (tmp_path / "runs" / "r").exists()


def test_folds_csv_unknown_label_or_fold_refused_even_without_a_recorded_hash(own_demo):
    comp = CompetitionDir(own_demo / "demo")
    meta = comp.meta()
    meta["folds"] = {k: v for k, v in meta["folds"].items() if k != "sha256"}  # an older fetch
    comp.write_meta(meta)
    good = comp.folds_path.read_text()
    _edit_folds(own_demo, lambda ls: [ls[0], ls[1].rsplit(",", 1)[0] + ",x", *ls[2:]])
    with pytest.raises(KitError, match="line 2: fold 'x' is not an integer"):
        comp.folds()
    comp.folds_path.write_text(good)
    _edit_folds(own_demo, lambda ls: [ls[0], "{},unicorn,{}".format(*ls[1].split(",")[::2]),
                                      *ls[2:]])
    with pytest.raises(KitError, match="line 2: label 'unicorn' is not a class"):
        comp.folds()


def test_class_removed_from_competition_json_refused(own_demo, tmp_path):
    comp = CompetitionDir(own_demo / "demo")
    meta = comp.meta()
    meta["classes"] = meta["classes"][1:]
    comp.write_meta(meta)
    with pytest.raises(KitError, match="is not a class of"):
        _train(own_demo, tmp_path / "runs", *QUICK)
