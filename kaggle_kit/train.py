"""`kit train`: the Accelerate loop. k-fold OOF + test predictions of one recipe in runs/<run>/.

Read top to bottom: `run` validates everything cheap first (recipe, competition, run folder,
targeted classes), then loads the uint8 decode cache once, then calls `train_fold` for each fold
(and refit seed), then writes oof.csv / test.csv / summary.json / provenance.json / plots.

Speed: batches are slices of the uint8 cache tensor (on the GPU when there is one); normalisation,
flips and pad-crops run on the batch tensor. Albumentations run per image (DataLoader workers)
only when the recipe lists `augment.transforms` or targeted transforms.

Multi-process (`accelerate launch` / `torchrun`): every rank builds the same epoch index list from
the same seed and trains on its slice of each global batch; evaluation runs on every rank and is
gathered with `gather_for_metrics`, keyed by Id; only rank 0 writes, after a barrier.

Determinism / resume: the data order, augmentation and dropout RNGs are re-seeded from
(seed, model, epoch) at every epoch, and the epoch checkpoint holds model, optimizer, scheduler,
scaler and EMA, so a resumed fold replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit import recipe as recipes
from kaggle_kit.workspace import CompetitionDir, RunDir, sha256_file, write_csv, write_text

STOP_ENV = "KIT_STOP_AFTER_EPOCHS"  # tests: "N" raises after N epochs of this process (a "kill")


class SimulatedKill(RuntimeError):
    """Raised when KIT_STOP_AFTER_EPOCHS is reached (tests of --resume)."""


def run(recipe_path: str | Path, overrides: list[str], *, name: str | None = None,
        runs_dir: str | Path = "runs", data_dir: str | Path = "data", resume: bool = False,
        force: bool = False) -> dict:
    """Train `recipe_path` (+ dotted overrides) on its competition; returns summary.json's dict.

    Writes runs/<name>/ (default name: the recipe's file stem). A folder made by another recipe is
    refused unless `force`; `resume` skips finished folds and continues an interrupted one."""
    t_start = time.time()
    rec = recipes.load(recipe_path, overrides)
    comp = CompetitionDir.open(data_dir, rec.competition)
    run_dir = RunDir(Path(runs_dir) / (name or Path(recipe_path).stem))
    recipe_text = recipes.dump(rec)
    resume = _check_run_dir(run_dir, recipe_text, resume, force)
    targeted = resolve_targeted(rec, comp, Path(runs_dir))
    if rec.model.pretrained_file and not Path(rec.model.pretrained_file).exists():
        raise KitError(f"model.pretrained_file: {rec.model.pretrained_file} not found; "
                       "download the weights file or set model.pretrained_file=null")

    import torch
    from accelerate import Accelerator

    if rec.train.threads:
        torch.set_num_threads(rec.train.threads)
    acc = Accelerator(mixed_precision=_precision(rec.train.mixed_precision),
                      cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        _prepare_run_dir(run_dir, recipe_text, resume)
    acc.wait_for_everyone()
    _check_augment(rec, targeted)
    ctx = _context(acc, rec, comp, run_dir, targeted)
    models = _model_plan(rec, ctx)
    ctx.timings.update(n_models=len(models), recipe_path=str(recipe_path))
    ctx.progress = progress = _progress_bars(acc.is_main_process)
    ctx.run_task = progress.add_task("run (epochs)", total=len(models) * rec.train.epochs)
    with progress:
        preds = {m: train_fold(ctx, m, tr, va, seed) for m, (tr, va, seed) in models.items()}
    acc.wait_for_everyone()
    summary = None
    if acc.is_main_process:
        summary = _write_results(ctx, preds, t_start)
    acc.wait_for_everyone()
    return summary if summary is not None else RunDir(run_dir.root).summary()


def _progress_bars(enabled: bool):
    """Rich bars with ETA: the run (epochs of all models), the current model, the epoch."""
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("{task.description:>12}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
                       rp.TimeRemainingColumn(), disable=not enabled)


# ----------------------------------------------------------------------------- checks (no torch)


def _check_run_dir(run_dir: RunDir, recipe_text: str, resume: bool, force: bool) -> bool:
    """Refuse a run folder whose recipe.yaml differs from this recipe (unless force, which
    starts it over). Returns whether to resume."""
    if not run_dir.recipe_path.exists():
        if resume:
            raise KitError(f"{run_dir.root}: nothing to resume (no recipe.yaml); drop --resume")
        return False
    if run_dir.recipe_path.read_text() == recipe_text:
        return resume
    if not force:
        raise KitError(f"{run_dir.recipe_path}: this run folder belongs to another recipe "
                       "(or other overrides); choose --name, or pass --force to overwrite it")
    return False


def _prepare_run_dir(run_dir: RunDir, recipe_text: str, resume: bool) -> None:
    """Write the resolved recipe; without --resume, clear earlier fold results."""
    import shutil

    run_dir.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        for d in [*run_dir.root.glob("fold*"), *run_dir.root.glob("refit*")]:
            shutil.rmtree(d)
        for f in (run_dir.oof_path, run_dir.test_path, run_dir.summary_path, run_dir.confusion_png,
                  run_dir.curves_png, run_dir.provenance_path):
            f.unlink(missing_ok=True)
    write_text(run_dir.recipe_path, recipe_text)


def resolve_targeted(rec: recipes.Recipe, comp: CompetitionDir, runs_dir: Path) -> dict | None:
    """{"classes", "factor", "transforms", "source"} of augment.targeted, or None.

    `auto: K` takes the K classes with the lowest OOF accuracy in from_run's summary.json."""
    t = rec.augment.targeted
    if t is None:
        return None
    valid = comp.classes
    if t.auto is not None:
        src = Path(t.from_run)
        src = src if (src / "summary.json").exists() else runs_dir / t.from_run
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


def _check_augment(rec: recipes.Recipe, targeted: dict | None) -> None:
    """Fail before training on a bad albumentations spec or TTA view name."""
    import torch

    from kaggle_kit import augment

    augment.build_transform(rec.augment.transforms, where="augment.transforms")
    if targeted:
        augment.build_transform(targeted["transforms"], where="augment.targeted.transforms")
    augment.tta_views(torch.zeros(1, 3, 4, 4), rec.tta.views)


def _precision(mode: str) -> str:
    """Accelerate's mixed_precision: auto = bf16 on GPUs that support it, none on CPU."""
    import torch

    if mode != "auto":
        return mode
    ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16" if ok else "no"


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
    timings: dict = field(default_factory=dict)


def _context(acc, rec: recipes.Recipe, comp: CompetitionDir, run_dir: RunDir,
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


def _model_plan(rec: recipes.Recipe, ctx: Ctx) -> dict[str, tuple]:
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


# ----------------------------------------------------------------------------- one model


def train_fold(ctx: Ctx, name: str, train_rows: np.ndarray, val_rows: np.ndarray | None,
               seed: int) -> dict:
    """Train one model ("fold<k>": rows of the other folds; "refit<i>": all rows), keep the
    checkpoint the recipe asks for (last, or best validation loss), then predict its validation
    rows (-> OOF) and the test set, both with the recipe's TTA views.

    Returns {"val_ids", "val": (n_val, C) probs or None, "test": (n_test, C) probs, "stats"} on
    every rank. A finished model (fold dir with done.json + test.csv) is read back, not retrained;
    an interrupted one continues from fold dir/state.pt (written atomically after each epoch)."""
    import torch

    acc, rec, tr = ctx.acc, ctx.rec, ctx.rec.train
    fdir = ctx.run_dir.fold_dir(name)
    val_ids = [ctx.ids[i] for i in val_rows] if val_rows is not None else None
    if (fdir / "test.csv").exists() and (fdir / "done.json").exists():
        ctx.progress.advance(ctx.run_task, tr.epochs)
        return _read_done(ctx, fdir, val_ids)
    torch.manual_seed(_seed(seed, name, -1))  # same initial weights on every rank and every rerun
    net = _build_model(ctx)
    ema = _copy_model(net) if tr.ema else None
    lr = tr.lr * tr.batch_size * tr.grad_accum / 256  # recipe lr is per 256 images
    opt = _optimizer(net, tr, lr)
    steps = math.ceil(len(_epoch_batches(ctx, train_rows, seed, name, 0)) / tr.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tr, steps))
    model, opt = acc.prepare(torch.compile(net) if tr.compile else net, opt)
    start, best = _restore(ctx, fdir, net, opt, sched, ema)
    eval_net = ema if ema is not None else net
    crit = torch.nn.CrossEntropyLoss(label_smoothing=tr.label_smoothing)
    budget_s = tr.max_minutes * 60 / max(1, ctx.timings.get("n_models", 1)) if tr.max_minutes else None
    task = ctx.progress.add_task(name, total=tr.epochs, completed=start)
    t_model, stats = time.perf_counter(), {"train_s": 0.0, "images": 0, "stopped_early": False}
    for epoch in range(start, tr.epochs):
        t0 = time.perf_counter()
        _seed_rngs(seed, name, epoch, acc.process_index)
        loss, acc1, n_img, train_s = _train_epoch(ctx, name, model, net, ema, opt, sched, crit,
                                                   train_rows, seed, epoch)
        stats["train_s"] += train_s
        stats["images"] += n_img
        val_loss = val_acc = None
        if val_rows is not None:  # per-epoch curve + best checkpoint: one view, no TTA
            p = predict(ctx, eval_net, ctx.x, val_rows, ["orig"])
            val_loss, val_acc = _loss_acc(p, ctx.y[torch.as_tensor(val_rows)].cpu().numpy())
            if best is None or val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch + 1, "model": _cpu_state(eval_net)}
        row = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc1, "val_loss": val_loss,
               "val_acc": val_acc, "lr": opt.param_groups[0]["lr"],
               "epoch_s": round(time.perf_counter() - t0, 3),
               "images_per_s": round(n_img / max(train_s, 1e-9), 1)}
        if acc.is_main_process:
            _append_metrics(fdir, row, epoch)
            _save_state(fdir, epoch, net, opt, sched, ema, best, acc)
        ctx.progress.update(task, advance=1)
        ctx.progress.advance(ctx.run_task)
        ctx.progress.console.print(_epoch_line(name, row, tr.epochs), soft_wrap=True)
        _maybe_simulated_kill()
        spent = time.perf_counter() - t_model
        if budget_s and epoch + 1 < tr.epochs and spent * (epoch + 2 - start) / (epoch + 1 - start) > budget_s:
            stats["stopped_early"] = epoch + 1  # next epoch would overrun train.max_minutes
            ctx.progress.console.print(f"{name}: stopping after epoch {epoch + 1} (train.max_minutes)")
            break
    ctx.progress.remove_task(task)
    if tr.checkpoint == "best" and best is not None:
        eval_net.load_state_dict(best["model"])
    views = rec.tta.views
    val = predict(ctx, eval_net, ctx.x, val_rows, views) if val_rows is not None else None
    test = predict(ctx, eval_net, ctx.test_x, np.arange(len(ctx.test_ids)), views)
    stats["images_per_s"] = round(stats["images"] / max(stats["train_s"], 1e-9), 1)
    stats["best_epoch"] = best["epoch"] if best and tr.checkpoint == "best" else None
    if acc.is_main_process:
        _write_done(ctx, fdir, name, eval_net, val_ids, val, test, stats)
    acc.wait_for_everyone()
    acc.free_memory()
    return {"val_ids": val_ids, "val": val, "test": test, "stats": stats}


def _train_epoch(ctx: Ctx, name, model, net, ema, opt, sched, crit, rows, seed, epoch):
    """One pass over this rank's slice of the epoch's batches.
    Returns (mean train loss, train accuracy, images seen by all ranks, seconds)."""
    import contextlib

    import torch

    from kaggle_kit import augment

    acc, tr, aug = ctx.acc, ctx.rec.train, ctx.rec.augment
    batches = _epoch_batches(ctx, rows, seed, name, epoch)
    loader = _loader(ctx, batches, _seed(seed, name, epoch) % 2**31) if _needs_per_image(ctx) else None
    gen = torch.Generator(device=ctx.x.device).manual_seed(_seed(seed, name, epoch, acc.process_index))
    mixing = (tr.mixup > 0 or tr.cutmix > 0) and tr.mix_prob > 0
    task = ctx.progress.add_task(f"epoch {epoch + 1}", total=len(batches))
    losses, sizes, correct = [], [], torch.zeros((), device=acc.device)
    model.train()
    t0 = time.perf_counter()
    for step, batch in enumerate(loader if loader is not None else batches):
        if loader is None:
            idx = torch.as_tensor(batch, device=ctx.x.device)
            xb, yb = ctx.x[idx], ctx.y[idx]
        else:
            xb = batch.x.permute(0, 2, 3, 1).to(acc.device, non_blocking=True)  # NHWC view
            yb = batch.y.to(acc.device, non_blocking=True)
        x = augment.batch_augment(_to_input(ctx, xb), flip=aug.flip, pad_crop=aug.pad_crop,
                                  generator=gen)
        target = yb
        if mixing:
            onehot = torch.nn.functional.one_hot(yb, len(ctx.classes)).float()
            x, target = augment.mix_batch(x, onehot, mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix,
                                          prob=tr.mix_prob, generator=gen)
        sync = (step + 1) % tr.grad_accum == 0 or step == len(batches) - 1
        with contextlib.nullcontext() if sync else acc.no_sync(model):
            with acc.autocast():
                out = model(x)
                loss = crit(out, target)
            acc.backward(loss / tr.grad_accum)
        if sync:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                _ema_update(ema, net, tr.ema)
        losses.append(loss.detach())
        sizes.append(len(yb))
        correct += (out.argmax(1) == yb).sum()
        ctx.progress.update(task, advance=1)
    seconds = time.perf_counter() - t0
    ctx.progress.remove_task(task)
    losses = torch.stack(losses).float()
    if not torch.isfinite(losses).all():
        bad = int((~torch.isfinite(losses)).nonzero()[0])
        raise KitError(f"{name}: training loss is {losses[bad].item()} at epoch {epoch + 1}, "
                       f"step {bad + 1}; lower train.lr, or set train.mixed_precision=no")
    n = torch.tensor(sizes, device=acc.device, dtype=torch.float32)
    tot = acc.reduce(torch.stack([(losses * n).sum(), correct.float(), n.sum()]), "sum")
    return float(tot[0] / tot[2]), float(tot[1] / tot[2]), int(tot[2]), seconds


def predict(ctx: Ctx, net, x_all, rows: np.ndarray, views: list[str]) -> np.ndarray:
    """(len(rows), C) softmax probabilities of images x_all[rows], averaged over TTA views.

    Every rank predicts a contiguous share (the last padded by repeating the final row), the
    shares are gathered with gather_for_metrics together with their positions, and each
    position is checked to be filled exactly once -- the caller keys rows by Id."""
    import torch

    from kaggle_kit import augment

    acc, n = ctx.acc, len(rows)
    per = math.ceil(n / acc.num_processes)
    mine = np.minimum(np.arange(acc.process_index * per, (acc.process_index + 1) * per), n - 1)
    bs = max(256, ctx.rec.train.batch_size)
    was_training = net.training
    net.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, per, bs):
            idx = torch.as_tensor(rows[mine[i: i + bs]], device=x_all.device)
            x = _to_input(ctx, x_all[idx])
            with acc.autocast():
                ps = [torch.softmax(net(v).float(), dim=1) for v in augment.tta_views(x, views)]
            probs.append(torch.stack(ps).mean(0))
    net.train(was_training)
    p = torch.cat(probs) if probs else torch.zeros((0, len(ctx.classes)), device=acc.device)
    p, pos = acc.gather_for_metrics((p, torch.as_tensor(mine, device=acc.device)))
    pos = pos.cpu().numpy()
    out = np.zeros((n, p.shape[1]))
    out[pos] = p.cpu().numpy()
    if len(np.unique(pos)) != n:
        raise RuntimeError(f"internal error: prediction covered {len(np.unique(pos))} of {n} rows")
    return out


# ----------------------------------------------------------------------------- pieces of a step


def _to_input(ctx: Ctx, xb):
    """(B,H,W,3) uint8 -> (B,3,S,S) float normalised; channels_last memory if the recipe says."""
    import torch

    x = xb.permute(0, 3, 1, 2).float()  # NHWC storage viewed as NCHW = channels_last already
    x = (x - ctx.mean) / ctx.std
    if x.shape[-1] != ctx.img_size or x.shape[-2] != ctx.img_size:  # data.resize: device
        x = torch.nn.functional.interpolate(x, size=(ctx.img_size, ctx.img_size),
                                            mode="bilinear", align_corners=False)
    fmt = torch.channels_last if ctx.rec.train.channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _epoch_batches(ctx: Ctx, rows: np.ndarray, seed: int, name: str, epoch: int) -> list:
    """This rank's slice of every global batch of one epoch (rows of ctx.x).

    Every rank draws the same (oversampled, shuffled) index list from the same seed, then
    takes batch[rank::world]; the last incomplete batch is dropped."""
    from kaggle_kit import augment

    rng = np.random.default_rng([seed, _crc(name), epoch])
    if ctx.targeted:  # targeted classes appear ~factor times, before sharding
        labels = ctx.y_np[rows]
        factors = {ctx.classes.index(c): ctx.targeted["factor"] for c in ctx.targeted["classes"]}
        rows = rows[augment.oversampled_indices(labels, factors, rng)]
    order = rng.permutation(rows)
    bs, r, w = ctx.rec.train.batch_size, ctx.acc.process_index, ctx.acc.num_processes
    return [order[b * bs:(b + 1) * bs][r::w] for b in range(len(order) // bs)]


def _needs_per_image(ctx: Ctx) -> bool:
    """Albumentations per image only when the recipe lists transforms (else the fast path)."""
    return bool(ctx.rec.augment.transforms or (ctx.targeted and ctx.targeted["transforms"]))


def _loader(ctx: Ctx, batches: list, seed: int):
    """DataLoader over the uint8 cache applying albumentations per image (workers), yielding
    images.Batch (x (B,3,H,W) uint8, y, idx) in exactly the order of `batches`."""
    import torch

    from kaggle_kit import augment, images

    transform = augment.build_transform(ctx.rec.augment.transforms, seed=seed)
    per_class = {}
    if ctx.targeted and ctx.targeted["transforms"]:  # extra pipeline for the targeted classes only
        specs = {ctx.classes.index(c): ctx.targeted["transforms"] for c in ctx.targeted["classes"]}
        per_class = augment.build_class_transforms(specs, seed=seed)
    ds = images.ImageDataset(ctx.x_np, ctx.y_np, transform, per_class)
    nw = ctx.rec.train.num_workers
    return torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches],
                                       num_workers=nw, collate_fn=images.collate_uint8,
                                       pin_memory=ctx.x.is_cuda, persistent_workers=False)


def _build_model(ctx: Ctx):
    """timm model with a head sized from the class list, checked against the input size."""
    import torch

    from kaggle_kit import models

    m = ctx.rec.model
    net = models.create_model(m.name, len(ctx.classes), pretrained=m.pretrained or bool(m.pretrained_file),
                              pretrained_file=m.pretrained_file, drop_rate=m.drop_rate,
                              drop_path_rate=m.drop_path_rate, img_size=ctx.img_size)
    models.check_input(net, ctx.img_size)
    net = net.to(ctx.acc.device)
    if ctx.rec.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _copy_model(net):
    import copy

    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _ema_update(ema, net, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net (parameters); buffers (BN stats) copied."""
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
        for eb, nb in zip(ema.buffers(), net.buffers(), strict=True):
            eb.copy_(nb)


def _optimizer(net, tr: recipes.Train, lr: float):
    """SGD (nesterov) or AdamW; weight decay on weights only, not on norms and biases."""
    import torch

    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tr.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if tr.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=tr.momentum,
                               nesterov=tr.nesterov and tr.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=(tr.momentum, 0.999))


def _lr_lambda(tr: recipes.Train, steps_per_epoch: int):
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


def _seed(*parts) -> int:
    """A stable 63-bit seed from ints and strings."""
    import zlib

    return zlib.crc32(repr(parts).encode()) * 2654435761 % (2**63)


def _crc(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


def _seed_rngs(seed: int, name: str, epoch: int, rank: int) -> None:
    """Re-seed torch / numpy / random per epoch (dropout, albumentations): resume replays it."""
    import random

    import torch

    s = _seed(seed, name, epoch, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _loss_acc(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy) of (n, C) probabilities against class indices (n,)."""
    pt = np.clip(p[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.log(pt).mean()), float((p.argmax(1) == y).mean())


def _epoch_line(name: str, r: dict, epochs: int) -> str:
    val = f"val {r['val_loss']:.4f} {r['val_acc']:.4f}" if r["val_loss"] is not None else "val -"
    return (f"{time.strftime('%H:%M:%S')} {name} {r['epoch']}/{epochs} "
            f"train {r['train_loss']:.4f} {r['train_acc']:.4f} "
            f"{val} lr {r['lr']:.3g} {r['epoch_s']:.0f}s {r['images_per_s']:.0f}im/s")


def _maybe_simulated_kill() -> None:
    """Tests of --resume: KIT_STOP_AFTER_EPOCHS=N raises after N epochs in this process."""
    global _EPOCHS_THIS_PROCESS
    _EPOCHS_THIS_PROCESS += 1
    limit = os.environ.get(STOP_ENV)
    if limit and _EPOCHS_THIS_PROCESS >= int(limit):
        raise SimulatedKill(f"{STOP_ENV}={limit}: stopped after {_EPOCHS_THIS_PROCESS} epochs")


_EPOCHS_THIS_PROCESS = 0


# ----------------------------------------------------------------------------- fold files


def _cpu_state(net) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _save_state(fdir: Path, epoch: int, net, opt, sched, ema, best, acc) -> None:
    """fold<k>/state.pt after each epoch (atomic): all a resumed fold needs to continue."""
    import torch

    from kaggle_kit.workspace import atomic_path

    state = {"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
             "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
             "best": best, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    with atomic_path(fdir / "state.pt") as tmp:
        torch.save(state, tmp)


def _restore(ctx: Ctx, fdir: Path, net, opt, sched, ema) -> tuple[int, dict | None]:
    """(first epoch to train, best-so-far) from fold<k>/state.pt, or (0, None) for a fresh fold.
    RNGs are re-seeded per epoch (_seed_rngs), so the saved ones are for the record only."""
    import torch

    path = fdir / "state.pt"
    if not path.exists():
        if ctx.acc.is_main_process and (fdir / "metrics.jsonl").exists():
            (fdir / "metrics.jsonl").unlink()
        return 0, None
    state = torch.load(path, map_location=ctx.acc.device, weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    if ctx.acc.scaler is not None and state["scaler"] is not None:
        ctx.acc.scaler.load_state_dict(state["scaler"])
    if ctx.acc.is_main_process:  # drop metric lines of epochs after the checkpoint
        lines = (fdir / "metrics.jsonl").read_text().splitlines()[: state["epoch"]]
        write_text(fdir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    return state["epoch"], state["best"]


def _append_metrics(fdir: Path, row: dict, epoch: int) -> None:
    import json

    fdir.mkdir(parents=True, exist_ok=True)
    with open(fdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _write_done(ctx: Ctx, fdir: Path, name: str, net, val_ids, val, test, stats) -> None:
    """model.pt (weights + what is needed to use them), the fold's predictions, done.json."""
    import torch

    from kaggle_kit.workspace import atomic_path, write_json

    cfg = {"model": ctx.rec.model.model_dump(), "classes": ctx.classes, "img_size": ctx.img_size,
           "mean": ctx.mean.flatten().tolist(), "std": ctx.std.flatten().tolist()}
    with atomic_path(fdir / "model.pt") as tmp:
        torch.save({"model": _cpu_state(net), "config": cfg}, tmp)
    if val is not None:
        write_csv(fdir / "oof.csv", _frame(val, val_ids, ctx.classes))
    write_csv(fdir / "test.csv", _frame(test, ctx.test_ids, ctx.classes))
    write_json(fdir / "done.json", stats)
    (fdir / "state.pt").unlink(missing_ok=True)


def _read_done(ctx: Ctx, fdir: Path, val_ids) -> dict:
    from kaggle_kit.workspace import read_json

    def read(path, ids):
        df = pd.read_csv(path, dtype={"Id": str}).set_index("Id")
        return df.loc[ids, ctx.classes].to_numpy(dtype=float)

    val = read(fdir / "oof.csv", val_ids) if val_ids is not None else None
    return {"val_ids": val_ids, "val": val, "test": read(fdir / "test.csv", ctx.test_ids),
            "stats": read_json(fdir / "done.json")}


def _frame(p: np.ndarray, ids: list[str], classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame(p, columns=classes).assign(Id=ids)[["Id", *classes]]


# ----------------------------------------------------------------------------- run outputs


def _write_results(ctx: Ctx, preds: dict[str, dict], t_start: float) -> dict:
    """oof.csv (each Id of the run's folds exactly once), test.csv, summary.json,
    provenance.json, confusion.png + curves.png. Main process only."""
    from kaggle_kit import report

    rec, classes, run_dir = ctx.rec, ctx.classes, ctx.run_dir
    parts = [_frame(p["val"], p["val_ids"], classes).assign(fold=int(m[4:]))
             for m, p in preds.items() if p["val"] is not None]
    oof = pd.concat(parts).set_index("Id") if parts else pd.DataFrame(columns=["fold", *classes])
    expected = {ctx.ids[i] for i in range(len(ctx.ids)) if f"fold{ctx.fold[i]}" in preds}
    if oof.index.duplicated().any() or set(oof.index) != expected:  # never by position: by Id
        raise RuntimeError("internal error: oof.csv must hold each train Id of the run's folds "
                           f"exactly once ({len(oof)} rows, {len(expected)} expected Ids)")
    members = [m for m in preds if rec.cv.test_from == "both"
               or m.startswith("fold" if rec.cv.test_from == "folds" else "refit")]
    test = pd.DataFrame(np.mean([preds[m]["test"] for m in members], axis=0),
                        index=pd.Index(ctx.test_ids, name="Id"), columns=classes)
    run_dir.write_oof(oof, classes)
    run_dir.write_test(test, classes)
    labels = pd.Series([ctx.classes[i] for i in ctx.y_np], index=ctx.ids)
    scores = report.oof_scores(oof, labels, classes) if len(oof) else {}
    stats = {m: p["stats"] for m, p in preds.items()}
    train_s = sum(s["train_s"] for s in stats.values())
    summary = {
        "run": run_dir.name, "kind": "train", "competition": ctx.comp.name, "classes": classes,
        "metric": "accuracy", **scores, "folds_sha256": sha256_file(ctx.comp.folds_path),
        "test_from": rec.cv.test_from, "test_members": members,
        "recipe": ctx.timings.get("recipe_path"), "targeted": ctx.targeted,
        "timings": {"total_s": round(time.time() - t_start, 1), "train_s": round(train_s, 1),
                    "models": stats},
        "images_per_s": round(sum(s["images"] for s in stats.values()) / max(train_s, 1e-9), 1),
        "warnings": _distribution_warnings(test, labels, classes),
    }
    for w in summary["warnings"]:
        ctx.progress.console.print(f"[yellow]warning: {w}", soft_wrap=True)
    run_dir.write_summary(summary)
    run_dir.write_provenance(_provenance(ctx, t_start))
    report.write_run_plots(run_dir, labels)
    return summary


def _distribution_warnings(test: pd.DataFrame, labels: pd.Series, classes: list[str],
                           limit: float = 0.15) -> list[str]:
    """Warn when the test predicted-class distribution is far (total variation) from train's."""
    if test.empty:
        return []
    pred = pd.Series(test.to_numpy().argmax(1)).map(dict(enumerate(classes)))
    p = pred.value_counts(normalize=True).reindex(classes, fill_value=0.0)
    q = labels.value_counts(normalize=True).reindex(classes, fill_value=0.0)
    tv = 0.5 * float((p - q).abs().sum())
    if tv <= limit:
        return []
    worst = (p - q).abs().sort_values(ascending=False).index[:3]
    detail = ", ".join(f"{c} {p[c]:.1%} vs {q[c]:.1%}" for c in worst)
    return [f"test predicted-class distribution differs from train's (total variation {tv:.2f} > "
            f"{limit}): {detail}; check test preprocessing or a shift between train and test"]


def _provenance(ctx: Ctx, t_start: float) -> dict:
    """git sha + dirty flag, library versions, data + folds hashes, seed, argv, host, times."""
    import hashlib
    import importlib.metadata as md
    import json
    import platform
    import socket
    import subprocess
    import sys
    from datetime import datetime, timezone

    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    meta = ctx.comp.meta()
    files = json.dumps(meta.get("files", {}), sort_keys=True).encode()
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    status = git("status", "--porcelain")
    return {
        "git": {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None},
        "versions": {"python": platform.python_version(),
                     **{p: _version(md, p) for p in ("kaggle_kit", "torch", "timm", "accelerate",
                                                     "albumentations", "numpy", "pandas")}},
        "data": {"competition": ctx.comp.name, "files_sha256": hashlib.sha256(files).hexdigest(),
                 "folds_sha256": sha256_file(ctx.comp.folds_path), "n_train": len(ctx.ids),
                 "n_test": len(ctx.test_ids)},
        "seed": ctx.rec.seed, "argv": sys.argv, "host": socket.gethostname(),
        "platform": platform.platform(), "device": str(ctx.acc.device),
        "num_processes": ctx.acc.num_processes, "mixed_precision": ctx.acc.mixed_precision,
        "start": iso(t_start), "end": iso(time.time()),
    }


def _version(md, pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None
