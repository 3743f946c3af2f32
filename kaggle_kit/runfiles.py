"""The files `kit train` reads and writes in runs/<run>/ (docs/design.md section 1), for train.py.

Run folder checks (recipe.yaml of another recipe is refused), per-fold files (state.pt written
atomically after each epoch, metrics.jsonl, model.pt, oof.csv / test.csv, done.json) and the run
outputs (oof.csv, test.csv, summary.json, provenance.json, plots). Only rank 0 calls the writers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.rundir import RunDir, model_dirs, run_kind
from kaggle_kit.train_setup import Ctx
from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv, write_text

# ----------------------------------------------------------------------------- run folder (no torch)


def _has_results(run_dir: RunDir) -> bool:
    """Whether the folder holds anything a run produced (a checkpoint, a finished model, a
    summary): a folder with only recipe.yaml is a start that failed its checks."""
    return run_dir.summary_path.exists() or any(
        (d / f).exists() for d in model_dirs(run_dir) for f in ("state.pt", "done.json"))


def check_run_dir(run_dir: RunDir, recipe_text: str, resume: bool, force: bool,
                  comp: CompetitionDir | None = None) -> bool:
    """Refuse a folder kit did not make, a blend, or a run of another recipe (unless force,
    which starts that run over; a folder kit did not make is refused even then). `resume`
    also checks the run started on the folds and data `comp` holds now (provenance.json).
    Returns whether to resume. Deletes and writes nothing."""
    root, kind = run_dir.root, run_kind(run_dir.root)
    if root.exists() and not root.is_dir():
        raise KitError(f"{root}: is a file, not a run folder; choose another --name")
    if kind is None:
        if root.is_dir() and any(root.iterdir()):
            raise KitError(f"{root}: exists and was not made by kit train or kit blend (no "
                           "recipe.yaml or summary.json); choose another --name, or move it away")
        if resume:
            raise KitError(f"{root}: nothing to resume (no recipe.yaml); drop --resume")
        return False
    if kind == "blend":
        if not force or resume:
            raise KitError(f"{root}: holds a kit blend; choose another --name, or pass --force "
                           "(without --resume) to replace it with this training run")
        return False
    same = run_dir.recipe_path.exists() and run_dir.recipe_path.read_text() == recipe_text
    if not same and not force and _has_results(run_dir):
        raise KitError(f"{run_dir.recipe_path}: this run folder belongs to another recipe "
                       "(or other overrides); choose --name, or pass --force to overwrite it")
    if same and resume and comp is not None:
        check_resume_data(run_dir, comp)
    return resume and same


def check_resume_data(run_dir: RunDir, comp: CompetitionDir) -> None:
    """--resume continues models trained on the folds + data the run started with: refuse it
    when folds.csv or the competition's files changed since (e.g. `kit fetch --refold`)."""
    if not run_dir.provenance_path.exists():
        if _has_results(run_dir):
            raise KitError(f"{run_dir.provenance_path}: missing, so the folds this run started on "
                           "are unknown; rerun without --resume to start it over")
        return
    started, now = run_dir.provenance().get("data") or {}, data_hashes(comp)
    for key, what in (("folds_sha256", "folds.csv"), ("files_sha256", "the competition's files")):
        if started.get(key) != now[key]:
            raise KitError(f"{run_dir.root}: started on another {what} than {comp.root} holds now "
                           f"(e.g. after `kit fetch --refold`); its models saw other validation "
                           "images, so rerun without --resume to start it over (or use --name)")


def data_hashes(comp: CompetitionDir) -> dict:
    """{"folds_sha256", "files_sha256"}: what a run's models depend on (provenance.json)."""
    import hashlib
    import json

    files = json.dumps(comp.meta().get("files", {}), sort_keys=True).encode()
    return {"folds_sha256": sha256_file(comp.folds_path),
            "files_sha256": hashlib.sha256(files).hexdigest()}


def prepare_run_dir(run_dir: RunDir, recipe_text: str, resume: bool, start_prov: dict) -> None:
    """Called once every check passed. Without --resume, delete what an earlier kit run wrote
    here (fold<k>/, refit<i>/ and the run files; nothing else); write recipe.yaml and the
    provenance of the start (data hashes, checked by a later --resume)."""
    import shutil

    run_dir.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        for d in model_dirs(run_dir):
            shutil.rmtree(d)
        for f in (run_dir.oof_path, run_dir.test_path, run_dir.summary_path, run_dir.confusion_png,
                  run_dir.curves_png, run_dir.provenance_path):
            f.unlink(missing_ok=True)
        run_dir.write_provenance(start_prov)
    elif not run_dir.provenance_path.exists():
        run_dir.write_provenance(start_prov)
    write_text(run_dir.recipe_path, recipe_text)


# ----------------------------------------------------------------------------- fold files


def cpu_state(net) -> dict:
    """A copy of `net`'s state_dict on the CPU (a snapshot that later steps do not change)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def save_state(fdir: Path, epoch: int, net, opt, sched, ema, best, acc) -> None:
    """fold<k>/state.pt after each epoch (atomic): all a resumed fold needs to continue."""
    import torch

    from kaggle_kit.workspace import atomic_path

    state = {"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
             "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
             "best": best, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    with atomic_path(fdir / "state.pt") as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # a file object: a full disk raises OSError ENOSPC, not RuntimeError


def restore(fdir: Path, net, opt, sched, ema, acc) -> tuple[int, dict | None]:
    """(first epoch to train, best-so-far) from fold<k>/state.pt, or (0, None) for a fresh fold
    (`acc`: the run's Accelerator). RNGs are re-seeded per epoch (train._seed_rngs), so the saved
    ones are for the record only."""
    import torch

    path = fdir / "state.pt"
    if not path.exists():
        if acc.is_main_process and (fdir / "metrics.jsonl").exists():
            (fdir / "metrics.jsonl").unlink()
        return 0, None
    state = torch.load(path, map_location=acc.device, weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    if acc.scaler is not None and state["scaler"] is not None:
        acc.scaler.load_state_dict(state["scaler"])
    if acc.is_main_process:  # drop metric lines of epochs after the checkpoint
        lines = (fdir / "metrics.jsonl").read_text().splitlines()[: state["epoch"]]
        write_text(fdir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    return state["epoch"], state["best"]


def append_metrics(fdir: Path, row: dict, epoch: int) -> None:
    """Append one epoch's row to fold<k>/metrics.jsonl (schema: docs/design.md section 1)."""
    import json

    fdir.mkdir(parents=True, exist_ok=True)
    with open(fdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def write_done(fdir: Path, net, config: dict, classes: list[str], val_ids: list[str] | None,
               val: np.ndarray | None, test_ids: list[str], test: np.ndarray, stats: dict) -> None:
    """model.pt (weights + `config`, what is needed to use them: train_setup.model_config), the
    fold's (n, C) predictions by Id (oof.csv without validation rows: a refit), done.json."""
    import torch

    from kaggle_kit.workspace import atomic_path, write_json

    with atomic_path(fdir / "model.pt") as tmp, open(tmp, "wb") as f:
        torch.save({"model": cpu_state(net), "config": config}, f)  # file object: ENOSPC is OSError
    if val is not None:
        write_csv(fdir / "oof.csv", _frame(val, val_ids, classes))
    write_csv(fdir / "test.csv", _frame(test, test_ids, classes))
    write_json(fdir / "done.json", stats)
    (fdir / "state.pt").unlink(missing_ok=True)


def check_finite(fdir: Path, val: np.ndarray | None, test: np.ndarray | None) -> None:
    """Refuse predictions with NaN / inf (weights that diverged in the last steps while the
    loss was still finite): the fold is not marked done and writes no oof/test rows."""
    for what, p in (("validation", val), ("test", test)):
        if p is not None and not np.isfinite(p).all():
            n = int((~np.isfinite(p)).any(axis=1).sum())
            raise KitError(f"{fdir}: {n} of {len(p)} {what} predictions are NaN or inf (the weights "
                           "diverged while the loss was finite); the model is not marked done: lower "
                           "train.lr or set train.mixed_precision=no and rerun")


def is_done(fdir: Path) -> bool:
    """Whether a model folder holds a finished model (done.json, written last, and test.csv)."""
    return (fdir / "test.csv").exists() and (fdir / "done.json").exists()


def read_done(fdir: Path, classes: list[str], val_ids: list[str] | None,
              test_ids: list[str]) -> dict:
    """A finished fold read back from its files, in the shape train_fold returns."""
    from kaggle_kit.workspace import read_json

    def read(path, ids):
        df = pd.read_csv(path, dtype={"Id": str}).set_index("Id")
        missing = pd.Index(ids).difference(df.index)
        if len(missing):
            raise KitError(f"{path}: lacks {len(missing)} Ids of this model (e.g. {missing[0]}); "
                           "the folds changed since it was trained: rerun without --resume")
        return df.loc[ids, classes].to_numpy(dtype=float)

    val = read(fdir / "oof.csv", val_ids) if val_ids is not None else None
    test = read(fdir / "test.csv", test_ids)
    check_finite(fdir, val, test)  # a fold marked done by an older kit with NaN predictions
    return {"val_ids": val_ids, "val": val, "test": test, "stats": read_json(fdir / "done.json")}


def _frame(p: np.ndarray, ids: list[str], classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame(p, columns=classes).assign(Id=ids)[["Id", *classes]]


# ----------------------------------------------------------------------------- run outputs


def write_results(ctx: Ctx, preds: dict[str, dict], t_start: float) -> dict:
    """oof.csv (each Id of the run's folds exactly once), test.csv, summary.json,
    provenance.json, confusion.png + curves.png. Main process only."""
    from kaggle_kit import metrics, plots

    rec, classes, run_dir = ctx.rec, ctx.classes, ctx.run_dir
    parts = [_frame(p["val"], p["val_ids"], classes).assign(fold=int(m[4:]))
             for m, p in preds.items() if p["val"] is not None]
    oof = (pd.concat(parts).set_index("Id") if parts else  # refit-only: no OOF rows
           pd.DataFrame(columns=["fold", *classes], index=pd.Index([], name="Id")))
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
    labels = ctx.labels  # class values by Id (multilabel: space-joined sets)
    scores = metrics.oof_scores(oof, labels, classes, ctx.metric, ctx.task) if len(oof) else {
        "cv": None, "cv_note": "no CV estimate: a refit-only run (cv.folds=[]) has no "
        "out-of-fold predictions, so test.csv's score is unknown until Kaggle scores it"}
    stats = {m: p["stats"] for m, p in preds.items()}
    train_s = sum(s["train_s"] for s in stats.values())
    summary = {
        "run": run_dir.name, "kind": "train", "competition": ctx.comp.name, "classes": classes,
        "task": ctx.task, "metric": ctx.metric, **scores,
        "n_never_oof": int((ctx.fold < 0).sum()),  # fold -1: trained in every fold, never scored
        "folds_sha256": sha256_file(ctx.comp.folds_path),
        "test_from": rec.cv.test_from, "test_members": members,
        "recipe": ctx.timings.get("recipe_path"), "targeted": ctx.targeted,
        "timings": {"total_s": round(time.time() - t_start, 1), "train_s": round(train_s, 1),
                    "models": stats},
        "images_per_s": round(sum(s["images"] for s in stats.values()) / max(train_s, 1e-9), 1),
        "partial": partial_reasons(ctx, preds),
        **_score_labels(ctx, preds, members),
    }
    # a 1-fold, 2-epoch look predicts test poorly by design: no shift warning then (the CLI prints it)
    shift = not summary["partial"] and ctx.task != "multilabel"
    summary["warnings"] = _never_oof_warning(ctx) + (
        _distribution_warnings(test, labels, classes) if shift else [])
    run_dir.write_summary(summary)
    run_dir.write_provenance(_provenance(ctx, t_start))
    plots.write_run_plots(run_dir, labels, task=ctx.task, metric=ctx.metric)
    return summary


def _score_labels(ctx: Ctx, preds: dict[str, dict], members: list[str]) -> dict:
    """cv_is / test_is / cv_honest / cv_label (kaggle_kit/honest.py): what this run's CV and
    test.csv each are, so no CV is shown as the score of a test.csv it does not describe."""
    from kaggle_kit import honest

    folds = [m for m in preds if m.startswith("fold")]
    # share of the run's train images each fold model trained on (fold -1 images train in all)
    frac = float(np.mean([(ctx.fold != int(m[4:])).mean() for m in folds])) if folds else None
    return honest.describe_train(folds, members, frac, len(ctx.rec.tta.views))


def _never_oof_warning(ctx: Ctx) -> list[str]:
    """The fold -1 images (classes with fewer images than folds), said once."""
    n = int((ctx.fold < 0).sum())
    return [f"{n} images of classes with fewer images than folds (fold -1 in folds.csv) trained "
            "in every fold and are not in oof.csv (never OOF-scored)"] if n else []


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


def partial_reasons(ctx: Ctx, preds: dict[str, dict]) -> list[str]:
    """Why this run's CV and test.csv are not those of its full recipe ([] = a full run): a subset
    of the folds, fewer epochs than the recipe file sets, data.limit, or a train.max_minutes stop."""
    import yaml

    rec, reasons = ctx.rec, []
    k, done = len(set(ctx.fold.tolist()) - {-1}), sum(m.startswith("fold") for m in preds)
    if done < k:
        reasons.append(f"{done} of {k} folds")
    try:  # the epochs the recipe file itself sets, before `train.epochs=N` overrides
        raw = yaml.safe_load(Path(ctx.timings.get("recipe_path", "")).read_text()) or {}
        file_epochs = int((raw.get("train") or {}).get("epochs") or 0)
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        file_epochs = 0
    if rec.train.epochs < file_epochs:
        reasons.append(f"train.epochs={rec.train.epochs} (the recipe file sets {file_epochs})")
    if rec.data.limit:
        reasons.append(f"data.limit={rec.data.limit}")
    stopped = [m for m, p in preds.items() if p["stats"].get("stopped_early")]
    if stopped:
        reasons.append(f"{', '.join(stopped)} stopped early (train.max_minutes)")
    return reasons


def _provenance(ctx: Ctx, t_start: float) -> dict:
    """git sha + dirty flag, library versions, data + folds hashes, seed, argv, host, times."""
    import importlib.metadata as md
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

    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    status = git("status", "--porcelain")
    return {
        "git": {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None},
        "versions": {"python": platform.python_version(),
                     **{p: _version(md, p) for p in ("kaggle_kit", "torch", "timm", "accelerate",
                                                     "albumentations", "numpy", "pandas")}},
        "data": {"competition": ctx.comp.name, **data_hashes(ctx.comp), "n_train": len(ctx.ids),
                 "n_test": len(ctx.test_ids)},
        "seed": ctx.rec.seed, "argv": sys.argv, "host": socket.gethostname(),
        "platform": platform.platform(), "device": str(ctx.acc.device),
        "num_processes": ctx.acc.num_processes, "mixed_precision": ctx.acc.mixed_precision,
        "start": iso(t_start), "end": iso(time.time()),
    }


def start_provenance(comp: CompetitionDir, seed: int) -> dict:
    """provenance.json of a run that started and has not finished (replaced at its end)."""
    from datetime import datetime, timezone

    return {"status": "running", "data": {"competition": comp.name, **data_hashes(comp)},
            "seed": seed, "start": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _version(md, pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None
