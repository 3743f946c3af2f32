"""Each recipe feature of the training loop, checked by what it does to a run's files.

A feature test fails when its feature is switched off or broken: every check compares a run with
the feature on against the same run without it (same seed, so the only difference is the feature)
or against an independent reference computation. Tests read only run outputs (oof.csv, test.csv,
fold<k>/metrics.jsonl, fold<k>/model.pt, summary.json), never the loop's internals, so they
survive refactors of train.py. Runs: the demo competition shrunk to 96 images at 16 px, ~1 s each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_kit.workspace import CompetitionDir
from tests.fx_train import RECIPES, TINY

# Every feature off: the baseline each feature run is compared with. 1 fold, 2 epochs of
# 72 training images (4 steps of 16 per epoch), no augmentation, no smoothing; a high lr (per
# 256 images: 0.19 at batch 16) so that 8 steps move the weights far.
BASE = [*TINY, "cv.folds=[0]", "augment.pad_crop=0", "augment.flip=false",
        "train.label_smoothing=0", "tta.views=[orig]", "train.lr=3.0"]


@pytest.fixture(scope="module")
def loop(demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """loop(name, *overrides, on_epoch=None) -> run folder: the demo recipe with BASE + overrides.
    Runs are cached by name within this module (`loop("base")` trains once)."""
    from kaggle_kit.train import run

    runs = tmp_path_factory.mktemp("loop_runs")
    done: dict[str, Path] = {}

    def _run(name: str, *overrides: str, on_epoch=None) -> Path:
        if name not in done:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny batches on a shared CPU: 1 thread is fastest
            try:
                run(RECIPES / "demo.yaml", [*BASE, *overrides], name=name, runs_dir=runs,
                    data_dir=demo_data_dir, on_epoch=on_epoch)
            finally:
                torch.set_num_threads(threads)
            done[name] = runs / name
        return done[name]

    _run.data_dir = demo_data_dir
    return _run


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"Id": str}).set_index("Id").drop(columns="fold", errors="ignore")


def _metrics(run: Path, model: str = "fold0") -> list[dict]:
    return [json.loads(x) for x in (run / model / "metrics.jsonl").read_text().splitlines()]


def _params(run: Path, model: str = "fold0") -> dict[str, torch.Tensor]:
    """Learned parameters of a saved model (BatchNorm running statistics left out)."""
    state = torch.load(run / model / "model.pt", map_location="cpu", weights_only=False)["model"]
    return {k: v.float() for k, v in state.items()
            if v.is_floating_point() and "running_" not in k}


def _dist(a: dict, b: dict, keys=None) -> float:
    keys = keys or a.keys()
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in keys) ** 0.5)


def _max_diff(a: Path, b: Path, file: str = "oof.csv") -> float:
    x, y = _csv(a / file), _csv(b / file)
    assert list(x.index) == list(y.index) and list(x.columns) == list(y.columns)
    return float(np.abs(x.to_numpy() - y.to_numpy()).max())


# ----------------------------------------------------------------------------- on vs off


TARGETED = ["augment.targeted.classes=[three,eight]", "augment.targeted.factor=1"]


@pytest.mark.parametrize("name, overrides, reference", [
    ("flip", ["augment.flip=true"], []),
    ("pad_crop", ["augment.pad_crop=2"], []),
    ("albumentations", ["augment.transforms=[{name: HorizontalFlip, p: 1.0}]"], []),
    ("mixup", ["train.mixup=0.4"], []),
    ("cutmix", ["train.cutmix=1.0"], []),
    ("label_smoothing", ["train.label_smoothing=0.2"], []),
    ("targeted_oversampling", ["augment.targeted.classes=[three,eight]", "augment.targeted.factor=3"],
     []),
    # targeting alone redraws the epoch order: compare with the same targeting, no transforms
    ("targeted_transforms", [*TARGETED, "augment.targeted.transforms=[{name: VerticalFlip, p: 1.0}]"],
     TARGETED),
])
def test_feature_changes_training(loop, name: str, overrides: list[str], reference: list[str]) -> None:
    """Switched on, the feature changes what the model learns (same seed, same everything else)."""
    base = loop(f"{name}_reference" if reference else "base", *reference)
    on = loop(name, *overrides)
    assert _max_diff(base, on) > 1e-3, f"{name} on gives the OOF of {name} off"
    assert _metrics(base)[0]["train_loss"] != _metrics(on)[0]["train_loss"]


@pytest.mark.parametrize("name, overrides", [
    ("transforms_p0", ["augment.transforms=[{name: HorizontalFlip, p: 0.0}]"]),  # per-image path
    ("mix_prob0", ["train.mixup=0.4", "train.cutmix=1.0", "train.mix_prob=0"]),
])
def test_neutral_settings_give_the_baseline(loop, name: str, overrides: list[str]) -> None:
    """Settings that switch a feature's effect off reproduce the baseline exactly: the per-image
    albumentations loader feeds the same images as the fast path, mix_prob=0 never mixes."""
    assert _max_diff(loop("base"), loop(name, *overrides)) < 1e-6


def test_targeted_oversampling_shows_its_classes_factor_times(loop) -> None:
    """factor 3 on two classes: each epoch sees their training images 3 times (summary counts)."""
    base = loop("base")
    on = loop("targeted_oversampling", "augment.targeted.classes=[three,eight]",
              "augment.targeted.factor=3")
    folds = CompetitionDir.open(loop.data_dir, "demo").folds()
    train = folds.groupby("fold", sort=False).head(24)  # data.limit=96: first 24 of each fold
    train = train[train["fold"] != 0]
    n_t = int(train["label"].isin(["three", "eight"]).sum())
    seen = {r: json.loads((r / "summary.json").read_text())["timings"]["models"]["fold0"]["images"]
            for r in (base, on)}
    epochs, bs = 2, 16
    expected = epochs * (len(train) + 2 * n_t)  # +- one dropped incomplete batch per epoch
    assert n_t >= 6 and abs(seen[on] - expected) < epochs * bs, (seen, expected)
    assert abs(seen[base] - epochs * len(train)) < epochs * bs


# ----------------------------------------------------------------------------- EMA


def test_ema_weights_follow_the_training_weights(loop) -> None:
    """model.pt holds the EMA weights: they move with training (a warmup lets a short run's EMA
    follow the net), lag the trained net, and lag it more with a slower decay."""
    trained = _params(loop("base"))
    half = _params(loop("ema_half", "train.ema=0.5"))
    slow = _params(loop("ema_slow", "train.ema=0.999999"))
    init = _params(loop("still", "train.lr=1e-9"))  # ~ the initial weights (same init seed)
    span = _dist(trained, init)
    assert span > 0.1
    assert 1e-4 * span < _dist(half, trained) < 0.5 * span  # moved with training, lagging it
    # the decay is used, and its warmup (1 - (1 + step)^-2/3 up to the decay) lets even 0.999999
    # follow the net over 8 steps. Measured: 0.14 span from the net, 0.88 from the initial
    # weights (without the warmup: 0.79 and 0.33)
    assert 1.5 * _dist(half, trained) < _dist(slow, trained) < 0.4 * span
    assert _dist(slow, init) > 0.6 * span
    assert _max_diff(loop("base"), loop("ema_half", "train.ema=0.5")) > 1e-4  # predicts with it


# ----------------------------------------------------------------------------- checkpoint


def _fold0_log_loss(loop, run: Path) -> float:
    labels = CompetitionDir.open(loop.data_dir, "demo").folds().set_index("Id")["label"]
    oof = _csv(run / "oof.csv")
    y = labels.loc[oof.index].to_numpy()
    p = oof.to_numpy()[np.arange(len(oof)), [list(oof.columns).index(c) for c in y]]
    return float(-np.log(np.clip(p, 1e-15, 1)).mean())


def test_checkpoint_last_and_best(loop) -> None:
    """The OOF predictions come from the last epoch's weights (last) or from the epoch with the
    lowest validation loss (best: what kit minimises for demo's metric, accuracy); with one TTA
    view their log loss is that epoch's val_loss.
    A high constant lr makes the validation loss fall, then rise (measured: best = epoch 2 of 5)."""
    rough = ["train.epochs=5", "train.schedule=constant", "train.lr=2.0"]
    last = loop("ckpt_last", *rough, "train.checkpoint=last")
    best = loop("ckpt_best", *rough, "train.checkpoint=best")
    val = [r["val_loss"] for r in _metrics(last)]
    assert [r["val_loss"] for r in _metrics(best)] == val  # same training either way
    best_epoch = int(np.argmin(val))
    assert 0 < best_epoch < len(val) - 1, f"setup: the best epoch must be a middle one ({val})"
    assert min(val) < val[-1] - 0.01
    assert _fold0_log_loss(loop, last) == pytest.approx(val[-1], abs=1e-4)
    assert _fold0_log_loss(loop, best) == pytest.approx(min(val), abs=1e-4)
    summary = json.loads((best / "summary.json").read_text())
    assert summary["timings"]["models"]["fold0"]["best_epoch"] == 1 + best_epoch


# ----------------------------------------------------------------------------- TTA


def _view(x: np.ndarray, view: str) -> np.ndarray:
    """Reference TTA views of (B,C,H,W) arrays, written independently of kaggle_kit.augment:
    flips, and 1 px shifts of the content (down-right / up-left) with reflect padding."""
    if view.startswith("hflip"):
        x = x[..., ::-1]
        view = view.replace("hflip", "orig", 1) if view == "hflip" else view[len("hflip_"):]
    if view == "vflip":
        return x[..., ::-1, :]
    if view in ("shift", "shift_dr"):
        return np.pad(x, [(0, 0), (0, 0), (1, 0), (1, 0)], mode="reflect")[..., :-1, :-1]
    if view == "shift_ul":
        return np.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1)], mode="reflect")[..., 1:, 1:]
    assert view == "orig", view
    return x


VIEWS = ["orig", "hflip", "vflip", "shift", "shift_dr", "shift_ul", "hflip_shift_dr",
         "hflip_shift_ul"]


def test_tta_views_average_the_named_transforms(loop) -> None:
    """test.csv = mean softmax of fold0/model.pt over every view, recomputed here from the test
    PNGs (32 px: the cache holds them unresized) with reference flips and shifts."""
    from PIL import Image

    from kaggle_kit import models

    run = loop("tta_all", "data.image_size=32", f"tta.views=[{','.join(VIEWS)}]")
    saved = torch.load(run / "fold0" / "model.pt", map_location="cpu", weights_only=False)
    cfg = saved["config"]
    net = models.create_model(cfg["model"]["name"], len(cfg["classes"]), img_size=cfg["img_size"])
    net.load_state_dict(saved["model"])
    net.eval()
    test = _csv(run / "test.csv")
    comp = CompetitionDir.open(loop.data_dir, "demo")
    x = np.stack([np.asarray(Image.open(comp.image_path("test", i)).convert("RGB"))
                  for i in test.index]).astype(np.float32)  # (B,H,W,3) 0..255
    x = ((x - np.array(cfg["mean"])) / np.array(cfg["std"])).transpose(0, 3, 1, 2)
    with torch.no_grad():
        per_view = {v: torch.softmax(net(torch.tensor(_view(x, v).copy(), dtype=torch.float32)),
                                     1).numpy() for v in VIEWS}
    expected = np.mean(list(per_view.values()), axis=0)
    assert np.abs(test[cfg["classes"]].to_numpy() - expected).max() < 1e-4
    for v in VIEWS[1:]:  # each view is a different input: leaving one out would show
        assert np.abs(per_view[v] - per_view["orig"]).max() > 1e-3, v


# ----------------------------------------------------------------------------- refit, test_from


@pytest.mark.parametrize("test_from, members", [
    ("folds", ["fold0"]), ("refit", ["refit0", "refit1"]), ("both", ["fold0", "refit0", "refit1"]),
])
def test_refit_and_test_from(loop, test_from: str, members: list[str]) -> None:
    """cv.refit=2 trains two models on all training images (seeds differ); test.csv averages the
    models test_from names; oof.csv comes from the folds only."""
    run = loop(f"refit_{test_from}", "train.epochs=1", "cv.refit=2", f"cv.test_from={test_from}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_members"] == members
    expected = sum(_csv(run / m / "test.csv") for m in members) / len(members)
    assert (_csv(run / "test.csv") - expected).abs().to_numpy().max() < 1e-6
    seen = {m: s["images"] for m, s in summary["timings"]["models"].items()}
    assert seen["refit0"] == 96 and seen["fold0"] == 64  # all 96 rows vs the other folds' 72
    assert _max_diff(run / "refit0", run / "refit1", "test.csv") > 1e-3  # another seed
    assert _metrics(run, "refit1")[0]["val_loss"] is None
    assert set(_csv(run / "oof.csv").index) == set(_csv(run / "fold0" / "oof.csv").index)


# ----------------------------------------------------------------------------- model + step


def test_pretrained_file_initialises_the_trunk(loop, tmp_path: Path) -> None:
    """With lr ~0 the trained net keeps the weights of model.pretrained_file (its 7-class head is
    replaced by a new 10-class one), not a fresh initialisation."""
    from kaggle_kit import models

    torch.manual_seed(123)  # other weights than the run's own initialisation
    file_state = models.create_model("kit_resnet9_s", 7).state_dict()
    torch.save(file_state, tmp_path / "w.pth")
    run = loop("pretrained", "train.lr=1e-9", "train.epochs=1",
               f"model.pretrained_file={tmp_path / 'w.pth'}")
    got, fresh = _params(run), _params(loop("still", "train.lr=1e-9"))
    trunk = [k for k in got if got[k].shape == file_state[k].shape]
    assert len(trunk) >= len(got) - 2  # all but the classifier weight + bias
    assert _dist(got, {k: v.float() for k, v in file_state.items()}, trunk) < 1e-4
    assert _dist(fresh, {k: v.float() for k, v in file_state.items()}, trunk) > 1.0


def test_grad_accum_equals_one_bigger_batch(loop) -> None:
    """2 micro-batches of 8 with grad_accum=2 = one batch of 16: same gradients, same lr (per 256
    images), same number of steps. A LayerNorm net (test_vit): no batch statistics."""
    vit = ["model.name=test_vit", "data.limit=128"]  # 96 training rows: whole batches of 8 and 16
    big = loop("bs16", *vit, "train.batch_size=16")
    acc = loop("bs8x2", *vit, "train.batch_size=8", "train.grad_accum=2")
    small = loop("bs8", *vit, "train.batch_size=8")
    assert _max_diff(big, acc) < 1e-4
    assert [r["lr"] for r in _metrics(big)] == pytest.approx([r["lr"] for r in _metrics(acc)])
    assert _max_diff(big, small) > 1e-3  # without accumulation it is another run


def test_grad_accum_steps_on_the_last_short_group(loop) -> None:
    """12 micro-batches of 8 per epoch with grad_accum=5: groups of 5, 5 and a short 2 that still
    steps the optimizer and the schedule at the epoch's end (3 steps per epoch, the count the
    schedule was built for), and the next epoch counts its groups afresh."""
    from kaggle_kit import recipe, train_setup
    from tests.fx_train import RECIPES

    over = [*BASE, "model.name=test_vit", "data.limit=128", "train.batch_size=8",
            "train.grad_accum=5"]
    run = loop("bs8x5", *over[len(BASE):])
    tr = recipe.load(RECIPES / "demo.yaml", over).train
    peak, f = tr.lr * 8 * 5 / 256, train_setup.lr_lambda(tr, 3)
    assert [r["lr"] for r in _metrics(run)] == pytest.approx([peak * f(3), peak * f(6)])


def test_channels_last_changes_layout_not_results(loop) -> None:
    """channels_last trains on NHWC memory (the saved conv weights keep that layout) and gives
    the same predictions as the default layout, up to float summation order (other kernels)."""
    on, off = loop("base"), loop("nchw", "train.channels_last=false")
    assert _max_diff(on, off) < 1e-2

    def conv_layouts(run: Path) -> set[bool]:
        state = torch.load(run / "fold0" / "model.pt", map_location="cpu", weights_only=False)
        return {v.is_contiguous() for v in state["model"].values() if v.ndim == 4}

    assert conv_layouts(on) == {False} and conv_layouts(off) == {True}


def test_max_minutes_stops_a_model_early(loop) -> None:
    run = loop("budget", "train.epochs=3", "train.max_minutes=0.000001")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timings"]["models"]["fold0"]["stopped_early"] == 1
    assert len(_metrics(run)) == 1
    assert len(_metrics(loop("base"))) == 2


def test_threads_apply_during_the_run_and_are_restored(demo_data_dir: Path, tmp_path: Path) -> None:
    from kaggle_kit.train import run

    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for threads in ("train.threads=1", "train.threads=null"):
            run(RECIPES / "demo.yaml", [*BASE, "train.epochs=1", threads], name=threads[-4:],
                runs_dir=tmp_path, data_dir=demo_data_dir,
                on_epoch=lambda name, row: seen.append(torch.get_num_threads()))
            assert torch.get_num_threads() == 2  # restored for the caller
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
