"""kit predict / kit export / kit --version: a run's (or its export's) models on new images give
exactly the run's test.csv, in a fresh offline venv too; bad input gets one-line errors.

The competition is a 160-image cut of the demo digits (real PNGs) fetched with `kit fetch --from`,
so whole runs (4 folds, refit, TTA) and blends of them train in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from kaggle_kit import __version__
from kaggle_kit.cli import app
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir
from tests import fx_comps
from tests.conftest import REPO

COMP = "digits160"
TINY = [f"competition={COMP}", "data.image_size=16", "train.batch_size=16", "train.epochs=1",
        "train.num_workers=0", "train.warmup_epochs=0", "train.threads=1"]


def _kit(*args, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _one_line_error(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out, out
    return lines[0]


@pytest.fixture(scope="module")
def ws(demo_data_dir: Path, tmp_path_factory) -> Path:
    """A workspace (cwd-independent paths) with data/digits160 and runs: a (folds), b (TTA views
    orig+hflip, refit, test_from both, 3 epochs), n (images as shipped, no resize), the blends s (stack of
    a, b) and w (greedy: weights), and top (mean of the blends s and w: a blend of blends)."""
    from kaggle_kit.blend import blend
    from kaggle_kit.fetch import fetch
    from kaggle_kit.train import run

    root = tmp_path_factory.mktemp("predict_ws")
    demo = CompetitionDir(demo_data_dir / "demo")
    src = root / "src"
    (src / "train").mkdir(parents=True)
    (src / "test").mkdir()
    labels = demo.labels().groupby("label").head(12)  # 120 train images, 12 per class
    for i in labels["Id"]:
        shutil.copyfile(demo.image_path("train", i), src / "train" / f"{i}.png")
    labels.set_axis(["Id", "Category"], axis=1).to_csv(src / "train.csv", index=False)
    test_ids = demo.test_ids()[:40]
    for i in test_ids:
        shutil.copyfile(demo.image_path("test", i), src / "test" / f"{i}.png")
    pd.DataFrame({"Id": test_ids, "Category": "zero"}).to_csv(src / "sample_submission.csv",
                                                              index=False)
    data, runs = root / "data", root / "runs"
    fetch(COMP, data_dir=data, source=src)
    recipe = REPO / "recipes" / "demo.yaml"
    for name, extra in (("a", []), ("b", ["tta.views=[orig,hflip]", "cv.refit=1",
                                          "cv.test_from=both", "seed=1", "train.epochs=3"]),
                        ("n", ["data.image_size=null"])):
        run(recipe, [*TINY, *extra], name=name, runs_dir=runs, data_dir=data)
    kw = {"runs_dir": runs, "data_dir": data, "submissions_dir": root / "subs"}
    blend([runs / "a", runs / "b"], method="stack", name="s", **kw)
    blend([runs / "a", runs / "b"], method="greedy", name="w", **kw)
    blend([runs / "s", runs / "w"], method="mean", name="top", **kw)
    weights = RunDir(runs / "w").summary()["weights"]
    assert abs(weights["a"] - weights["b"]) > 0.05, weights  # else predict could ignore them
    return root


def _dirs(ws: Path) -> list:
    return ["--data-dir", ws / "data", "--runs-dir", ws / "runs"]


def _assert_same_probs(probs_csv: Path, run: Path) -> None:
    got = pd.read_csv(probs_csv, dtype={"Id": str}).set_index("Id")
    want = RunDir(run).read_test()
    assert sorted(got.index) == sorted(want.index)
    np.testing.assert_allclose(got.loc[want.index, want.columns].to_numpy(), want.to_numpy(),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["a", "b", "n", "s", "w", "top"])
def test_predict_on_the_runs_test_split_reproduces_test_csv(ws, tmp_path, name):
    """Folds, refit+folds with TTA views, as-shipped images, a stack blend, a weighted blend,
    a blend of blends."""
    run = ws / "runs" / name
    out = _kit("predict", run, COMP, "--out", tmp_path / "sub.csv", "--probs", tmp_path / "p.csv",
               *_dirs(ws))
    assert "40 images predicted" in out
    _assert_same_probs(tmp_path / "p.csv", run)
    from kaggle_kit.submission import build_submission  # what `kit submit RUN` would upload

    want = build_submission(RunDir(run), CompetitionDir(ws / "data" / COMP))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub.csv", dtype=str), want.astype(str))


def test_predict_a_folder_or_a_csv_of_ids_in_small_batches(ws, tmp_path):
    """A plain folder (Ids from file names, listed in another order) and sample_submission.csv +
    --image-dir give the same predictions; batches of 7 cross chunk boundaries."""
    comp = CompetitionDir(ws / "data" / COMP)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in comp.test_ids():
        shutil.copyfile(comp.image_path("test", i), folder / f"{i}.png")
    run = ws / "runs" / "b"
    _kit("predict", run, folder, "--out", tmp_path / "s1.csv", "--probs", tmp_path / "p1.csv",
         "--batch-size", 7, *_dirs(ws))
    _assert_same_probs(tmp_path / "p1.csv", run)
    sample = tmp_path / "ids.csv"
    pd.DataFrame({"Id": comp.test_ids()[::-1][:25], "Category": "x"}).to_csv(sample, index=False)
    _kit("predict", run, sample, "--image-dir", folder, "--out", tmp_path / "s2.csv",
         "--probs", tmp_path / "p2.csv", *_dirs(ws))
    sub = pd.read_csv(tmp_path / "s2.csv", dtype=str)
    assert sub["Id"].tolist() == comp.test_ids()[::-1][:25]  # the CSV's Ids, in its order
    assert list(sub.columns) == ["Id", "Category"]
    by_folder = pd.read_csv(tmp_path / "s1.csv", dtype=str).set_index("Id")
    assert (sub.set_index("Id")["Category"] == by_folder.loc[sub["Id"], "Category"]).all()


def test_image_of_another_size_is_resized_or_refused_as_the_run_decodes(ws, tmp_path):
    """Run a resizes when decoding (data.image_size 16): a 40x24 image is predicted as its 16x16
    resize. Run n saw images as shipped (32x32): another size is a one-line error."""
    comp = CompetitionDir(ws / "data" / COMP)
    i = comp.test_ids()[0]
    folder = tmp_path / "odd"
    folder.mkdir()
    with Image.open(comp.image_path("test", i)) as im:
        im.convert("RGB").resize((24, 40)).save(folder / "big.png")
        im.convert("RGB").resize((24, 40)).resize((16, 16), Image.BILINEAR).save(
            folder / "small.png")
    _kit("predict", ws / "runs" / "a", folder, "--out", tmp_path / "s.csv", "--probs",
         tmp_path / "p.csv", *_dirs(ws))
    p = pd.read_csv(tmp_path / "p.csv").set_index("Id")
    np.testing.assert_allclose(p.loc["big"], p.loc["small"], atol=1e-6)
    line = _one_line_error(_kit("predict", ws / "runs" / "n", folder, "--out", tmp_path / "t.csv",
                                *_dirs(ws), code=1))
    assert "big.png: 40x24 pixels" in line and "32x32" in line and "data.image_size=32" in line
    assert not (tmp_path / "t.csv").exists()


def test_non_square_images_as_shipped_predict_like_test_csv(tmp_path):
    """cassava's images are not square (here 10x8, HxW) and data.image_size is unset: training
    stretches them to the net's 10x10 on the device; kit predict must take the same 10x8 images
    (it refused them: "saw images as shipped at 10x10") and give the run's test.csv."""
    from kaggle_kit.fetch import fetch
    from kaggle_kit.train import run

    slug, data, runs = "cassava-leaf-disease-classification", tmp_path / "data", tmp_path / "runs"
    fetch(slug, data_dir=data, source=fx_comps.cassava(tmp_path, per_class=4), n_folds=2)
    run(REPO / "recipes" / "demo.yaml", [f"competition={slug}", "data.image_size=null",
        "train.batch_size=4", "train.epochs=1", "cv.folds=[0]", "cv.refit=false",
        "cv.test_from=folds"], name="ns", runs_dir=runs, data_dir=data)
    _kit("predict", runs / "ns", slug, "--out", tmp_path / "s.csv", "--probs", tmp_path / "p.csv",
         "--data-dir", data, "--runs-dir", runs)
    _assert_same_probs(tmp_path / "p.csv", runs / "ns")


def test_unreadable_image_is_a_one_line_error(ws, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = _one_line_error(_kit("predict", ws / "runs" / "a", folder, "--out", tmp_path / "s.csv",
                                *_dirs(ws), code=1))
    assert "7.png: unreadable" in line


def test_export_is_self_contained_and_checked(ws, tmp_path):
    """Export of a blend of blends: each run once, weights as safetensors, hashes in the
    manifest; predicting from it gives test.csv; another kit version, a missing or altered
    weights file: one-line errors naming the file."""
    exp = tmp_path / "exp"
    _kit("export", ws / "runs" / "top", "--out", exp, *_dirs(ws))
    man = json.loads((exp / "manifest.json").read_text())
    assert man["kit_version"] == __version__ and man["run"] == "runs/top"
    assert sorted(p.name for p in (exp / "runs").iterdir()) == ["a", "b", "s", "top", "w"]
    weights = sorted(p.relative_to(exp).as_posix() for p in exp.rglob("model.safetensors"))
    assert weights == [f"runs/a/fold{k}/model.safetensors" for k in range(4)] + \
        [f"runs/b/{m}/model.safetensors" for m in ("fold0", "fold1", "fold2", "fold3", "refit0")]
    assert not list(exp.rglob("*.pt")) and set(man["files"]) >= set(weights)
    assert len(list((exp / "wheels").glob(f"kaggle_kit-{__version__}-*.whl"))) == 1
    assert "pip install --no-index --find-links" in (exp / "README.md").read_text()
    comp = CompetitionDir(ws / "data" / COMP)
    sample = comp.source_root / comp.meta()["sample_submission"]
    img_dir = comp.image_path("test", comp.test_ids()[0]).parent
    args = ["predict", exp, sample, "--image-dir", img_dir, "--out", tmp_path / "s.csv"]
    _kit(*args, "--probs", tmp_path / "p.csv")  # no --data-dir: the export is enough
    _assert_same_probs(tmp_path / "p.csv", ws / "runs" / "top")

    victim = exp / "runs" / "b" / "refit0" / "model.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
    assert "refit0/model.safetensors: sha256 differs" in _one_line_error(_kit(*args, code=1))
    victim.unlink()
    assert "refit0/model.safetensors: missing" in _one_line_error(_kit(*args, code=1))
    man["kit_version"] = "0.0.1"
    (exp / "manifest.json").write_text(json.dumps(man))
    line = _one_line_error(_kit(*args, code=1))
    assert "made by kit 0.0.1" in line and f"this is kit {__version__}" in line


def test_run_with_missing_weights_is_a_one_line_error(ws, tmp_path):
    run = tmp_path / "a"
    shutil.copytree(ws / "runs" / "a", run)
    (run / "fold2" / "model.pt").unlink()
    line = _one_line_error(_kit("predict", run, COMP, "--out", tmp_path / "s.csv", *_dirs(ws),
                                code=1))
    assert "fold2/model.pt: missing weights" in line


def test_version():
    assert _kit("--version").strip() == f"kit {__version__}"


@pytest.mark.slow
def test_export_installs_and_predicts_in_a_fresh_offline_venv(ws, tmp_path):
    """The export's wheel in a new venv (torch etc. from the system, kit only from the wheel,
    --no-index): `kit predict` there reproduces test.csv of a train run and of a blend."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    py, kit = venv / "bin" / "python", venv / "bin" / "kit"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not this checkout's kit
    comp = CompetitionDir(ws / "data" / COMP)
    sample = comp.source_root / comp.meta()["sample_submission"]
    img_dir = comp.image_path("test", comp.test_ids()[0]).parent
    exports = {name: tmp_path / f"exp-{name}" for name in ("a", "top")}
    for name, exp in exports.items():
        _kit("export", ws / "runs" / name, "--out", exp, *_dirs(ws))
    wheel = next((exports["a"] / "wheels").glob("*.whl"))
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheel],
                   check=True, env=env)
    for name, exp in exports.items():
        r = subprocess.run([kit, "predict", exp, sample, "--image-dir", img_dir,
                            "--out", tmp_path / "s.csv", "--probs", tmp_path / f"p-{name}.csv"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _assert_same_probs(tmp_path / f"p-{name}.csv", ws / "runs" / name)
    where = subprocess.run([py, "-c", "import kaggle_kit; print(kaggle_kit.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's kit ran, not the editable one


def test_export_never_deletes_a_users_file(ws, tmp_path):
    """--out onto a file, a user's folder, or an earlier export holding a file kit did not write:
    refused in one line, the file intact; an untouched earlier export is replaced."""
    ex = tmp_path / "ex"
    _kit("export", ws / "runs" / "a", "--out", ex, *_dirs(ws))
    (ex / "notes.txt").write_text("mine")
    line = _one_line_error(_kit("export", ws / "runs" / "a", "--out", ex, *_dirs(ws), code=1))
    assert "notes.txt" in line and (ex / "notes.txt").read_text() == "mine"
    (ex / "notes.txt").unlink()
    _kit("export", ws / "runs" / "a", "--out", ex, *_dirs(ws))  # a plain earlier export: replaced
    (tmp_path / "f").write_text("mine")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("mine")
    for out in (tmp_path / "f", tmp_path / "d"):
        _one_line_error(_kit("export", ws / "runs" / "a", "--out", out, *_dirs(ws), code=1))
    assert (tmp_path / "f").read_text() == (tmp_path / "d" / "x").read_text() == "mine"
