"""kit train end to end on the demo competition, shrunk by overrides (real timm nets, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from kaggle_kit import KitError
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir
from tests.fx_train import RECIPES, REPO, TINY

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s",
               "images_per_s"}


def _ids_of_limited_folds(data_dir: Path, per_fold: int = 24) -> set[str]:
    folds = CompetitionDir.open(data_dir, "demo").folds()
    return set(folds.groupby("fold", sort=False).head(per_fold)["Id"])


def test_demo_run_writes_the_whole_contract(train_tiny, demo_data_dir: Path) -> None:
    summary = train_tiny("demo")
    run = RunDir(train_tiny.runs_dir / "r")
    comp = CompetitionDir.open(demo_data_dir, "demo")
    oof = run.read_oof(comp.classes)
    assert set(oof.index) == _ids_of_limited_folds(demo_data_dir)  # every train Id exactly once
    assert sorted(oof["fold"].unique()) == [0, 1, 2, 3]
    test = run.read_test(comp.classes)
    assert list(test.index) == comp.test_ids()[:96]
    assert abs(test.to_numpy().sum(1) - 1).max() < 1e-4
    for key in ("run", "kind", "competition", "classes", "metric", "cv", "per_fold", "per_class",
                "folds_sha256", "test_from", "recipe", "timings", "images_per_s", "targeted"):
        assert key in summary, key
    assert summary["kind"] == "train" and summary["targeted"] is None
    assert json.loads(run.summary_path.read_text())["cv"] == summary["cv"]
    for k in range(4):
        rows = [json.loads(x) for x in (run.fold_dir(k) / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2] and set(rows[0]) == METRIC_KEYS
        assert not (run.fold_dir(k) / "state.pt").exists()
    prov = run.provenance()
    assert {"git", "versions", "data", "seed", "argv", "host", "start", "end"} <= set(prov)
    assert run.confusion_png.stat().st_size > 0 and run.curves_png.stat().st_size > 0
    assert "epochs: 2" in run.recipe_path.read_text()


class Killed(Exception):
    """Raised by _kill_after's callback: the run stops as if the process had been killed."""


def _kill_after(n_epochs: int):
    """A train.run on_epoch callback raising Killed after n_epochs epochs (checkpoint written)."""
    seen = []

    def on_epoch(name: str, row: dict) -> None:
        seen.append((name, row["epoch"]))
        if len(seen) >= n_epochs:
            raise Killed(f"stopped after {seen}")

    return on_epoch


def test_same_seed_same_oof_and_resume_equals_uninterrupted(train_tiny) -> None:
    few = ["cv.folds=[0,1]", "train.ema=0.9", "train.checkpoint=best", "tta.views=[orig,hflip]",
           "model.drop_rate=0.2"]
    train_tiny("demo", *few, name="a")
    train_tiny("demo", *few, name="b")
    a = (train_tiny.runs_dir / "a" / "oof.csv").read_bytes()
    assert a == (train_tiny.runs_dir / "b" / "oof.csv").read_bytes()  # determinism on CPU
    with pytest.raises(Killed):  # "kill" after fold0 (2 epochs) + 1 epoch of fold1
        train_tiny("demo", *few, name="c", on_epoch=_kill_after(3))
    c = train_tiny.runs_dir / "c"
    assert (c / "fold0" / "done.json").exists() and (c / "fold1" / "state.pt").exists()
    assert not (c / "oof.csv").exists()
    train_tiny("demo", *few, name="c", resume=True)
    assert (c / "oof.csv").read_bytes() == a
    assert (c / "test.csv").read_bytes() == (train_tiny.runs_dir / "a" / "test.csv").read_bytes()
    assert len((c / "fold1" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("stem, extra", [
    ("demo", []),
    ("demo", ["data.resize=device", "data.image_size=24", "data.normalize=model"]),
    ("resnet_fast", []),
    ("resnet_fast_targeted", ["augment.targeted.classes=[three,eight]"]),
    ("baseline_cnn", []),
    pytest.param("vgg16", ["model.pretrained=false", "data.image_size=32", "train.batch_size=8"], marks=pytest.mark.slow),
    pytest.param("vgg19", ["model.pretrained=false", "data.image_size=32", "train.batch_size=8"], marks=pytest.mark.slow),
    pytest.param("xception", ["model.pretrained=false", "data.image_size=32", "train.batch_size=8"],
                 marks=pytest.mark.slow),
])
def test_each_shipped_recipe_runs_one_epoch(train_tiny, stem: str, extra: list[str]) -> None:
    """Smoke test: each shipped recipe validates and trains (its features: test_loop_features)."""
    summary = train_tiny(stem, "train.epochs=1", "cv.folds=[0]", "data.limit=48", *extra)
    assert [f["fold"] for f in summary["per_fold"]] == [0]
    oof = RunDir(train_tiny.runs_dir / "r").read_oof()
    assert len(oof) == 12 and oof["fold"].eq(0).all()  # data.limit=48: 12 per fold
    saved = torch.load(train_tiny.runs_dir / "r" / "fold0" / "model.pt", weights_only=False)
    recipe = yaml.safe_load((RECIPES / f"{stem}.yaml").read_text())
    assert saved["config"]["model"]["name"] == recipe["model"]["name"]
    if stem == "resnet_fast_targeted":
        assert summary["targeted"]["classes"] == ["three", "eight"]


def test_targeted_auto_from_an_earlier_run(train_tiny) -> None:
    first = train_tiny("demo", "train.epochs=1", name="first")
    per_class = first["per_class"]
    worst = sorted(per_class, key=lambda c: (per_class[c], c))[:2]
    s = train_tiny("demo", "train.epochs=1", "cv.folds=[0]", "augment.targeted.auto=2",
                   "augment.targeted.from_run=first", name="second")
    assert s["targeted"]["classes"] == worst and "first" in s["targeted"]["source"]


def test_pretrained_file_offline(train_tiny, tmp_path: Path) -> None:
    from kaggle_kit import models

    net = models.create_model("kit_resnet9", 7)  # another head size: the file's head is dropped
    torch.save(net.state_dict(), tmp_path / "w.pth")
    s = train_tiny("demo", "train.epochs=1", "cv.folds=[0]", "model.name=kit_resnet9",
                   f"model.pretrained_file={tmp_path / 'w.pth'}")
    assert [f["fold"] for f in s["per_fold"]] == [0]  # what the weights do: test_loop_features
    saved = torch.load(train_tiny.runs_dir / "r" / "fold0" / "model.pt", weights_only=False)
    assert saved["config"]["model"]["pretrained_file"] == str(tmp_path / "w.pth")


def test_pretrain_on_another_competition_then_fine_tune(train_tiny, demo_data_dir: Path,
                                                       tmp_path: Path) -> None:
    """model.pretrained_file=<run name> takes that run's fold0/model.pt (head re-sized); weights
    trained on the same competition are refused, since every fold's OOF would be leaked."""
    from kaggle_kit.train import run

    other = tmp_path / "other_data"
    shutil.copytree(demo_data_dir / "demo", other / "digits_b")  # a second competition
    run(RECIPES / "demo.yaml", [*TINY, "competition=digits_b", "train.epochs=1", "cv.folds=[0]"],
        name="pre", runs_dir=train_tiny.runs_dir, data_dir=other)
    pre = torch.load(train_tiny.runs_dir / "pre" / "fold0" / "model.pt", weights_only=False)
    assert pre["config"]["competition"] == "digits_b"

    train_tiny("demo", "train.epochs=1", "cv.folds=[0]", "model.pretrained_file=pre", name="ft")
    ft_dir = train_tiny.runs_dir / "ft"
    ft = torch.load(ft_dir / "fold0" / "model.pt", weights_only=False)
    assert ft["config"]["model"]["pretrained_file"] == str(train_tiny.runs_dir / "pre" / "fold0" / "model.pt")
    assert "pretrained_file: pre" in (ft_dir / "recipe.yaml").read_text()  # as the user gave it

    with pytest.raises(KitError, match=r"ft/fold0/model.pt was trained on demo itself.*leaked") as e:
        train_tiny("demo", "train.epochs=1", "cv.folds=[0]",
                   f"model.pretrained_file={ft_dir}", name="leak")
    assert "\n" not in str(e.value)
    del ft["config"]["competition"]  # a model.pt without it: the run's summary.json tells
    torch.save(ft, ft_dir / "fold0" / "model.pt")
    with pytest.raises(KitError, match="trained on demo itself"):
        train_tiny("demo", "train.epochs=1", "cv.folds=[0]",
                   f"model.pretrained_file={ft_dir / 'fold0' / 'model.pt'}", name="leak")
    with pytest.raises(KitError, match="is a folder without refit0/model.pt or fold0/model.pt"):
        train_tiny("demo", "train.epochs=1", "cv.folds=[0]", f"model.pretrained_file={other}",
                   name="leak")


@pytest.mark.parametrize("overrides, match", [
    (["model.name=kit_resnet99"], r"unknown model; did you mean .*kit_resnet9"),
    (["model.pretrained_file=/nowhere/w.pth"], r"pretrained_file: /nowhere/w.pth not found"),
    (["model.name=kit_baseline_cnn", "data.image_size=8"], r"cannot take 8x8 inputs"),
    (["train.batch_size=4096"], r"batch_size: 4096 is larger than a fold's 72 training images"),
    (["train.lr=1e30"], r"training loss is (nan|inf).* at epoch 1, step \d+"),
    (["augment.targeted.classes=[leopard]"], r"not in competition demo; valid classes: eight,"),
    (["competition=nope"], r"competition 'nope' not fetched"),
])
def test_errors_are_one_line(train_tiny, overrides: list[str], match: str) -> None:
    with pytest.raises(KitError, match=match) as e:
        train_tiny("demo", "train.epochs=1", "cv.folds=[0]", *overrides)
    assert "\n" not in str(e.value)


def test_run_folder_of_another_recipe_is_refused(train_tiny) -> None:
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]")
    with pytest.raises(KitError, match="belongs to another recipe.*--force"):
        train_tiny("demo", "train.epochs=1", "cv.folds=[1]")
    s = train_tiny("demo", "train.epochs=1", "cv.folds=[1]", force=True)
    assert [f["fold"] for f in s["per_fold"]] == [1]
    assert not (train_tiny.runs_dir / "r" / "fold0").exists()
    with pytest.raises(KitError, match="nothing to resume"):
        train_tiny("demo", name="never", resume=True)


def test_cli_train_error_is_one_line(demo_data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kaggle_kit.cli import app

    res = CliRunner().invoke(app, ["train", str(RECIPES / "demo.yaml"), "train.epoch=1",
                                   "--data-dir", str(demo_data_dir), "--runs-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert "unknown key 'train.epoch' (did you mean 'epochs'" in res.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_processes_give_each_id_once(demo_data_dir: Path, tmp_path: Path) -> None:
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29517", "-m", "kaggle_kit",
           "train", str(RECIPES / "demo.yaml"), *TINY, "train.epochs=1", "--name", "ddp",
           "augment.targeted.classes=[three]", "augment.targeted.factor=3",  # oversampled set
           "--data-dir", str(demo_data_dir), "--runs-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    run = RunDir(tmp_path / "ddp")
    oof = run.read_oof()  # raises on a duplicate Id
    assert set(oof.index) == _ids_of_limited_folds(demo_data_dir)
    assert run.provenance()["num_processes"] == 2
    assert run.summary()["targeted"]["classes"] == ["three"]
    assert len(run.read_test()) == 96


def test_cpu_prediction_batches_are_the_train_batch() -> None:
    """On CPU predictions run in train.batch_size images, so the batch size bounds the run's
    memory (256 at 128 px peaked at 2.2 GB where training at batch 32 needed 1.2 GB); a GPU
    batches at least 256."""
    from kaggle_kit.infer import predict_batch_size

    assert predict_batch_size(32, torch.device("cpu")) == 32
    assert predict_batch_size(32, torch.device("cuda")) == 256
    assert predict_batch_size(512, torch.device("cuda")) == 512
