"""`kit estimate`: an honest score of exactly what a recipe's test.csv holds.

A run's CV is the score of ONE fold model on the images it did not see. What `kit train` puts in
test.csv is often something else: a bag of fold models, a refit model trained on every image, or
both, with TTA -- and it usually scores higher than that CV. To score the submission itself, this
holds one fold of the competition out as a labelled stand-in test set and runs the SAME recipe on
the rest, as a competition of its own (`<comp>-ho<K>`, made with `kit fetch --from` so its layout,
folds and cache are built the way any competition's are). Its test.csv -- the same kind of
predictions the full run submits -- is then scored on the held-out labels with the competition's
metric. It is trained on (k-1)/k of the images, so the full run usually scores a little higher.

Costs one more run of the recipe on (k-1)/k of the data. The image files are hard-linked (copied
where links are impossible), never moved or changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, blenders, metrics
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, check_run_name, write_csv

MARKER = ".kit-holdout"  # a source folder made by this module (the only kind it deletes)


def estimate(recipe_path: str | Path, overrides: list[str], *, holdout_fold: int | None = None,
             name: str | None = None, runs_dir: str | Path = "runs",
             data_dir: str | Path = "data", force: bool = False) -> dict:
    """Train `recipe_path` (+ overrides) on its competition minus one fold and score that run's
    test.csv on the held-out fold. Writes runs/<name>-ho<K>/ (a normal run) + its estimate.json;
    returns estimate.json's dict."""
    from kaggle_kit import recipe as recipes
    from kaggle_kit import train

    rec = recipes.load(recipe_path, overrides)
    comp = CompetitionDir.open(data_dir, rec.competition)
    meta = comp.meta()
    task, metric = metrics.competition_target(meta, str(comp.meta_path))
    folds = comp.folds()
    k = holdout_fold if holdout_fold is not None else int(folds["fold"].max())
    if k not in set(folds["fold"]) or k < 0:
        raise KitError(f"--holdout-fold {k}: {comp.folds_path} has folds "
                       f"{sorted(int(f) for f in set(folds['fold']) if f >= 0)}")
    sub = f"{comp.name}-ho{k}"
    run_name = check_run_name(f"{name or Path(recipe_path).stem}-ho{k}")
    src = Path(data_dir) / f"_{sub}_src"
    held = folds[folds["fold"] == k]
    write_holdout_source(comp, meta, folds, k, src)
    n_folds = int(folds["fold"].max()) + 1
    try:
        _fetch_sub(sub, src, meta, data_dir, n_folds)
    except KitError as e:  # e.g. too few images per class: fetch's hint (--folds) is not ours
        shutil.rmtree(src, ignore_errors=True)
        hint = (f"; fewer folds: `kit fetch {comp.name} --refold --folds 2`, then estimate again"
                if n_folds > 2 else "")
        raise KitError(f"kit estimate: {comp.name} without fold {k} ({len(folds) - len(held)} "
                       f"images) split into {n_folds} folds failed: {e}{hint}") from e
    summary = train.run(recipe_path, [*overrides, f"competition={sub}"], name=run_name,
                        runs_dir=runs_dir, data_dir=data_dir, force=force)
    run = RunDir(Path(runs_dir) / run_name)
    result = _score(run, held, meta, task, metric)
    result |= {"recipe": str(recipe_path), "overrides": list(overrides), "competition": comp.name,
               "holdout_fold": k, "run": run_name, "test_from": summary.get("test_from"),
               "trained_on": f"{len(folds) - len(held)} of {len(folds)} train images",
               "n_trained": len(folds) - len(held), "n_train": len(folds),
               "cv_shown": summary.get("cv") or {}, "test_is": summary.get("test_is"),
               "cv_label": summary.get("cv_label")}
    run.write_estimate(result)
    return result


def write_holdout_source(comp: CompetitionDir, meta: dict, folds: pd.DataFrame, k: int,
                         src: Path) -> None:
    """A Kaggle-layout folder (also benchmarks/refit_vs_bag.py's held-out competition): train/ + test/ (hard links to the competition's train images),
    train.csv (the other folds' labels), sample_submission.csv (held-out Ids, the sample's columns)."""
    if src.exists():
        if not (src / MARKER).exists():
            raise KitError(f"{src}: exists and was not made by kit estimate; move it away")
        shutil.rmtree(src)
    if meta.get("task") == "multilabel":
        raise KitError(f"{comp.name}: kit estimate does not handle multi-label competitions yet; "
                       "use the run's CV")
    sample = comp.sample_submission()
    id_name = sample.columns[0]
    label_name = sample.columns[1] if len(sample.columns) == 2 else "label"
    names: dict[str, str] = {}
    for split, rows in (("train", folds[folds["fold"] != k]), ("test", folds[folds["fold"] == k])):
        (src / split).mkdir(parents=True)
        for i in rows["Id"]:
            p = comp.image_path("train", i)
            if p.name in names:
                raise KitError(f"{p}: file name also used by Id {names[p.name]}; kit estimate "
                               "needs one file name per Id")
            names[p.name] = i
            _link(p, src / split / p.name)
    train = folds[folds["fold"] != k][["Id", "label"]].set_axis([id_name, label_name], axis=1)
    write_csv(src / "train.csv", train)
    first = sample.iloc[0]
    test = pd.DataFrame({c: (folds.loc[folds["fold"] == k, "Id"].to_numpy() if c == id_name
                             else first[c]) for c in sample.columns})
    write_csv(src / "sample_submission.csv", test)
    (src / MARKER).write_text("made by kit estimate; deleted and remade by the next one\n")


def _link(a: Path, b: Path) -> None:
    try:
        os.link(a, b)
    except OSError:  # another file system or no link support: copy
        shutil.copyfile(a, b)


def _fetch_sub(sub: str, src: Path, meta: dict, data_dir, n_folds: int) -> None:
    """`kit fetch <sub> --from src --force` with the parent's metric and positive class (the
    sub-competition must be scored the way the competition is)."""
    from kaggle_kit.fetch import fetch

    fetch(sub, data_dir=Path(data_dir), source=src, force=True, n_folds=n_folds,
          metric=meta.get("metric"), positive=(meta.get("submission") or {}).get("positive"))


def _score(run: RunDir, held: pd.DataFrame, meta: dict, task: str, metric: str) -> dict:
    """The held-out fold's score of run's test.csv: the competition metric, accuracy, log loss."""
    return score_probs(run.read_test(list(meta["classes"])), held, meta, task, metric,
                       str(run.test_path))


def score_probs(probs: pd.DataFrame, held: pd.DataFrame, meta: dict, task: str, metric: str,
                source: str) -> dict:
    """{metric, n_holdout, holdout: {metric, accuracy, log_loss}} of test predictions `probs`
    (index Id, a column per class value) on the held-out rows `held` (folds.csv rows)."""
    classes = list(meta["classes"])
    probs = probs.reindex(columns=classes, fill_value=0.0)  # a class absent from the sub-run
    ids = pd.Index(held["Id"].astype(str))
    missing = ids.difference(probs.index)
    if len(missing):
        raise KitError(f"{source}: no prediction for held-out Id {missing[0]}")
    y = metrics.encode_targets(held.set_index("Id")["label"], ids, classes, task, source=source)
    p = probs.loc[ids].to_numpy(dtype=float)
    scored = blenders.scores(metric, y, p, task, classes)  # as kit blend's leaderboard
    return {"metric": metric, "n_holdout": len(ids),
            "holdout": {m: float(np.round(v, 6)) for m, v in scored.items()}}


def blend_estimates(member_roots: list[Path], method: str, comp: CompetitionDir,
                    runs_dir: Path, data_dir: Path) -> tuple[list[dict], str]:
    """(held-out estimates of a blend, why there are none). For each fold K that EVERY member
    has a `kit estimate` run for, the same `kit blend --method` procedure (the method chosen
    again for `best`) runs on those estimate runs -- which never saw fold K, nor did their OOF --
    and its test predictions are scored on fold K's labels, as estimate.json scores a run."""
    from kaggle_kit import blend as blends
    from kaggle_kit import honest

    per = [{e.get("holdout_fold"): e for e in honest.find_estimates(r, runs_dir)}
           for r in member_roots]
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    if not common:
        return [], "no holdout estimate of the blend: run kit estimate on every member's recipe"
    meta = comp.meta()
    task, metric = metrics.competition_target(meta, str(comp.meta_path))
    folds, out = comp.folds(), []
    for k in common:
        ho_roots = [Path(p[k]["path"]).parent for p in per]
        try:
            sub, members = blends.load_members(ho_roots, data_dir)
            fit = blends.fit_members(sub, members, method)
        except KitError as e:
            return [], f"no holdout estimate of the blend (fold {k} estimate runs): {e}"
        probs = pd.DataFrame(fit["chosen"]["test"], index=members[0].test.index,
                             columns=sub.classes)
        res = score_probs(probs, folds[folds["fold"] == k], meta, task, metric,
                          f"blend of {', '.join(str(r) for r in ho_roots)}")
        first = per[0][k]
        out.append(res | {"competition": comp.name, "holdout_fold": k,
                          "n_trained": first.get("n_trained"), "n_train": first.get("n_train"),
                          "method": fit["chosen"]["method"], "runs": [str(r) for r in ho_roots],
                          "path": str(RunDir(ho_roots[0]).estimate_path)})
    return out, ""
