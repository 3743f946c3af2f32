"""What train.py builds before its loop: the cheap checks (targeted classes, albumentations
specs, TTA views, precision), the data context `Ctx` (the uint8 cache on the device, folds,
normalisation stats), the model plan (folds + refit seeds), and the net / optimizer / lr schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_kit import KitError
from kaggle_kit import recipe as recipes
from kaggle_kit.workspace import CompetitionDir, RunDir

# ----------------------------------------------------------------------------- checks


def resolve_targeted(rec: recipes.Recipe, comp: CompetitionDir, runs_dir: Path) -> dict | None:
    """{"classes", "factor", "transforms", "source"} of augment.targeted, or None.

    `auto: K` takes the K classes with the lowest OOF accuracy in from_run's summary.json."""
    t = rec.augment.targeted
    if t is None:
        return None
    valid = comp.classes
    if t.auto is not None:
        src = _run_path(t.from_run, runs_dir)
        per_class = RunDir(src).summary().get("per_class") or {}
        ranked = sorted(per_class, key=lambda c: (per_class[c] is None, per_class[c] or 0.0, c))
        chosen, source = ranked[: t.auto], f"auto: lowest {t.auto} OOF accuracy of {src}"
    else:
        chosen, source = list(t.classes), "recipe"
    unknown = [c for c in chosen if c not in valid]
    if unknown:
        raise KitError(f"augment.targeted: classes {unknown} are not in competition "
                       f"{comp.name}; valid classes: {', '.join(valid)}")
    return {"classes": chosen, "factor": t.factor, "transforms": t.transforms, "source": source}


def resolve_pretrained(rec: recipes.Recipe, comp: CompetitionDir, runs_dir: Path) -> str | None:
    """model.pretrained_file as the path of a weights file, or None.

    A kit run folder (a path, or a run name under runs_dir) stands for its refit0/model.pt, else
    its fold0/model.pt: pretraining on a related competition is `kit train ... competition=other`,
    then `model.pretrained_file=runs/<that run>`. Refuses kit weights trained on this same
    competition: they have seen every fold's validation images, so the OOF scores would be leaked."""
    given = rec.model.pretrained_file
    if not given:
        return None
    path = _run_path(given, runs_dir)
    if path.is_dir():
        found = next((c for c in (path / "refit0" / "model.pt", path / "fold0" / "model.pt")
                      if c.is_file()), None)
        if found is None:
            raise KitError(f"model.pretrained_file: {path} is a folder without refit0/model.pt or "
                           "fold0/model.pt; give a run with a finished model or a weights file")
        path = found
    if not path.is_file():
        raise KitError(f"model.pretrained_file: {given} not found; "
                       "download the weights file or set model.pretrained_file=null")
    source = _trained_on(path)
    if source == comp.name:
        raise KitError(f"model.pretrained_file: {path} was trained on {comp.name} itself, so it has "
                       "seen every fold's validation images and the OOF scores would be leaked; "
                       "pretrain on another competition or use ImageNet weights")
    return str(path)


def _run_path(given: str, runs_dir: Path) -> Path:
    """A run (or file) given as a path, or as a run name under runs_dir."""
    path = Path(given).expanduser()
    return runs_dir / given if not path.exists() and (runs_dir / given).exists() else path


def _trained_on(path: Path) -> str | None:
    """The competition a kit model.pt was trained on: its config (kit >= 0.1 writes it) or,
    for a fold / refit model inside a run folder, that run's summary.json."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        name = (saved.get("config") or {}).get("competition") if isinstance(saved, dict) else None
    except Exception:  # noqa: BLE001 - not a kit checkpoint (safetensors, foreign pickle)
        name = None
    run = RunDir(path.parent.parent)
    if name is None and path.name == "model.pt" and run.summary_path.is_file():
        name = run.summary().get("competition")
    return name


def normalize_note(rec: recipes.Recipe) -> str | None:
    """A warning for pretrained weights (hub or a foreign file) with data.normalize: dataset:
    such weights expect the mean/std they were trained with. Kit's own model.pt files (which
    record their stats) are left alone: they were trained on a competition's dataset stats."""
    m = rec.model
    if rec.data.normalize != "dataset" or not (m.pretrained or m.pretrained_file):
        return None
    if m.pretrained_file and Path(m.pretrained_file).name == "model.pt" and _trained_on(
            Path(m.pretrained_file)):
        return None
    return ("data.normalize: dataset with pretrained weights: the weights expect their own "
            "mean/std; set data.normalize=model")


def check_augment(rec: recipes.Recipe, targeted: dict | None) -> None:
    """Fail before training on a bad albumentations spec or TTA view name."""
    import torch

    from kaggle_kit import augment

    augment.build_transform(rec.augment.transforms, where="augment.transforms")
    if targeted:
        augment.build_transform(targeted["transforms"], where="augment.targeted.transforms")
    augment.tta_views(torch.zeros(1, 3, 4, 4), rec.tta.views)


def progress_bars(enabled: bool):
    """Rich bars with ETA: the run (epochs of all models), the current model, the epoch."""
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("{task.description:>12}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
                       rp.TimeRemainingColumn(), disable=not enabled)


# ----------------------------------------------------------------------------- data + context


@dataclass
class Ctx:
    """Everything train_fold reads: the recipe, the accelerator, the data tensors. No behaviour."""

    acc: Any
    rec: recipes.Recipe
    comp: CompetitionDir
    run_dir: RunDir
    classes: list[str]
    ids: list[str]  # train Ids used (data.limit may drop some), row i of x / y / fold
    x: Any  # (N,H,W,3) uint8 train images (torch, on the device)
    y: Any  # (N,) int64 class indices
    fold: np.ndarray  # (N,) fold of each row
    test_ids: list[str]
    test_x: Any  # (M,H,W,3) uint8
    mean: Any  # (1,3,1,1) float, 0..255 scale
    std: Any
    img_size: int  # pixels the net sees
    targeted: dict | None
    x_np: np.ndarray | None = None  # the same train images as numpy (per-image loader path)
    y_np: np.ndarray | None = None
    progress: Any = None
    run_task: Any = None
    epochs_done: int = 0  # epochs trained by this run so far, all models (tracker step)
    notes: list = field(default_factory=list)  # one-line notes the main process prints once
    timings: dict = field(default_factory=dict)


def load_context(acc, rec: recipes.Recipe, comp: CompetitionDir, run_dir: RunDir,
                 targeted: dict | None) -> Ctx:
    """Load the cache once (train rows joined to folds.csv by Id), move it to the device."""
    import torch

    from kaggle_kit import images

    s = rec.data.image_size
    size = (s, s) if s and rec.data.resize == "decode" else None
    cache_ids, cache_x = images.load_cache(comp, "train", size)
    test_ids, test_x = images.load_cache(comp, "test", size)
    folds = comp.folds()
    if rec.data.limit:  # debugging subset: the first rows of each fold, keeps every fold
        per = max(1, math.ceil(rec.data.limit / folds["fold"].nunique()))
        folds = folds.groupby("fold", sort=False).head(per)
        test_ids, test_x = test_ids[: rec.data.limit], test_x[: rec.data.limit]
    row = {i: r for r, i in enumerate(cache_ids)}
    missing = [i for i in folds["Id"] if i not in row]
    if missing:
        raise KitError(f"{comp.folds_path}: Id {missing[0]} has no cached image; "
                       f"rerun `kit fetch {comp.name} --force`")
    classes = comp.classes
    cls_index = {c: k for k, c in enumerate(classes)}
    x = np.ascontiguousarray(cache_x[[row[i] for i in folds["Id"]]])
    mean, std = _norm_stats(rec, x)
    dev = acc.device
    return Ctx(acc=acc, rec=rec, comp=comp, run_dir=run_dir, classes=classes,
               ids=folds["Id"].tolist(), x=torch.from_numpy(x).to(dev),
               y=torch.tensor(folds["label"].map(cls_index).to_numpy(), device=dev),
               fold=folds["fold"].to_numpy(), test_ids=list(test_ids),
               test_x=torch.from_numpy(np.array(test_x)).to(dev),
               mean=torch.tensor(mean, device=dev).view(1, 3, 1, 1).float(),
               std=torch.tensor(std, device=dev).view(1, 3, 1, 1).float(),
               img_size=s or int(x.shape[1]), targeted=targeted, x_np=x,
               y_np=folds["label"].map(cls_index).to_numpy())


def _norm_stats(rec: recipes.Recipe, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) on the 0..255 scale: of the train images, or timm's pretrained cfg.

    Dataset stats use every train image (pixels only, no labels), so all folds share them."""
    if rec.data.normalize == "model":  # what the pretrained weights expect (ImageNet default)
        import timm

        from kaggle_kit import models  # noqa: F401 - registers kit_* nets in timm

        cfg = timm.models.get_pretrained_cfg(rec.model.name)
        mean = cfg.mean if cfg and cfg.mean else timm.data.IMAGENET_DEFAULT_MEAN
        std = cfg.std if cfg and cfg.std else timm.data.IMAGENET_DEFAULT_STD
        return np.array(mean) * 255, np.array(std) * 255
    s1, s2, n = np.zeros(3), np.zeros(3), 0
    for i in range(0, len(x), 1024):
        chunk = x[i: i + 1024].reshape(-1, 3).astype(np.float64)
        s1, s2, n = s1 + chunk.sum(0), s2 + (chunk**2).sum(0), n + len(chunk)
    mean = s1 / max(n, 1)
    return mean, np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 1e-6))


def model_plan(rec: recipes.Recipe, ctx: Ctx) -> dict[str, tuple]:
    """{model name: (train rows, val rows or None, seed)} for the folds and refit seeds to train."""
    all_folds = sorted(set(ctx.fold.tolist()))
    run_folds = rec.cv.folds if rec.cv.folds is not None else all_folds
    bad = [k for k in run_folds if k not in all_folds]
    if bad:
        raise KitError(f"cv.folds: {bad} not in folds.csv (folds {all_folds})")
    rows = np.arange(len(ctx.ids))
    plan = {f"fold{k}": (rows[ctx.fold != k], rows[ctx.fold == k], rec.seed) for k in run_folds}
    for i in range(rec.cv.n_refit):
        plan[f"refit{i}"] = (rows, None, rec.seed + i)
    n_train = min(len(tr) for tr, _, _ in plan.values())
    if rec.train.batch_size > n_train:
        raise KitError(f"train.batch_size: {rec.train.batch_size} is larger than a fold's "
                       f"{n_train} training images; lower it (e.g. train.batch_size={n_train // 4 or 1})")
    return plan


# ----------------------------------------------------------------------------- model + optimizer


def build_model(ctx: Ctx):
    """timm model with a head sized from the class list, checked against the input size."""
    import torch

    from kaggle_kit import models

    m = ctx.rec.model
    net = models.create_model(m.name, len(ctx.classes), pretrained=m.pretrained or bool(m.pretrained_file),
                              pretrained_file=m.pretrained_file, drop_rate=m.drop_rate,
                              drop_path_rate=m.drop_path_rate, img_size=ctx.img_size)
    models.check_input(net, ctx.img_size)
    if m.pretrained_file and not ctx.timings.get("load_reported"):  # once per run
        ctx.timings["load_reported"] = True
        ctx.notes.append(models.load_report(net, m.pretrained_file))
    net = net.to(ctx.acc.device)
    if ctx.rec.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def make_optimizer(net, tr: recipes.Train, lr: float):
    """SGD (nesterov) or AdamW from timm.optim.create_optimizer_v2: no weight decay on 1-d
    params (norms, biases) nor on what the net lists in no_weight_decay() (ViT pos_embed,
    cls_token, Swin relative-position tables); layer-wise lr decay when train.layer_decay is set.
    Each group's lr already holds its layer-decay scale (the LambdaLR schedule multiplies it)."""
    from timm.optim import create_optimizer_v2

    if tr.layer_decay is not None and not hasattr(net, "group_matcher"):
        raise KitError(f"train.layer_decay: {type(net).__name__} has no layer groups "
                       "(timm group_matcher); set train.layer_decay=null")
    if tr.optimizer == "sgd":
        name = "sgd" if tr.nesterov and tr.momentum > 0 else "momentum"  # timm: sgd = nesterov
        kw = {"momentum": tr.momentum}
    else:
        name, kw = "adamw", {"betas": (tr.momentum, 0.999)}
    opt = create_optimizer_v2(net, name, lr=lr, weight_decay=tr.weight_decay,
                              layer_decay=tr.layer_decay, foreach=None, **kw)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return opt


def lr_lambda(tr: recipes.Train, steps_per_epoch: int):
    """Multiplier of the peak lr at optimizer step s (linear warmup first, then the schedule)."""
    total = max(1, tr.epochs * steps_per_epoch)
    warm = min(int(tr.warmup_epochs * steps_per_epoch), total - 1)

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        p = min(1.0, (s - warm) / max(1, total - warm))  # 0 -> 1 after warmup
        if tr.schedule == "onecycle":  # linear down to 0 (airbench / hlb style triangle)
            return 1.0 - p
        if tr.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * p))
        if tr.schedule == "step":
            return tr.step_gamma ** ((s // max(1, steps_per_epoch)) // tr.step_epochs)
        return 1.0

    return f
