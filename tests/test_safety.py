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
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, check_run_name

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


# ----------------------------------------------------------------------------- ledger + submit (items 3, 4, 11)

SEMICOLON_LEDGER = ("time;competition;file;sha256;run;method;cv;message;submission_id;status;"
                    "public_score;error\n2024-01-01T00:00:00+00:00;tiny;a.csv;x;r;mean;0.9;m;"
                    "123;complete;0.91;\n")


@pytest.fixture
def ws(tmp_path, tiny_comp, tiny_run):
    return {"data_dir": tmp_path / "data", "runs_dir": tmp_path / "runs",
            "submissions_dir": tmp_path / "submissions"}


def test_semicolon_ledger_refused_not_rewritten(kaggle_double, tiny_run, ws):
    """A ledger re-saved with ';' showed blank rows, and the next `kit submit` uploaded first,
    then rewrote every earlier row as empty (or crashed without a ledger row)."""
    from kaggle_kit.submit import show_ledger, submit

    ledger = ws["submissions_dir"] / "ledger.csv"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(SEMICOLON_LEDGER)
    with pytest.raises(KitError, match="ledger.csv: header lacks columns"):
        show_ledger(ws["submissions_dir"])
    with pytest.raises(KitError, match="ledger.csv: header lacks columns"):
        submit(tiny_run.root, timeout=5, poll_s=0.2, **ws)
    assert kaggle_double.uploads == 0 and kaggle_double.calls == []
    assert ledger.read_text() == SEMICOLON_LEDGER


def test_ledger_is_append_only(kaggle_double, tiny_run, ws):
    """Earlier rows (even ones kit would format differently) stay byte for byte: an upload and
    Kaggle's verdict each append a row; `kit submissions` shows one row per submission."""
    from kaggle_kit.ledger import read_ledger
    from kaggle_kit.submit import show_ledger, submit

    ledger = ws["submissions_dir"] / "ledger.csv"
    ledger.parent.mkdir(parents=True)
    old = ("time,competition,file,sha256,run,method,cv,message,submission_id,status,public_score,"
           "error\n2024-01-01T00:00:00+00:00,tiny,a.csv,x,old-run,mean,0.90000,\"hand, edited\","
           "7,complete,0.91,")  # an older ledger (no metric column), no final newline
    ledger.write_text(old)
    submit(tiny_run.root, timeout=30, poll_s=0.2, **ws)
    text = ledger.read_text()
    assert text.startswith(old + "\n") and len(text.splitlines()) == 4  # + pending + complete
    df = read_ledger(ws["submissions_dir"])
    assert df["run"].tolist() == ["old-run", "tiny-run"]
    assert df["status"].tolist() == ["complete", "complete"] and df["message"][0] == "hand, edited"
    assert len(read_ledger(ws["submissions_dir"], history=True)) == 3
    assert "old-run" in show_ledger(ws["submissions_dir"])


def test_no_credentials_refused_before_anything_is_written(no_kaggle_creds, tiny_run, ws):
    from kaggle_kit.submit import submit

    with pytest.raises(KitError, match="no Kaggle credentials"):
        submit(tiny_run.root, **ws)
    assert not (ws["submissions_dir"] / "ledger.csv").exists()


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01", "binary content"),
    (None, "a zip archive, not a CSV"),
    (b"Id,Category\n\xff\xfe\xfa,cat\n", "not a readable CSV"),
])
def test_submit_refuses_non_csv_files(kaggle_double, tmp_path, ws, content, match):
    import zipfile

    from kaggle_kit.submit import submit

    bad = tmp_path / "bad.csv"
    if content is None:
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("sub.csv", "Id,Category\n3,cat\n")
    else:
        bad.write_bytes(content)
    with pytest.raises(KitError, match=match):
        submit(bad, competition="tiny", **ws)
    assert kaggle_double.uploads == 0


def test_kaggle_json_readable_by_others_warning_passed_on(kaggle_double, tmp_path, monkeypatch,
                                                          capsys):
    import os

    from kaggle_kit import kaggle_io
    from tests.fx_kaggle import TEST_KEY, TEST_USER

    cfg = Path(os.environ["KAGGLE_CONFIG_DIR"])  # the client's, fixed when it was first imported
    (cfg / "kaggle.json").write_text(json.dumps({"username": TEST_USER, "key": TEST_KEY}))
    (cfg / "kaggle.json").chmod(0o644)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    kaggle_io.list_submissions("tiny")
    err = capsys.readouterr().err
    assert "readable by other users" in err and "chmod 600" in err and TEST_KEY not in err


# ----------------------------------------------------------------------------- disk full (item 11)


@pytest.fixture
def tiny_disk(tmp_path):
    """tiny_disk(size) -> a folder on a tmpfs of that size: real ENOSPC. Needs root (skips)."""
    import subprocess

    mounts = []

    def make(size: str) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True)
        if r.returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root): no real ENOSPC")
        mounts.append(where)
        return where

    yield make
    for m in mounts:
        subprocess.run(["umount", str(m)], check=False)


def test_disk_full_during_train_is_one_line(demo_data_dir, tiny_disk):
    runs = tiny_disk("64k")  # recipe.yaml + provenance.json fit, the first state.pt does not
    with pytest.raises(KitError, match="disk full while training"):
        _train(demo_data_dir, runs, *QUICK)
    assert not list(runs.rglob(".*.tmp"))  # no half-written file left


def test_disk_full_during_blend_and_submit_is_one_line(tmp_path, tiny_disk, tiny_comp, tiny_run):
    from kaggle_kit.blend import blend
    from kaggle_kit.submit import submit
    from tests.fx_blend import make_comp, make_run

    comp = make_comp(tmp_path / "bdata")
    for i in (1, 2):
        make_run(tmp_path / "bruns", f"m{i}", comp, seed=i)
    disk = tiny_disk("16k")
    with pytest.raises(KitError, match="disk full while writing the blend"):
        blend([tmp_path / "bruns" / "m1", tmp_path / "bruns" / "m2"], runs_dir=disk / "runs",
              data_dir=tmp_path / "bdata", submissions_dir=disk / "subs")
    (disk / "filler").write_bytes(b"\0" * (15 * 1024))
    shutil.rmtree(disk / "runs", ignore_errors=True)
    with pytest.raises(KitError, match="disk full"):
        submit(tiny_run.root, dry_run=True, data_dir=tmp_path / "data",
               runs_dir=tmp_path / "runs", submissions_dir=disk / "subs")


def test_disk_full_fetch_says_the_download_is_kept(tmp_path, tiny_disk):
    from kaggle_kit.fetch import fetch

    data = tiny_disk("4m")  # the 2.2 MB demo zip fits, its unpacked files do not
    with pytest.raises(KitError, match=r"disk full .* the download .*demo\.zip .* is kept"):
        fetch("demo", data_dir=data)
    assert [p.name for p in data.iterdir()] == [".downloads"]


# ----------------------------------------------------------------------------- blend members (item 10)


def test_blend_refuses_a_run_twice_all_zero_rows_and_inf(tmp_path):
    """A run blended with itself was accepted (weighted double); all-zero probability rows were
    silently made uniform; inf passed the member check."""
    import numpy as np

    from kaggle_kit.blend import blend
    from tests.fx_blend import make_comp, make_run

    comp = make_comp(tmp_path / "data")
    runs = tmp_path / "runs"
    a = make_run(runs, "a", comp, seed=1).root
    make_run(runs, "b", comp, seed=2)
    kw = {"runs_dir": runs, "data_dir": tmp_path / "data", "submissions_dir": tmp_path / "subs"}
    for twice in ([a, a], [a, runs / ".." / "runs" / "a"]):
        with pytest.raises(KitError, match="given twice"):
            blend(twice, **kw)
    for i, bad in enumerate((0.0, np.inf)):
        oof = RunDir(a).read_oof()
        oof.iloc[3, 1:] = bad  # one row: all classes 0, or inf
        RunDir(runs / f"bad{i}").root.mkdir()
        shutil.copy(RunDir(a).summary_path, runs / f"bad{i}" / "summary.json")
        shutil.copy(RunDir(a).test_path, runs / f"bad{i}" / "test.csv")
        RunDir(runs / f"bad{i}").write_oof(oof, comp.classes)
        with pytest.raises(KitError, match="infinite, negative or all-zero"):
            blend([runs / f"bad{i}", runs / "b"], **kw)
    assert not (tmp_path / "subs").exists()
