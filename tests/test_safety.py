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
