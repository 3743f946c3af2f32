"""`kit blend`: mean / weighted / greedy (Caruana) / stacked ensembles of runs, honestly scored.

The blenders (scikit-learn style fit / predict_proba, optimising the competition metric) are in
blenders.py; this module reads and checks the members and writes the blend run. Every method is scored twice on the members' OOF rows: in-sample (fitted and
scored on all rows) and honest (nested CV over the competition's folds: fitted on the other folds'
OOF rows, predicting the held-out fold). `best` picks by the honest score. The blend run's oof.csv
is the honest OOF, its test.csv the method fitted on all OOF rows applied to the members' test.csv,
so a blend has the shape of a train run and can itself be blended or submitted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, metrics
from kaggle_kit.blenders import METHODS, StackBlender, evaluate, make_blender
from kaggle_kit.honest import describe_blend
from kaggle_kit.plots import write_run_plots
from kaggle_kit.rundir import RunDir, run_kind
from kaggle_kit.workspace import CompetitionDir, check_run_name, disk_full, sha256_file

# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    name: str
    run: RunDir
    summary: dict
    oof: pd.DataFrame   # index Id, fold + class columns (class order)
    test: pd.DataFrame  # index Id, class columns


def _ids_diff(a: pd.Index, b: pd.Index) -> str:
    only_a, only_b = a.difference(b), b.difference(a)
    return (f"{len(only_a)} Ids only here (e.g. {list(only_a[:3])}), "
            f"{len(only_b)} missing (e.g. {list(only_b[:3])})")


def _check_member(path: Path, s: dict, comp: CompetitionDir, folds: pd.DataFrame) -> Member:
    """Read one member, refusing other classes, Ids or folds than the competition's."""
    run, classes = RunDir(path), comp.classes
    if s.get("classes") is not None and sorted(s["classes"]) != sorted(classes):
        raise KitError(f"{run.summary_path}: classes differ from {comp.name}'s: missing "
                       f"{sorted(set(classes) - set(s['classes']))}, unknown "
                       f"{sorted(set(s['classes']) - set(classes))}")
    fsha = sha256_file(comp.folds_path)
    if s.get("folds_sha256") not in (None, fsha):
        raise KitError(f"{run.summary_path}: made on other folds (folds_sha256 "
                       f"{s['folds_sha256'][:12]} != {fsha[:12]} of {comp.folds_path}); retrain "
                       "it on the current folds")
    oof, test = run.read_oof(classes), run.read_test(classes)
    if oof.empty:
        raise KitError(f"{run.oof_path}: no OOF rows (a refit-only run?); blends are fitted and "
                       "scored on OOF rows, so blend runs trained with folds")
    for path, df in ((run.oof_path, oof), (run.test_path, test)):
        p = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = pd.Series(~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p.sum(axis=1) <= 0),
                        index=df.index)
        if bad.any():
            raise KitError(f"{path}: {int(bad.sum())} rows with empty, infinite, negative or "
                           f"all-zero probabilities (e.g. Id {bad.index[bad][0]}); rerun that run")
    unknown = oof.index.difference(folds.index)
    if len(unknown):
        raise KitError(f"{run.oof_path}: other Ids than {comp.folds_path}: "
                       f"{_ids_diff(oof.index, folds.index)}")
    moved = oof["fold"].astype(int) != folds.loc[oof.index, "fold"]
    if moved.any():
        raise KitError(f"{run.oof_path}: made on other folds: {int(moved.sum())} Ids in another "
                       f"fold than {comp.folds_path} (e.g. Id {moved.index[moved][0]}); retrain it "
                       "on the current folds")
    test_ids = pd.Index(comp.test_ids())
    if set(test.index) != set(test_ids):
        raise KitError(f"{run.test_path}: other test Ids than {comp.name}'s sample submission: "
                       f"{_ids_diff(test.index, test_ids)}")
    return Member(run.name, run, s, oof, test.loc[test_ids])


def load_members(paths: list[Path], data_dir: Path) -> tuple[CompetitionDir, list[Member]]:
    """Open the members, all of one competition, on its folds, with the same Ids and classes.
    Members are returned sorted by run name, rows in folds.csv order, columns in class order."""
    if len(paths) < 2:
        raise KitError("kit blend: give at least 2 runs to blend")
    resolved = [Path(p).resolve() for p in paths]
    for i, r in enumerate(resolved):  # one run twice would count double, as if two members agreed
        if r in resolved[:i]:
            raise KitError(f"{paths[i]}: given twice (also as {paths[resolved.index(r)]}); "
                           "give each run once")
    summaries = [RunDir(Path(p)).summary() for p in paths]
    first = summaries[0].get("competition")
    for p, s in zip(paths, summaries, strict=True):
        if not s.get("competition"):
            raise KitError(f"{RunDir(Path(p)).summary_path}: no 'competition' key; is {p} a run "
                           "made by kit train or kit blend?")
        if s.get("competition") != first:
            raise KitError(f"{p}: a run of competition '{s.get('competition')}', but {paths[0]} is "
                           f"of '{first}'; blend runs of one competition")
    comp = CompetitionDir.open(data_dir, first)
    folds = comp.folds().set_index("Id")
    members = [_check_member(Path(p), s, comp, folds) for p, s in zip(paths, summaries, strict=True)]
    ref = members[0]
    for m in members[1:]:
        if set(m.oof.index) != set(ref.oof.index):
            raise KitError(f"{m.run.oof_path}: other Ids than {ref.run.oof_path}: "
                           f"{_ids_diff(m.oof.index, ref.oof.index)}")
    order = folds.index[folds.index.isin(ref.oof.index)]
    for m in members:
        m.oof = m.oof.loc[order]
    seen: dict[str, int] = {}
    for m in sorted(members, key=lambda m: (m.name, str(m.run.root))):
        seen[m.name] = seen.get(m.name, 0) + 1
        m.name += f"#{seen[m.name]}" if seen[m.name] > 1 else ""
    return comp, sorted(members, key=lambda m: m.name)


# ----------------------------------------------------------------------------- the command


def _rank_key(metric: str, main: float, log_loss: float) -> tuple:
    """Sort key: best `metric` first (mind its direction; NaN last), ties -> lower log loss."""
    sign = -1.0 if metrics.higher_is_better(metric) else 1.0
    return (np.isnan(main), round(sign * np.nan_to_num(main), 12), log_loss)


def _pick(results: list[dict], metric: str = "accuracy") -> dict:
    """Best by the honest competition metric, ties broken by lower honest log loss."""
    return min(results, key=lambda r: _rank_key(metric, r["honest"][metric],
                                                r["honest"]["log_loss"]))


def _weights(res: dict, members: list[Member]) -> dict | None:
    model = res["model"]
    if hasattr(model, "weights_"):
        return {m.name: float(w) for m, w in zip(members, model.weights_, strict=True)}
    return None


def _leaderboard(members: list[Member], scores: list[dict], results: list[dict],
                 metric: str = "accuracy") -> list[dict]:
    """Members (their CV) and methods (honest + in-sample), best honest `metric` first. Each row:
    name, kind, honest_/insample_ + score (= the metric), accuracy, log_loss; methods: weights."""
    def row(name: str, kind: str, honest: dict, insample: dict) -> dict:
        return {"name": name, "kind": kind, "metric": metric,
                **{f"honest_{k}": honest[k] for k in ("accuracy", "log_loss")},
                **{f"insample_{k}": insample[k] for k in ("accuracy", "log_loss")},
                "honest_score": honest[metric], "insample_score": insample[metric]}

    rows = [row(m.name, "member", s["cv"], s["cv"]) for m, s in zip(members, scores, strict=True)]
    rows += [{**row(r["method"], "method", r["honest"], r["insample"]),
              "weights": _weights(r, members)} for r in results]
    return sorted(rows, key=lambda r: _rank_key(metric, r["honest_score"], r["honest_log_loss"]))


def leaderboard_text(rows: list[dict], chosen: str, metric: str = "accuracy") -> str:
    """The leaderboard as aligned plain text (no [..]: safe to pass through rich markup): the
    competition metric first when it is not accuracy, then accuracy and log loss."""
    w = max(15, *(len(r["name"]) for r in rows))
    extra = metric not in ("accuracy", "log_loss")
    m = metric[:10]
    head = (f"{'kind':6} {'member / method':{w}} " + (f"{'honest ' + m:>17} " if extra else "")
            + f"{'honest acc':>10} {'honest ll':>9} " + (f"{'in-smp ' + m:>17} " if extra else "")
            + f"{'in-smp acc':>10} {'in-smp ll':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kept = "  <- kept" if r["kind"] == "method" and r["name"] == chosen else ""
        kind = "member" if r["kind"] == "member" else "blend"
        hs = f"{r.get('honest_score', r['honest_accuracy']):17.4f} " if extra else ""
        ins = f"{r.get('insample_score', r['insample_accuracy']):17.4f} " if extra else ""
        lines.append(f"{kind:6} {r['name']:{w}} {hs}{r['honest_accuracy']:10.4f} "
                     f"{r['honest_log_loss']:9.4f} {ins}{r['insample_accuracy']:10.4f} "
                     f"{r['insample_log_loss']:9.4f}{kept}")
    return "\n".join(lines)


def default_name(members: list[Member], method: str) -> str:
    """`blend-<method>-<8 hex of the sorted member names>`."""
    h = hashlib.sha256("\n".join(sorted(m.name for m in members)).encode()).hexdigest()[:8]
    return f"blend-{method}-{h}"


def _out_run(runs_dir: Path, name: str, members: list[Member]) -> RunDir:
    out = RunDir(Path(runs_dir) / check_run_name(name))
    if any(out.root.resolve() == m.run.root.resolve() for m in members):
        raise KitError(f"{out.root}: is one of the members; pick another --name")
    kind = run_kind(out.root)
    if kind == "train":
        raise KitError(f"{out.root}: holds a train run (kit train), not a blend; pick another --name")
    if kind is None and out.root.exists() and (not out.root.is_dir() or any(out.root.iterdir())):
        raise KitError(f"{out.root}: exists and was not made by kit; pick another --name")
    out.root.mkdir(parents=True, exist_ok=True)
    return out


def _coefficients(model, members: list[Member], classes: list[str]) -> dict | None:
    """A stacked blend's learned coefficients for summary.json (None for linear blends)."""
    if not isinstance(model, StackBlender):
        return None
    if model.task == "multilabel":  # one binary model per class on the members' logits
        return {"per_class": {c: None if mdl is None else
                              {"coef": mdl.coef_[0], "intercept": float(mdl.intercept_[0])}
                              for c, (mdl, _) in zip(classes, model.models_, strict=True)},
                "features": [f"{m.name}:logit" for m in members], "C": model.C}
    # the classes the model predicts (rows of coef): a class with fold -1 images only is never
    # in the OOF rows, so the model does not know it and its probability stays 0 (predict_proba)
    return {"coef": model.coef_, "intercept": model.intercept_, "C": model.C,
            "classes": [classes[int(i)] for i in model.model_.classes_],
            "features": [f"{m.name}:log_{c}" for m in members for c in classes],
            "feature_mean": model.scaler_.mean_, "feature_scale": model.scaler_.scale_}


def write_blend(out: RunDir, comp: CompetitionDir, members: list[Member], scores: list[dict],
                results: list[dict], chosen: dict, requested: str, labels: pd.Series, task: str,
                metric: str, estimates: list[dict] | None = None) -> dict:
    """Write oof.csv (honest), test.csv, summary.json, provenance.json, confusion.png of a blend.
    labels: folds.csv's label by Id; task, metric: the competition's (as _blend read them);
    estimates: held-out scores of the same blend of the members' kit estimate runs."""
    classes, ref = comp.classes, members[0]
    oof = pd.DataFrame(chosen["oof"], index=ref.oof.index, columns=classes)
    oof.insert(0, "fold", ref.oof["fold"].astype(int))
    out.write_oof(oof, classes)
    out.write_test(pd.DataFrame(chosen["test"], index=ref.test.index, columns=classes), classes)
    summary = {
        "run": out.name, "kind": "blend", "competition": comp.name, "classes": classes,
        "task": task, "metric": metric, **metrics.oof_scores(oof, labels, classes, metric, task),
        "folds_sha256": sha256_file(comp.folds_path), "test_from": "members",
        "method": chosen["method"], "requested_method": requested,
        "members": [{"run": m.name, "path": str(m.run.root), "kind": m.summary.get("kind"),
                     "test_from": m.summary.get("test_from"), "cv": s["cv"]}
                    for m, s in zip(members, scores, strict=True)],
        "weights": _weights(chosen, members),
        "coefficients": _coefficients(chosen["model"], members, classes),
        "leaderboard": _leaderboard(members, scores, results, metric),
        **describe_blend(chosen["method"], [m.summary for m in members]),  # what CV / test.csv are
        "estimates": estimates or [],  # honest.find_estimates reads these for a blend
    }
    out.write_summary(summary)
    out.write_provenance({"command": "kit blend", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime()),
                          "data": str(comp.root), "folds_sha256": summary["folds_sha256"],
                          "members": [{"run": m.name, "path": str(m.run.root),
                                       "oof_sha256": sha256_file(m.run.oof_path),
                                       "test_sha256": sha256_file(m.run.test_path)}
                                      for m in members]})
    write_run_plots(out, labels, task=task, metric=metric)
    return summary


def blend(runs: list[Path], *, method: str = "best", name: str | None = None,
          runs_dir: Path = Path("runs"), data_dir: Path = Path("data"),
          submissions_dir: Path = Path("submissions")) -> str:
    """`kit blend RUN... [--method mean|weighted|greedy|stack|best] [--name NAME]`.

    Aligns the members by Id and class name (refusing other competitions, Ids, classes or folds),
    scores every method on the competition's metric honestly (nested CV on the competition's
    folds) and in-sample, keeps `method` (or, for `best`, the best honest metric, ties -> lower
    log loss), writes runs/<name>/ (oof.csv = honest OOF, test.csv, summary.json,
    provenance.json, confusion.png) and a submission in `submissions_dir`. Returns the
    leaderboard and the output paths as text.
    """
    if name is not None:
        check_run_name(name)
    if method != "best":
        make_blender(method)  # unknown method -> error before any work
    try:
        return _blend(runs, method, name, Path(runs_dir), Path(data_dir), Path(submissions_dir))
    except OSError as e:
        err = disk_full(e, Path(runs_dir), "writing the blend")
        if err is None:
            raise
        raise err from None


def fit_members(comp: CompetitionDir, members: list[Member], method: str) -> dict:
    """Every method scored on the members' OOF (honest + in-sample) and the one kept (`best`:
    by honest score): {task, metric, labels, y, folds, scores, results, chosen}."""
    task, metric = metrics.competition_target(comp.meta(), str(comp.meta_path))
    classes, ref = comp.classes, members[0]
    labels = comp.folds().set_index("Id")["label"]
    y = metrics.encode_targets(labels, ref.oof.index, classes, task, str(comp.folds_path))
    folds = ref.oof["fold"].to_numpy(dtype=int)
    if len(np.unique(folds)) < 2:
        raise KitError(f"{ref.run.oof_path}: OOF rows of one fold only; honest scoring needs >= 2")
    P = [m.oof[classes].to_numpy(dtype=float) for m in members]   # m x (n, C)
    T = [m.test[classes].to_numpy(dtype=float) for m in members]  # m x (n_test, C)
    scores = [metrics.oof_scores(m.oof, labels, classes, metric, task) for m in members]
    results = [evaluate(k, P, y, folds, T, metric, task, classes) for k in METHODS]
    chosen = _pick(results, metric) if method == "best" else next(r for r in results
                                                                  if r["method"] == method)
    return {"task": task, "metric": metric, "labels": labels, "y": y, "folds": folds,
            "scores": scores, "results": results, "chosen": chosen}


def _blend(runs: list[Path], method: str, name: str | None, runs_dir: Path, data_dir: Path,
           submissions_dir: Path) -> str:
    from kaggle_kit.estimate import blend_estimates
    from kaggle_kit.honest import estimate_label

    comp, members = load_members([Path(r) for r in runs], Path(data_dir))
    fit = fit_members(comp, members, method)
    task, metric, labels, y, folds = (fit[k] for k in ("task", "metric", "labels", "y", "folds"))
    scores, results, chosen = fit["scores"], fit["results"], fit["chosen"]
    out = _out_run(runs_dir, name or default_name(members, method), members)
    estimates, why_none = blend_estimates([m.run.root for m in members], method, comp, runs_dir,
                                          Path(data_dir))
    summary = write_blend(out, comp, members, scores, results, chosen, method, labels, task, metric,
                          estimates)
    from kaggle_kit.submission import build_submission, validate_submission, write_submission

    sub = build_submission(out, comp)
    validate_submission(sub, comp, str(out.test_path))
    sub_path = write_submission(sub, Path(submissions_dir), out.name)
    best = min((s["cv"] for s in scores), key=lambda c: _rank_key(metric, c[metric],
                                                                   c["log_loss"]))[metric]
    got = summary["cv"][metric]
    direction = "" if metrics.higher_is_better(metric) else "; lower is better"
    return "\n".join([
        f"blend of {len(members)} runs of {comp.name} on {len(y)} OOF rows, "
        f"{len(np.unique(folds))} folds, metric {metric}{direction} (honest = nested CV over the "
        "folds; in-smp = in-sample, fitted and scored on all OOF rows)",
        leaderboard_text(summary["leaderboard"], chosen["method"], metric), "",
        f"kept: {chosen['method']}  honest OOF {metric} {got:.4f} "
        f"(best member {best:.4f}, {got - best:+.4f})"
        + ("" if metric == "log_loss" else f", log loss {summary['cv']['log_loss']:.4f}"),
        f"  CV is: {summary['cv_label']}",
        f"  {estimate_label(estimates, metric) or why_none}",
        f"weights: {summary['weights']}" if summary["weights"] else "weights: stacked "
        "(see summary.json coefficients)",
        f"run: {out.root}", f"submission: {sub_path}"])
