"""`kit train`: the Accelerate loop. k-fold OOF + test predictions of one recipe in runs/<run>/.

Read top to bottom: `run` validates everything cheap first (recipe, competition, run folder,
targeted classes), then loads the uint8 decode cache once, then calls `train_fold` for each fold
(and refit seed), then writes oof.csv / test.csv / summary.json / provenance.json / plots.

Speed: batches are slices of the uint8 cache tensor (on the GPU when there is one), or, when the
cache does not fit the device, rows read from the cache file a few batches ahead into pinned
memory (images.stream_batches; data.load); normalisation, flips and pad-crops run on the batch
tensor. Albumentations run per image (DataLoader workers) only when the recipe lists
`augment.transforms` or targeted transforms.

Multi-process (`accelerate launch` / `torchrun`): every rank builds the same epoch index list from
the same seed and trains on its slice of each global batch; evaluation runs on every rank and is
gathered with `gather_for_metrics`, keyed by Id; only rank 0 writes, after a barrier.

Determinism / resume: the data order, augmentation and dropout RNGs are re-seeded from
(seed, model, epoch) at every epoch, and the epoch checkpoint holds model, optimizer, scheduler,
scaler and EMA, so a resumed fold replays exactly what an uninterrupted one would have done.

What the loop is built from (Ctx, checks, model, optimizer, schedule) is in train_setup.py; the
files it reads and writes in runs/<run>/ (checkpoints, fold files, summary, provenance) in
runfiles.py (what the summary says: results.py); validation and test predictions (TTA) in infer.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kaggle_kit import KitError, accel, infer, results, runfiles, targets, train_setup
from kaggle_kit import recipe as recipes
from kaggle_kit.rundir import RunDir
from kaggle_kit.train_setup import Ctx
from kaggle_kit.workspace import CompetitionDir, check_run_name, disk_full


def run(recipe_path: str | Path, overrides: list[str], *, name: str | None = None,
        runs_dir: str | Path = "runs", data_dir: str | Path = "data", resume: bool = False,
        force: bool = False, on_epoch: Callable[[str, dict], None] | None = None) -> dict:
    """Train `recipe_path` (+ dotted overrides) on its competition; returns summary.json's dict.

    Writes runs/<name>/ (default name: the recipe's file stem). A folder made by another recipe is
    refused unless `force`; `resume` skips finished folds and continues an interrupted one.
    A disk that fills up is a one-line KitError (finished folds stay; --resume continues).
    `on_epoch(model name, metrics row)` is called after each epoch's checkpoint is written (tests
    raise from it to simulate a kill). torch's thread count and, on CPU, glibc's malloc settings
    (accel.keep_freed_memory) are restored afterwards."""
    import torch

    run_name = check_run_name(name or Path(recipe_path).stem)
    threads = torch.get_num_threads()  # train.threads must not leak into the caller's process
    try:
        return _run(recipe_path, overrides, run_name, Path(runs_dir), data_dir, resume, force,
                    on_epoch)
    except (OSError, RuntimeError) as e:  # torch.save's writer re-raises ENOSPC as RuntimeError
        err = disk_full(e, Path(runs_dir) / run_name, "training")
        if err is None:
            raise
        raise err from None
    finally:
        torch.set_num_threads(threads)


def _run(recipe_path, overrides, run_name, runs_dir, data_dir, resume, force, on_epoch) -> dict:
    t_start = time.time()
    rec = recipes.load(recipe_path, overrides)
    comp = CompetitionDir.open(data_dir, rec.competition)
    run_dir = RunDir(Path(runs_dir) / run_name)
    recipe_text = recipes.dump(rec)
    resume = runfiles.check_run_dir(run_dir, recipe_text, resume, force, comp)
    targeted = train_setup.resolve_targeted(rec, comp, Path(runs_dir))
    targets.check_recipe(rec, comp.meta(), targeted)  # task + metric checked before any work
    if rec.model.pretrained_file:  # a run folder becomes its model.pt (recipe.yaml keeps the name)
        model = rec.model.model_copy(
            update={"pretrained_file": train_setup.resolve_pretrained(rec, comp, Path(runs_dir))})
        rec = rec.model_copy(update={"model": model})  # recipes are frozen: a resolved copy

    import torch

    if rec.train.threads:
        torch.set_num_threads(rec.train.threads)
    acc, notes = accel.make_accelerator(rec.train, run_dir.root)
    train_setup.check_augment(rec, targeted)
    ctx = train_setup.load_context(acc, rec, comp, run_dir, targeted)
    ctx.on_epoch = on_epoch
    models = train_setup.model_plan(rec, ctx)
    # every check passed: only now delete an earlier run's files and write the run folder
    if acc.is_main_process:
        runfiles.prepare_run_dir(run_dir, recipe_text, resume,
                                 runfiles.start_provenance(comp, rec.seed))
    acc.wait_for_everyone()
    ctx.timings.update(n_models=len(models), recipe_path=str(recipe_path))
    ctx.progress = progress = train_setup.progress_bars(acc.is_main_process)
    ctx.run_task = progress.add_task("run (epochs)", total=len(models) * rec.train.epochs)
    ctx.notes += [*notes, accel.sync_bn_note(acc, rec.train.sync_bn),
                  train_setup.normalize_note(rec)]
    _say_notes(ctx)
    accel.start_tracking(acc, rec, run_dir.root.name)
    # CPU: +40-50% images/s; only around the models, so that neither the loading before nor the
    # writing after (pandas, plots) sits on top of the heap the training steps left behind
    kept = acc.device.type == "cpu" and accel.keep_freed_memory()
    try:
        with progress:
            preds = {m: train_fold(ctx, m, tr, va, seed) for m, (tr, va, seed) in models.items()}
    finally:
        accel.stop_tracking(acc)
        if kept:
            accel.keep_freed_memory(False)  # and give the kept heap back to the OS
    acc.wait_for_everyone()
    summary = None
    if acc.is_main_process:
        res = results.summarize(ctx, preds, t_start)
        summary = res["summary"]
        runfiles.write_results(run_dir, res["oof"], res["test"], ctx.classes, summary,
                               res["provenance"], ctx.labels, ctx.task, ctx.metric)
    acc.wait_for_everyone()
    return summary if summary is not None else RunDir(run_dir.root).summary()


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
    if runfiles.is_done(fdir):
        ctx.progress.advance(ctx.run_task, tr.epochs)
        return runfiles.read_done(fdir, ctx.classes, val_ids, ctx.test_ids)
    torch.manual_seed(_seed(seed, name, -1))  # same initial weights on every rank and every rerun
    net = train_setup.build_model(ctx)
    _say_notes(ctx)  # what the pretrained file filled in (first model only)
    net = accel.sync_bn(net, acc, tr.sync_bn)
    ema = accel.make_ema(net, tr.ema) if tr.ema else None  # ema.module: the averaged net
    lr = tr.lr * tr.batch_size * tr.grad_accum / 256  # recipe lr is per 256 images
    opt = train_setup.make_optimizer(net, tr, lr)
    steps = math.ceil(len(_epoch_batches(ctx, train_rows, seed, name, 0)) / tr.grad_accum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, train_setup.lr_lambda(tr, steps))
    model, opt = acc.prepare(net, opt)
    if tr.compile:  # after DDP wraps the net: dynamo splits the graph at DDP's buckets (overlap)
        model = torch.compile(model)
    start, best = runfiles.restore(fdir, net, opt, sched, ema, acc)
    eval_net = ema.module if ema is not None else net  # the weights evaluated and saved ...
    fwd = model if tr.compile and ema is None else eval_net  # ... run through
    crit = targets.criterion(ctx.task, tr.label_smoothing)
    budget_s = tr.max_minutes * 60 / max(1, ctx.timings.get("n_models", 1)) if tr.max_minutes else None
    task = ctx.progress.add_task(name, total=tr.epochs, completed=start)
    t_model, stats = accel.clock(), {"train_s": 0.0, "images": 0, "stopped_early": False}
    for epoch in range(start, tr.epochs):
        t0 = time.perf_counter()
        _seed_rngs(seed, name, epoch, acc.process_index)
        loss, acc1, n_img, train_s = _train_epoch(ctx, name, model, net, ema, opt, sched, crit,
                                                   train_rows, seed, epoch)
        stats["train_s"] += train_s
        stats["images"] += n_img
        val = {"val_loss": None, "val_acc": None}
        if val_rows is not None:  # per-epoch curve + best checkpoint: one view, no TTA
            p = infer.predict(ctx, fwd, ctx.x, val_rows, ["orig"])
            runfiles.check_finite(fdir, p, None)  # diverged weights: fail before scoring/saving
            val = targets.val_scores(p, ctx.y_np[val_rows], ctx.task, ctx.metric, ctx.classes)
            score = targets.checkpoint_score(val, ctx.metric)  # lower is better
            if best is None or score < best.get("score", best["val_loss"]):
                best = {"val_loss": val["val_loss"], "score": score, "epoch": epoch + 1,
                        "model": runfiles.cpu_state(eval_net)}
        row = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc1, **val,
               "lr": opt.param_groups[0]["lr"],
               "epoch_s": round(time.perf_counter() - t0, 3),
               "images_per_s": round(n_img / max(train_s, 1e-9), 1)}
        if acc.is_main_process:
            runfiles.append_metrics(fdir, row, epoch)
            runfiles.save_state(fdir, epoch, net, opt, sched, ema, best, acc)
        ctx.progress.update(task, advance=1)
        ctx.progress.advance(ctx.run_task)
        ctx.epochs_done += 1
        accel.log_epoch(acc, rec, name, row, ctx.epochs_done)
        _say(ctx, _epoch_line(name, row, tr.epochs, _eta(ctx)))
        if ctx.on_epoch is not None:
            ctx.on_epoch(name, row)
        spent = accel.clock() - t_model
        over = bool(budget_s) and spent * (epoch + 2 - start) / (epoch + 1 - start) > budget_s
        if epoch + 1 < tr.epochs and accel.rank0_decides(acc, over):  # rank 0's clock for all
            stats["stopped_early"] = epoch + 1  # next epoch would overrun train.max_minutes
            _say(ctx, f"{name}: stopping after epoch {epoch + 1} (train.max_minutes)")
            break
    ctx.progress.remove_task(task)
    if tr.checkpoint == "best" and best is not None:
        eval_net.load_state_dict(best["model"])
    views = rec.tta.views
    val = infer.predict(ctx, fwd, ctx.x, val_rows, views) if val_rows is not None else None
    test = infer.predict(ctx, fwd, ctx.test_x, np.arange(len(ctx.test_ids)), views)
    runfiles.check_finite(fdir, val, test)  # diverged weights: the fold is not done
    stats["images_per_s"] = round(stats["images"] / max(stats["train_s"], 1e-9), 1)
    stats["best_epoch"] = best["epoch"] if best and tr.checkpoint == "best" else None
    if acc.is_main_process:
        runfiles.write_done(fdir, eval_net, train_setup.model_config(ctx), ctx.classes,
                            val_ids, val, ctx.test_ids, test, stats)
    acc.wait_for_everyone()
    acc.free_memory()
    return {"val_ids": val_ids, "val": val, "test": test, "stats": stats}


def _train_epoch(ctx: Ctx, name, model, net, ema, opt, sched, crit, rows, seed, epoch):
    """One pass over this rank's slice of the epoch's batches.
    Returns (mean train loss, train accuracy, images seen by all ranks, seconds)."""
    import torch

    from kaggle_kit import augment, images

    acc, tr, aug = ctx.acc, ctx.rec.train, ctx.rec.augment
    batches = _epoch_batches(ctx, rows, seed, name, epoch)
    loader = _loader(ctx, batches, _seed(seed, name, epoch) % 2**31) if _needs_per_image(ctx) else None
    streamed = None if loader is not None or torch.is_tensor(ctx.x) else \
        images.stream_batches(ctx.x, batches, acc.device)  # read ahead from the cache file
    gen = torch.Generator(device=acc.device).manual_seed(_seed(seed, name, epoch, acc.process_index))
    mixing = (tr.mixup > 0 or tr.cutmix > 0) and tr.mix_prob > 0
    task = ctx.progress.add_task(f"epoch {epoch + 1}", total=len(batches))
    losses, sizes, correct = [], [], torch.zeros((), device=acc.device)
    model.train()
    t0 = time.perf_counter()
    for batch in accel.epoch_batches(loader if loader is not None else batches, len(batches)):
        if loader is None:
            idx = torch.as_tensor(batch, device=acc.device)
            xb, yb = ctx.x[idx] if streamed is None else next(streamed), ctx.y[idx]
        else:
            xb = batch.x.permute(0, 2, 3, 1).to(acc.device, non_blocking=True)  # NHWC view
            yb = batch.y.to(acc.device, non_blocking=True) if ctx.task != "multilabel" \
                else ctx.y[batch.idx.to(ctx.y.device)].to(acc.device)  # (B, C) 0/1 rows
        x = augment.batch_augment(_to_input(ctx, xb), flip=aug.flip, pad_crop=aug.pad_crop,
                                  generator=gen)
        target = yb
        if mixing:
            soft = targets.soft_targets(yb, len(ctx.classes), ctx.task)
            x, target = augment.mix_batch(x, soft, mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix,
                                          prob=tr.mix_prob, generator=gen)
        with acc.accumulate(model):  # no DDP sync, no optimizer step until the group's last
            with acc.autocast():
                out = model(x)
                loss = crit(out, target)
            acc.backward(loss)  # divided by train.grad_accum (the plugin's num_steps)
            opt.step()  # the prepared optimizer steps and zeroes only when acc.sync_gradients
            opt.zero_grad(set_to_none=True)
        if acc.sync_gradients:
            sched.step()
            if ema is not None:  # step = optimizer steps so far (the schedule's count: resumes)
                ema.update(net, step=sched.last_epoch)
        losses.append(loss.detach())
        sizes.append(len(yb))
        correct += targets.n_correct(out.detach(), yb, ctx.task)
        ctx.progress.update(task, advance=1)
    seconds = time.perf_counter() - t0
    ctx.progress.remove_task(task)
    losses = torch.stack(losses).float()
    finite = bool(torch.isfinite(losses).all())
    if accel.any_rank(acc, not finite):  # every rank stops together: none waits in a collective
        bad = int((~torch.isfinite(losses)).nonzero()[0]) if not finite else None
        where = (f"{losses[bad].item()} at epoch {epoch + 1}, step {bad + 1}" if bad is not None
                 else f"not finite on another process at epoch {epoch + 1}")
        raise KitError(f"{name}: training loss is {where}; lower train.lr, or set "
                       "train.mixed_precision=no")
    n = torch.tensor(sizes, device=acc.device, dtype=torch.float32)
    tot = acc.reduce(torch.stack([(losses * n).sum(), correct.float(), n.sum()]), "sum")
    return float(tot[0] / tot[2]), float(tot[1] / tot[2]), int(tot[2]), seconds


# ----------------------------------------------------------------------------- pieces of a step


def _to_input(ctx: Ctx, xb):
    return infer.to_input(xb, ctx.mean, ctx.std, ctx.img_size, ctx.rec.train.channels_last)


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
    labels = ctx.y_np if ctx.task != "multilabel" else None  # multilabel rows: ctx.y[batch.idx]
    ds = images.ImageDataset(ctx.x_np, labels, transform, per_class)
    nw = ctx.rec.train.num_workers
    return torch.utils.data.DataLoader(ds, batch_sampler=[b.tolist() for b in batches],
                                       num_workers=nw, collate_fn=images.collate_uint8,
                                       pin_memory=ctx.acc.device.type == "cuda",
                                       persistent_workers=False)


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


def _say(ctx: Ctx, line: str) -> None:
    """Print a line above the progress bars, on the main process only."""
    if ctx.acc.is_main_process:
        ctx.progress.console.print(line, soft_wrap=True)


def _say_notes(ctx: Ctx) -> None:
    """Print (main process) and clear the pending notes: one line each, "note: ..."."""
    for line in ctx.notes:
        if line:
            _say(ctx, f"note: {line}")
    ctx.notes.clear()


def is_main_process() -> bool:
    """True in the process that prints a run's result (the only one, or rank 0)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _epoch_line(name: str, r: dict, epochs: int, eta: str = "") -> str:
    val = (f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f}" if r["val_loss"] is not None
           else "val -")
    if r.get("val_metric") is not None:  # the competition's metric, when it is not accuracy
        val += f" metric {r['val_metric']:.4f}"
    return (f"{time.strftime('%H:%M:%S')} {name} {r['epoch']}/{epochs} | train loss "
            f"{r['train_loss']:.4f} acc {r['train_acc']:.4f} | {val} | lr {r['lr']:.3g} "
            f"{r['epoch_s']:.0f}s {r['images_per_s']:.0f}im/s{eta}")


def _eta(ctx: Ctx) -> str:
    """' | run ETA 0:12:34': the whole run's time left at its mean pace so far ('' before any)."""
    task = next((t for t in ctx.progress.tasks if t.id == ctx.run_task), None)
    if task is None or not task.completed or not task.elapsed or task.remaining is None:
        return ""
    left = round(task.elapsed / task.completed * task.remaining)
    return f" | run ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
