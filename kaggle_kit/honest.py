"""What each shown score IS: labels for a run's CV, and the `kit estimate` results that score it.

A run's CV is the OOF score of its fold models, each scored alone on the images it did not see.
Its test.csv is often something else (a bag of fold models, refit models trained on every image,
both, a blend of such runs), which usually scores higher. So every place kit shows a CV (kit train,
kit blend, kit submit, the ledger) shows it with the label made here, and -- when `kit estimate`
was run for the same resolved recipe -- the held-out score of exactly what test.csv holds.

summary.json keys written from `describe_train` / `describe_blend`:
  cv_is      what the CV is: "OOF of 4 fold models, each trained on 75% of train; TTA 2 views"
  test_is    what test.csv is: "mean of 4 fold models + 1 refit model (100% of train); TTA 2 views"
  cv_honest  true only when test.csv is the fold bag (or blend of fold bags) whose OOF the CV is
  cv_label   the short label shown next to the number (`label`)
No torch here; reads run folders (recipe.yaml, summary.json, estimate.json) only.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kaggle_kit import KitError
from kaggle_kit.rundir import RunDir, estimate_runs

ADVICE = "run kit estimate for the submission's own score"


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("s" if count != 1 else "")


def describe_train(fold_models: list[str], test_members: list[str], fold_frac: float | None,
                   n_views: int = 1) -> dict:
    """The labels of a train run: fold_models = the fold<k> models it trained (their OOF is the
    CV), test_members = the fold<k> / refit<i> models test.csv averages, fold_frac = mean share of the train images
    a fold model trained on (0..1), n_views = TTA views per model."""
    tta = f"; TTA {n_views} views" if n_views > 1 else ""
    pct = f"{fold_frac:.0%}" if fold_frac is not None else "(k-1)/k"
    nf = len(fold_models)
    n_test_folds = sum(m.startswith("fold") for m in test_members)
    n_test_refit = sum(m.startswith("refit") for m in test_members)
    cv_is = None if not nf else (f"OOF of {_n(nf, 'fold model')}, "
                                 f"{'each ' if nf > 1 else ''}trained on {pct} of train{tta}")
    parts = ([_n(n_test_folds, "fold model")] if n_test_folds else []) + (
        [f"{_n(n_test_refit, 'refit model')} (100% of train)"] if n_test_refit else [])
    test_is = ("mean of " if len(test_members) > 1 else "") + " + ".join(parts) + tta
    short_test = " + ".join(([("fold" if n_test_folds == 1 else f"{n_test_folds} folds")]
                             if n_test_folds else []) +
                            ([("refit" if n_test_refit == 1 else f"{n_test_refit} refits")]
                             if n_test_refit else []))
    honest = bool(nf) and not n_test_refit
    if not nf:  # a refit-only run: nothing was scored out of fold
        verdict, cv_short = f"no estimate in this run; {ADVICE}", "no CV (refit only)"
    elif honest and n_test_folds == 1:
        verdict, cv_short, short_test = "honest", "one fold model", "that model"
    elif honest:
        verdict, cv_short = ("honest, a slight under-estimate (a bag scores a little higher "
                             "than its models alone)"), f"OOF of {nf} fold models"
        short_test = "their mean"
    else:
        cv_short = "one fold model" if nf == 1 else f"OOF of {nf} fold models"
        verdict = f"expect higher; {ADVICE}"
    return {"cv_is": cv_is, "test_is": test_is, "cv_honest": honest,
            "cv_label": f"{cv_short}; test.csv = {short_test}: {verdict}"}


def describe_blend(method: str, member_summaries: list[dict]) -> dict:
    """The labels of a blend: its CV is the nested-CV OOF of the blend of the members' OOFs; its
    test.csv blends the members' test.csv, so it is honest only when every member's is."""
    members = [(s.get("run", "?"), labels(s)) for s in member_summaries]
    honest = all(lab["cv_honest"] for _, lab in members)
    cv_is = (f"honest nested-CV OOF of the {method} blend of {len(members)} runs' OOFs (fitted on "
             "the other folds' OOF rows)")
    test_is = (f"the {method} blend (fitted on all OOF rows) of the members' test.csv: "
               + "; ".join(f"{name} = {lab['test_is']}" for name, lab in members))
    verdict = ("honest, a slight under-estimate (the members' test.csv are fold bags)" if honest
               else "expect higher (a member's test.csv has refit models trained on 100% of "
               "train); kit estimate each member's recipe for its own score")
    return {"cv_is": cv_is, "test_is": test_is, "cv_honest": honest,
            "cv_label": f"nested-CV OOF of the blend; test.csv = blend of the members' "
                        f"test.csv: {verdict}"}


def labels(summary: dict) -> dict:
    """{cv_is, test_is, cv_honest, cv_label} of a summary.json: the stored ones, or -- for runs
    written before these keys existed -- derived from test_from / test_members / per_fold."""
    if summary.get("cv_label"):
        return {k: summary.get(k) for k in ("cv_is", "test_is", "cv_honest", "cv_label")}
    if summary.get("kind") == "blend":
        return {"cv_is": "nested-CV OOF of the blend", "test_is": "blend of the members' test.csv",
                "cv_honest": False, "cv_label": "nested-CV OOF of the blend; what the members' "
                "test.csv hold is not recorded (a run made before kit labelled scores)"}
    folds = [f"fold{f['fold']}" for f in summary.get("per_fold") or []]
    test_from = summary.get("test_from") or "folds"
    members = summary.get("test_members") or (
        folds + (["refit0"] if test_from == "both" else []) if test_from != "refit" else ["refit0"])
    return describe_train(folds, members, None)


# ----------------------------------------------------------------------------- estimates


def _recipe_without_competition(path: Path) -> dict | None:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    raw.pop("competition", None)
    return raw


def find_estimates(run_root: Path, runs_dir: Path | None = None) -> list[dict]:
    """The estimate.json dicts (+ "path") of `kit estimate` runs of the SAME resolved recipe as
    the run in `run_root` (recipe.yaml equal but for `competition`, which is <comp>-ho<K> there)
    on the same competition, found in the run's own folder's parent and `runs_dir`; by fold.
    A blend: the estimates kit blend wrote into its summary.json."""
    run_root = Path(run_root)
    mine = _recipe_without_competition(RunDir(run_root).recipe_path)
    try:
        summary = RunDir(run_root).summary()
        comp = summary.get("competition")
    except (KitError, AttributeError):  # missing / unreadable / not a JSON object
        return []
    if summary.get("kind") == "blend":  # kit blend scored its members' estimate runs' blend
        return list(summary.get("estimates") or [])
    if mine is None or not comp:
        return []
    found: dict[Path, dict] = {}
    for parent in {run_root.parent.resolve(), *([Path(runs_dir).resolve()] if runs_dir else [])}:
        for root, est in estimate_runs(parent):
            if est.get("competition") != comp or root.resolve() == run_root.resolve():
                continue
            path = RunDir(root).estimate_path
            if _recipe_without_competition(RunDir(root).recipe_path) == mine:
                found[path.resolve()] = {**est, "path": str(path)}
    return sorted(found.values(), key=lambda e: (e.get("holdout_fold", 0), e["path"]))


def _trained_pct(est: dict) -> str:
    """The share of the competition's train images the estimate run trained on, e.g. "75%"."""
    if est.get("n_train"):
        return f"{est['n_trained'] / est['n_train']:.0%}"
    m = re.match(r"(\d+) of (\d+)", str(est.get("trained_on", "")))  # estimate.json before n_train
    return f"{int(m.group(1)) / int(m.group(2)):.0%}" if m and int(m.group(2)) else "?"


def estimate_value(estimates: list[dict], metric: str) -> float | None:
    """Mean held-out `metric` over the estimates that scored it (None if none did)."""
    vals = [e["holdout"][metric] for e in estimates if metric in (e.get("holdout") or {})]
    return sum(vals) / len(vals) if vals else None


def estimate_label(estimates: list[dict], metric: str) -> str:
    """"holdout estimate 0.8650 (fold 3 held out, trained on 75%)", the mean over several, or ""."""
    value = estimate_value(estimates, metric)
    if value is None:
        return ""
    used = [e for e in estimates if metric in (e.get("holdout") or {})]
    folds = ", ".join(str(e.get("holdout_fold", "?")) for e in used)
    pcts = sorted({_trained_pct(e) for e in used})
    how = (f"fold {folds} held out, trained on {'/'.join(pcts)}" if len(used) == 1 else
           f"mean of {len(used)}: folds {folds} held out, each trained on {'/'.join(pcts)}")
    return f"holdout estimate {value:.4f} ({how})"


# Scores in [0, 1], higher is better, whose error 1 - score shrinks with more training images.
_ERROR_METRICS = ("accuracy", "roc_auc", "macro_auc", "macro_f1", "map@k", "fbeta_samples")


def scaled_estimate(summary: dict, estimates: list[dict], metric: str) -> float | None:
    """The holdout estimate scaled from the estimate run's share of the images to all of them.

    kit estimate trains on (k-1)/k of the images, so it under-states the full run. The two runs'
    own CVs measure how the error falls with that much more data: the estimate run's fold models
    train on (k-1)/k of ITS images, i.e. exactly (k-1)/k as many as this run's fold models. If the
    error follows a power law of the image count (a learning curve), the submission's error falls
    by the same factor:  1 - scaled = (1 - holdout) * (1 - CV of this run) / (1 - CV of the
    estimate run).  None when the metric is not such a score or either CV is missing."""
    from kaggle_kit.metrics import parse_metric

    if summary.get("kind") == "blend" or parse_metric(metric)[0] not in _ERROR_METRICS:
        return None
    used = [e for e in estimates
            if metric in (e.get("holdout") or {}) and metric in (e.get("cv_shown") or {})]
    cv = (summary.get("cv") or {}).get(metric)
    if not used or cv is None:
        return None
    held = sum(e["holdout"][metric] for e in used) / len(used)
    cv_est = sum(e["cv_shown"][metric] for e in used) / len(used)
    if not (0 <= held <= 1 and 0 <= cv <= 1 and 0 <= cv_est < 1):
        return None
    return 1 - (1 - held) * (1 - cv) / (1 - cv_est)


def scaled_label(summary: dict, estimates: list[dict], metric: str) -> str:
    """"scaled to all train images: 0.8801 (...)" or "" (see scaled_estimate)."""
    value = scaled_estimate(summary, estimates, metric)
    if value is None:
        return ""
    used = [e for e in estimates if metric in (e.get("cv_shown") or {})]
    cv_est = sum(e["cv_shown"][metric] for e in used) / len(used)
    return (f"scaled to all train images: {value:.4f} (an extrapolation: the holdout error times "
            f"this run's CV error over the estimate run's, {1 - summary['cv'][metric]:.4f} / "
            f"{1 - cv_est:.4f})")


def cv_label(summary: dict, has_estimate: bool = False) -> str:
    """The summary's short CV label; without the advice to run kit estimate once there is one."""
    label = labels(summary)["cv_label"]
    return label.replace(f"; {ADVICE}", "") if has_estimate else label


def score_line(summary: dict, estimates: list[dict]) -> str:
    """"CV 0.83330 (<metric>; <label>)" + "; holdout estimate ..." when there is one: what
    kit submit shows. A run with no CV says so."""
    metric = summary.get("metric") or "accuracy"
    cv = (summary.get("cv") or {}).get(metric)
    est = estimate_label(estimates, metric)
    lab = cv_label(summary, bool(est))
    head = (f"CV {cv:.5f} ({metric}; {lab})" if cv is not None
            else f"no CV ({summary.get('cv_note') or lab})")
    scaled = scaled_label(summary, estimates, metric)
    return head + (f"; {est}" if est else "") + (f"; {scaled}" if scaled else "")
