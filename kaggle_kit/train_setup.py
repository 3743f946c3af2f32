"""What train.py builds before its loop: the cheap checks (targeted classes, albumentations
specs, TTA views, precision), the data context `Ctx` (the uint8 cache on the device or streamed
from its file, folds, normalisation stats), the model plan (folds + refit seeds), and the net / optimizer / lr schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_kit import KitError, metrics, targets
from kaggle_kit import recipe as recipes
from kaggle_kit.rundir import RunDir, finished_model, model_competition
from kaggle_kit.workspace import CompetitionDir

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
        found = finished_model(path)
        if found is None:
            raise KitError(f"model.pretrained_file: {path} is a folder without refit0/model.pt or "
                           "fold0/model.pt; give a run with a finished model or a weights file")
        path = found
    if not path.is_file():
        raise KitError(f"model.pretrained_file: {given} not found; "
                       "download the weights file or set model.pretrained_file=null")
    source = model_competition(path)
    if source == comp.name:
        raise KitError(f"model.pretrained_file: {path} was trained on {comp.name} itself, so it has "
                       "seen every fold's validation images and the OOF scores would be leaked; "
                       "pretrain on another competition or use ImageNet weights")
    return str(path)


def _run_path(given: str, runs_dir: Path) -> Path:
    """A run (or file) given as a path, or as a run name under runs_dir."""
    path = Path(given).expanduser()
    return runs_dir / given if not path.exists() and (runs_dir / given).exists() else path


def normalize_note(rec: recipes.Recipe) -> str | None:
    """A warning for pretrained weights (hub or a foreign file) with data.normalize: dataset:
    such weights expect the mean/std they were trained with. Kit's own model.pt files (which
    record their stats) are left alone: they were trained on a competition's dataset stats."""
    m = rec.model
    if rec.data.normalize != "dataset" or not (m.pretrained or m.pretrained_file):
        return None
    if m.pretrained_file and Path(m.pretrained_file).name == "model.pt" and model_competition(
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


def progress_bars(enabled: bool, transient: bool = False):
    """Rich bars with ETA: the run (epochs of all models), the current model, the epoch.
    transient: erased when done (kit predict: an error then stays the only line)."""
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("{task.description:>12}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
                       rp.TimeRemainingColumn(), disable=not enabled, transient=transient)


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
    x: Any  # (N,H,W,3) uint8 train images: torch on the device, or images.CacheArray (streamed)
    y: Any  # (N,) int64 class indices
    fold: np.ndarray  # (N,) fold of each row
    test_ids: list[str]
    test_x: Any  # (M,H,W,3) uint8, like x
    mean: Any  # (1,3,1,1) float, 0..255 scale
    std: Any
    img_size: int  # pixels the net sees
    targeted: dict | None
    x_np: Any = None  # the same train images as an images.CacheArray (per-image loader path)
    y_np: np.ndarray | None = None
    progress: Any = None
    run_task: Any = None
    epochs_done: int = 0  # epochs trained by this run so far, all models (tracker step)
    notes: list = field(default_factory=list)  # one-line notes the main process prints once
    on_epoch: Any = None  # run()'s callback(model name, metrics row) after each epoch, or None
    timings: dict = field(default_factory=dict)
    task: str = "multiclass"  # competition.json "task" (targets.py, metrics.py)
    metric: str = "accuracy"  # competition.json "metric": the CV score, checkpoint: best
    labels: Any = None  # pd.Series of folds.csv labels by Id (class values; multilabel: sets)


CPU_RESIDENT_MAX = 512 << 20  # bytes: on CPU a bigger cache is streamed (the page cache serves
# it at memory speed, shared and evictable, while a resident copy would be process memory)
GPU_RESIDENT_FRACTION = 0.4  # of the GPU's free memory; the rest is for the net's activations


def load_context(acc, rec: recipes.Recipe, comp: CompetitionDir, run_dir: RunDir,
                 targeted: dict | None) -> Ctx:
    """Open the decode cache (rank 0 builds or repairs it while the others wait), join the train
    rows to folds.csv by Id, and keep the images on the device or stream them from the cache file
    (data.load; the choice is printed). Each rank reads only the rows it uses."""
    import torch

    from kaggle_kit import images

    size, fit = cache_size(rec, comp, acc.print)
    say = acc.print if acc.is_main_process else None
    with acc.main_process_first():  # one rank decodes a missing cache, the others then open it
        cache_ids, cache_x = images.open_cache(comp, "train", size, fit, say)
        test_ids, test_x = images.open_cache(comp, "test", size, fit, say)
    folds = comp.folds()
    if rec.data.limit:  # debugging subset: the first rows of each fold, keeps every fold
        per = max(1, math.ceil(rec.data.limit / folds["fold"].nunique()))
        folds = folds.groupby("fold", sort=False).head(per)
        test_ids = test_ids[: rec.data.limit]
        test_x = test_x.view(np.arange(len(test_ids)))
    row = {i: r for r, i in enumerate(cache_ids)}
    missing = [i for i in folds["Id"] if i not in row]
    if missing:
        raise KitError(f"{comp.folds_path}: Id {missing[0]} has no cached image; "
                       f"rerun `kit fetch {comp.name} --force`")
    rows = np.array([row[i] for i in folds["Id"]], dtype=np.int64)
    x_host = cache_x.view(rows)  # (N,H,W,3) uint8 in folds.csv order, read on demand
    every = len(rows) == len(cache_x) and np.array_equal(np.sort(rows), np.arange(len(rows)))
    mean, std = _norm_stats(rec, x_host, images.pixel_histogram(cache_x.path) if every else None)
    where, why = placement(rec.data.load, x_host.nbytes + test_x.nbytes, acc.device)
    acc.print(f"data: {len(rows)} train + {len(test_ids)} test images "
              f"{'x'.join(map(str, x_host.shape[1:3]))}, "
              f"{(x_host.nbytes + test_x.nbytes) / 1e6:.0f} MB: "
              + (f"kept on {acc.device}" if where == "device" else
                 f"streamed from {cache_x.path.parent}") + f" ({why})")
    dev = acc.device
    classes = comp.classes
    task, metric = metrics.competition_target(comp.meta(), str(comp.meta_path))
    y = targets.encode(folds, classes, task, str(comp.folds_path))  # (N,) or (N, C) multilabel
    return Ctx(acc=acc, rec=rec, comp=comp, run_dir=run_dir, classes=classes,
               ids=folds["Id"].tolist(),
               x=on_device(x_host, dev) if where == "device" else x_host,
               y=torch.from_numpy(y).to(dev), fold=folds["fold"].to_numpy(),
               test_ids=list(test_ids),
               test_x=on_device(test_x, dev) if where == "device" else test_x,
               mean=torch.tensor(mean, device=dev).view(1, 3, 1, 1).float(),
               std=torch.tensor(std, device=dev).view(1, 3, 1, 1).float(),
               img_size=rec.data.image_size or int(x_host.shape[1]), targeted=targeted,
               x_np=x_host, y_np=y, task=task, metric=metric,
               labels=folds.set_index("Id")["label"])


def cache_size(rec: recipes.Recipe, comp: CompetitionDir, say) -> tuple[tuple | None, str]:
    """((H,W) the cache is decoded at, or None = as shipped; fit). Images of several sizes are
    resized at decode to data.image_size (said once); without an image_size they are refused."""
    s, fit = rec.data.image_size, rec.data.fit
    sizes = comp.meta().get("image_sizes") or {}
    if s is None:
        if len(sizes) > 1:
            common = next(iter(sizes))
            raise KitError(f"{comp.meta_path}: images have mixed sizes {sizes}; set "
                           f"data.image_size (e.g. data.image_size={min(map(int, common.split('x')))}"
                           ") so they are resized to one square (data.fit: stretch or crop)")
        return None, "stretch"
    if rec.data.resize == "device" and len(sizes) <= 1:
        return None, "stretch"
    other = {k: v for k, v in sizes.items() if k != f"{s}x{s}"}
    if other:
        how = "stretched" if fit == "stretch" else "short side scaled, centre-cropped"
        say(f"data: resizing {sum(other.values())} images ({', '.join(other)}) to {s}x{s} "
            f"when decoding ({how}: data.fit={fit})")
    return (s, s), fit


def placement(load: str, nbytes: int, device) -> tuple[str, str]:
    """("device" | "stream", why): the whole cache on the device when it fits, else stream."""
    if load != "auto":
        return load, f"data.load={load}"
    import torch

    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        limit, what = GPU_RESIDENT_FRACTION * free, f"{GPU_RESIDENT_FRACTION:.0%} of {free / 1e9:.1f} GB free"
    else:
        limit, what = CPU_RESIDENT_MAX, f"{CPU_RESIDENT_MAX >> 20} MB on CPU"
    where = "device" if nbytes <= limit else "stream"
    return where, f"data.load=auto: {'within' if where == 'device' else 'over'} {what}"


def on_device(arr, device):
    """A (N,H,W,3) uint8 torch tensor on `device` filled from a CacheArray in 64 MB pieces."""
    import torch

    out = torch.empty(arr.shape, dtype=torch.uint8, device=device)
    step = max(1, (64 << 20) // max(1, arr.row_bytes))
    for i in range(0, len(arr), step):
        out[i: i + step].copy_(torch.from_numpy(arr[i: i + step]))
    return out


def _norm_stats(rec: recipes.Recipe, x, hist: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) on the 0..255 scale: of the train images, or timm's pretrained cfg.

    Dataset stats use every train image (pixels only, no labels), so all folds share them. `hist`
    ((3,256) value counts recorded at cache build) gives the same sums without reading x: the sums
    are integers below 2**53, exact in float64 in any order. Without it the values of x are
    counted the same way, a uint8 chunk at a time (a float64 copy of a chunk was 8x its size:
    ~0.8 GB transient at 128 px, kept in the heap under accel.keep_freed_memory)."""
    if rec.data.normalize == "model":  # what the pretrained weights expect (ImageNet default)
        import timm

        from kaggle_kit import models  # noqa: F401 - registers kit_* nets in timm

        cfg = timm.models.get_pretrained_cfg(rec.model.name)
        mean = cfg.mean if cfg and cfg.mean else timm.data.IMAGENET_DEFAULT_MEAN
        std = cfg.std if cfg and cfg.std else timm.data.IMAGENET_DEFAULT_STD
        return np.array(mean) * 255, np.array(std) * 255
    if hist is None:  # a subset of the cache: count its values, 64 MB of uint8 rows at a time
        from kaggle_kit.cache import value_histogram

        hist = np.zeros((3, 256), np.int64)
        step = max(1, (64 << 20) // max(1, int(np.prod(x.shape[1:]))))
        for i in range(0, len(x), step):
            hist += value_histogram(x[i: i + step])
    v = np.arange(256, dtype=np.int64)
    s1, s2, n = (hist @ v).astype(np.float64), (hist @ (v * v)).astype(np.float64), int(hist[0].sum())
    mean = s1 / max(n, 1)
    return mean, np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 1e-6))


def model_plan(rec: recipes.Recipe, ctx: Ctx) -> dict[str, tuple]:
    """{model name: (train rows, val rows or None, seed)} for the folds and refit seeds to train."""
    all_folds = sorted(set(ctx.fold.tolist()) - {-1})  # fold -1: in every training set, never held out
    run_folds = rec.cv.folds if rec.cv.folds is not None else all_folds
    bad = [k for k in run_folds if k not in all_folds]
    if bad:
        raise KitError(f"cv.folds: {bad} not in folds.csv (folds {all_folds})")
    rows = np.arange(len(ctx.ids))
    plan = {f"fold{k}": (rows[ctx.fold != k], rows[ctx.fold == k], rec.seed) for k in run_folds}
    for i in range(rec.cv.n_refit):
        plan[f"refit{i}"] = (rows, None, rec.seed + i)
    if not plan:
        raise KitError("cv: no model to train (cv.folds=[] and no cv.refit); run some folds or "
                       "set cv.refit=true cv.test_from=refit")
    n_train = min(len(tr) for tr, _, _ in plan.values())
    if rec.train.batch_size > n_train:
        raise KitError(f"train.batch_size: {rec.train.batch_size} is larger than a fold's "
                       f"{n_train} training images; lower it (e.g. train.batch_size={n_train // 4 or 1})")
    return plan


# ----------------------------------------------------------------------------- model + optimizer


def model_config(ctx: Ctx) -> dict:
    """What a saved model.pt needs besides its weights to be used (`kit predict`, pretraining):
    the model section, competition, classes, img_size, and the mean / std it was trained with."""
    return {"model": ctx.rec.model.model_dump(), "competition": ctx.comp.name,
            "classes": ctx.classes, "img_size": ctx.img_size,
            "mean": ctx.mean.flatten().tolist(), "std": ctx.std.flatten().tolist()}


def build_model(ctx: Ctx):
    """timm model with a head sized from the class list, checked against the input size.
    The first one of a run with model.pretrained_file queues a note of what the file filled in."""
    from kaggle_kit import models

    m = ctx.rec.model
    net = build_net(m, len(ctx.classes), ctx.img_size, ctx.acc.device, ctx.rec.train.channels_last)
    if m.pretrained_file and not ctx.timings.get("load_reported"):  # once per run
        ctx.timings["load_reported"] = True
        ctx.notes.append(models.load_report(net, m.pretrained_file))
    return net


def build_net(m: recipes.Model, n_classes: int, img_size: int, device, channels_last: bool,
              weights: bool = True):
    """The net of recipe section `m` on `device` (train and `kit predict`). weights=False skips
    the pretrained / pretrained_file weights (offline prediction loads a run's own weights)."""
    import torch

    from kaggle_kit import models

    net = models.create_model(m.name, n_classes,
                              pretrained=weights and (m.pretrained or bool(m.pretrained_file)),
                              pretrained_file=m.pretrained_file if weights else None,
                              drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate,
                              img_size=img_size)
    models.check_input(net, img_size)
    net = net.to(device)
    if channels_last:
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
