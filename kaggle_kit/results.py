"""What a finished `kit train` run reports, computed from the loop's Ctx and each model's
predictions: the OOF and test frames, summary.json's dict (scores, honest labels, partial-run
reasons, warnings, timings) and provenance.json's dict. runfiles.write_results writes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit.runfiles import data_hashes, pred_frame
from kaggle_kit.train_setup import Ctx
from kaggle_kit.workspace import sha256_file


def summarize(ctx: Ctx, preds: dict[str, dict], t_start: float) -> dict:
    """{"oof": frame (index Id: fold + classes; each Id of the run's folds exactly once),
    "test": frame (index Id: classes; the mean of the cv.test_from models), "summary",
    "provenance"} of a finished run. `preds`: {model name: train_fold's result}."""
    from kaggle_kit import metrics

    rec, classes, run_dir = ctx.rec, ctx.classes, ctx.run_dir
    parts = [pred_frame(p["val"], p["val_ids"], classes).assign(fold=int(m[4:]))
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
    labels = ctx.labels  # class values by Id (multilabel: sets, metrics.set_sep)
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
    return {"oof": oof, "test": test, "summary": summary, "provenance": provenance(ctx, t_start)}


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
    """Why this run's CV and test.csv are not those of its full recipe ([] = a full run): fewer
    folds or epochs than the recipe FILE sets (before `cv.folds=[0]` / `train.epochs=N` overrides:
    a recipe whose file asks for one fold is complete with one), data.limit, or a
    train.max_minutes stop."""
    import yaml

    rec, reasons = ctx.rec, []
    try:
        raw = yaml.safe_load(Path(ctx.timings.get("recipe_path", "")).read_text()) or {}
        raw_train, raw_cv = raw.get("train") or {}, raw.get("cv") or {}
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        raw_train, raw_cv = {}, {}
    have = set(ctx.fold.tolist()) - {-1}
    file_folds = raw_cv.get("folds") if isinstance(raw_cv, dict) else None
    want = (len(have & {f for f in file_folds if isinstance(f, int)})
            if isinstance(file_folds, list) else len(have))
    done = sum(m.startswith("fold") for m in preds)
    if done < want:
        reasons.append(f"{done} of {want} folds" if want == len(have)
                       else f"{done} of the {want} folds the recipe file sets")
    try:  # the epochs the recipe file itself sets
        file_epochs = int((raw_train if isinstance(raw_train, dict) else {}).get("epochs") or 0)
    except (ValueError, TypeError):
        file_epochs = 0
    if rec.train.epochs < file_epochs:
        reasons.append(f"train.epochs={rec.train.epochs} (the recipe file sets {file_epochs})")
    if rec.data.limit:
        reasons.append(f"data.limit={rec.data.limit}")
    stopped = [m for m, p in preds.items() if p["stats"].get("stopped_early")]
    if stopped:
        reasons.append(f"{', '.join(stopped)} stopped early (train.max_minutes)")
    return reasons


def provenance(ctx: Ctx, t_start: float) -> dict:
    """provenance.json of a finished run: git sha + dirty flag, library versions, data + folds hashes, seed, argv, host, times."""
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


def _version(md, pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None
