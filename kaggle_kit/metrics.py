"""The one scoring module: competition metrics, decision rules, OOF scores (train, blend, report,
submit import it; it imports none of them).

Targets `y` come in two shapes:
  - single-label tasks ("multiclass", "binary"): (n,) int class indices into the sorted class list;
  - "multilabel": (n, C) 0/1 indicators (folds.csv `label` = the set of class values,
    joined as `set_sep` says).
Probabilities `probs` are (n, C), one column per class in class order (multilabel: independent
sigmoid probabilities, rows need not sum to 1).

Metric names (competition.json "metric"): accuracy, log_loss, roc_auc, macro_auc, macro_f1, qwk,
map@<k> (e.g. map@5), f<beta>_samples (e.g. f2_samples: mean F-beta over images, iMet).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from kaggle_kit import KitError

TASKS = ("multiclass", "binary", "multilabel")
METRICS = ("accuracy", "log_loss", "roc_auc", "macro_auc", "macro_f1", "qwk", "map@k",
           "f<beta>_samples")
EPS = 1e-15  # probability floor before log loss / renormalisation (as Kaggle's log loss)
THRESHOLD = 0.5  # multilabel decision rule: a class is predicted when its probability >= this

# ----------------------------------------------------------------------------- names


def parse_metric(metric: str) -> tuple[str, float | int | None]:
    """(base name, parameter): 'map@5' -> ('map@k', 5), 'f2_samples' -> ('fbeta_samples', 2.0),
    others -> (name, None). Unknown names raise a one-line KitError listing the valid ones."""
    if metric in ("accuracy", "log_loss", "roc_auc", "macro_auc", "macro_f1", "qwk"):
        return metric, None
    m = re.fullmatch(r"map@([1-9][0-9]*)", metric or "")
    if m:
        return "map@k", int(m.group(1))
    m = re.fullmatch(r"f([0-9]+(?:\.[0-9]+)?)_samples", metric or "")
    if m and float(m.group(1)) > 0:
        return "fbeta_samples", float(m.group(1))
    raise KitError(f"metric {metric!r}: unknown; choose one of {', '.join(METRICS)} "
                   "(e.g. map@5, f2_samples), set in competition.json or `kit fetch --metric`")


def higher_is_better(metric: str) -> bool:
    """True for every metric but log loss."""
    return parse_metric(metric)[0] != "log_loss"


def optimised(metric: str) -> str:
    """What kit optimises for a competition `metric` (`checkpoint: best`, blend weights, greedy
    selection): the metric itself, except accuracy, a step function on a few hundred validation
    images, for which the smooth log loss stands in."""
    parse_metric(metric)
    return "log_loss" if metric == "accuracy" else metric


def check_metric(metric: str, task: str) -> None:
    """Refuse a metric that does not apply to the task (one-line KitError)."""
    base, _ = parse_metric(metric)
    if task not in TASKS:
        raise KitError(f"task {task!r}: unknown; choose one of {', '.join(TASKS)}")
    if base == "fbeta_samples" and task != "multilabel":
        raise KitError(f"metric {metric}: a multi-label metric, but the task is {task}; "
                       "use accuracy, log_loss, macro_f1, qwk or roc_auc")
    if base == "qwk" and task == "multilabel":
        raise KitError(f"metric {metric}: needs one ordered class per image, but the task is "
                       "multilabel; use f2_samples or macro_auc")


def better(metric: str, a: float, b: float) -> bool:
    """Is score `a` strictly better than `b` under `metric` (NaN is never better)?"""
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    return a > b if higher_is_better(metric) else a < b


# ----------------------------------------------------------------------------- targets


def set_sep(classes: list[str]) -> str:
    """How folds.csv writes a multilabel set: space-joined, or '|'-joined when a class name holds
    whitespace (one-hot columns such as ranzcr's 'ETT - Abnormal'); fixed by the class list."""
    return "|" if any(any(ch.isspace() for ch in c) for c in classes) else " "


def split_set(value: str, sep: str) -> list[str]:
    """The classes of one multilabel set written with `sep` (see `set_sep`); '' is the empty set."""
    return value.split() if sep == " " else [t for t in value.split(sep) if t]


def encode_targets(labels: pd.Series, ids: pd.Index, classes: list[str], task: str = "multiclass",
                   source: str = "oof") -> np.ndarray:
    """Targets of `ids` (joined by Id, never by position) from `labels` (class values indexed by
    Id; multilabel: sets joined by `set_sep(classes)`): (n,) class indices, or (n, C) 0/1 for
    multilabel.
    Raises a one-line KitError naming the first Id without a label or the unknown labels."""
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    missing = pd.Index(ids).difference(labels.index)
    if len(missing):
        raise KitError(f"{source}: Id {missing[0]} has no training label ({len(missing)} Ids "
                       "unknown); is the run from this competition?")
    y = labels.reindex(ids).astype(str)
    index = {c: i for i, c in enumerate(classes)}
    if task == "multilabel":
        sep = set_sep(classes)
        sets = [split_set(s, sep) for s in y]
        unknown = sorted({t for s in sets for t in s} - set(index))
        if unknown:
            raise KitError(f"{source}: labels {unknown[:5]} are not in the classes {classes[:20]}")
        out = np.zeros((len(sets), len(classes)), dtype=np.int64)
        for r, s in enumerate(sets):
            out[r, [index[t] for t in s]] = 1
        return out
    unknown = sorted(set(y) - set(index))
    if unknown:
        raise KitError(f"{source}: labels {unknown[:5]} are not in the classes {classes[:20]}")
    return y.map(index).to_numpy(dtype=int)


def clean_probs(p: np.ndarray) -> np.ndarray:
    """(n, C) probabilities floored at EPS and renormalised so each row sums to 1."""
    p = np.clip(np.asarray(p, dtype=float), EPS, None)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- decisions


def decide(metric: str, probs: np.ndarray, task: str, threshold: float = THRESHOLD) -> np.ndarray:
    """The labels a metric scores, from (n, C) probabilities:
    single-label -> (n,) argmax indices (ties -> first class); map@k -> (n, k) indices, most
    probable first; multilabel -> (n, C) 0/1 where prob >= threshold (at least the argmax class
    per row: an empty set scores 0 under every set metric)."""
    base, k = parse_metric(metric)
    p = np.asarray(probs, dtype=float)
    if base == "map@k":
        return top_k(p, int(k))
    if task != "multilabel":
        return p.argmax(axis=1)
    out = (p >= threshold).astype(np.int64)
    out[np.arange(len(p)), p.argmax(axis=1)] = 1
    return out


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """(n, min(k, C)) class indices by decreasing probability (stable: ties -> first class)."""
    p = np.asarray(probs, dtype=float)
    return np.argsort(-p, axis=1, kind="stable")[:, : min(k, p.shape[1])]


# ----------------------------------------------------------------------------- metrics


def score(metric: str, y: np.ndarray, probs: np.ndarray, task: str = "multiclass",
          classes: list[str] | None = None) -> float:
    """`metric` of (n, C) probabilities against targets y (see module docstring).

    classes: the class values, for qwk (ordered by numeric value when every class is a number,
    else by list order). NaN when the metric is undefined on these rows (AUC with one class only,
    no rows)."""
    base, param = parse_metric(metric)
    y, p = np.asarray(y), np.asarray(probs, dtype=float)
    if len(y) == 0:
        return float("nan")
    if base == "log_loss":
        return _log_loss(y, p, task)
    if base in ("roc_auc", "macro_auc"):
        return _auc(y, p, task)
    if base == "map@k":
        return map_at_k(y, p, int(param), task)
    pred = decide(metric, p, task)
    from sklearn import metrics as skm

    if base == "accuracy":  # multilabel: exact set match (sklearn's subset accuracy)
        return float(skm.accuracy_score(y, pred))
    if base == "macro_f1":  # over the classes in y or pred (sklearn default, as Kaggle's)
        return float(skm.f1_score(y, pred, average="macro", zero_division=0))
    if base == "fbeta_samples":
        return float(skm.fbeta_score(y, pred, beta=float(param), average="samples",
                                     zero_division=0))
    if base == "qwk":
        r = ordinal_ranks(classes, p.shape[1])  # every class, present or not: Kaggle's N ratings
        return float(skm.cohen_kappa_score(r[y], r[pred], weights="quadratic",
                                           labels=np.arange(p.shape[1])))
    raise AssertionError(base)  # parse_metric admits only the names above


def _log_loss(y: np.ndarray, p: np.ndarray, task: str) -> float:
    """Multiclass: sklearn's log loss of rows renormalised after the EPS floor. Multilabel: mean
    binary cross-entropy over all (image, class) cells, probabilities clipped to [EPS, 1-EPS]."""
    from sklearn.metrics import log_loss

    if task == "multilabel":
        q = np.clip(p, EPS, 1 - EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())
    return float(log_loss(y, clean_probs(p), labels=np.arange(p.shape[1])))


def _auc(y: np.ndarray, p: np.ndarray, task: str) -> float:
    """Binary: ROC AUC of P(class 1) (= that of P(class 0) for class 0: the same ranking).
    Multiclass (one-vs-rest) and multilabel: the mean over classes that have both positive and
    negative rows (Kaggle's mean column-wise AUC). NaN when no class has both."""
    from sklearn.metrics import roc_auc_score

    Y = y if task == "multilabel" else np.eye(p.shape[1], dtype=int)[y]
    if task == "binary" or p.shape[1] == 2 and task != "multilabel":
        return float(roc_auc_score(Y[:, 1], p[:, 1])) if 0 < Y[:, 1].sum() < len(Y) else np.nan
    ok = [c for c in range(Y.shape[1]) if 0 < Y[:, c].sum() < len(Y)]
    if not ok:
        return float("nan")
    return float(np.mean([roc_auc_score(Y[:, c], p[:, c]) for c in ok]))


def map_at_k(y: np.ndarray, p: np.ndarray, k: int, task: str = "multiclass") -> float:
    """Mean average precision at k of the top-k classes by probability (Kaggle's MAP@k):
    per image sum over ranks i <= k of precision@i * [i-th class is true] / min(#true, k);
    one true class (humpback whales) -> 1 / rank of the true class, 0 when not in the top k."""
    Y = y if task == "multilabel" else np.eye(p.shape[1], dtype=int)[y]
    top = top_k(p, k)  # (n, k)
    hits = np.take_along_axis(Y, top, axis=1).astype(float)  # (n, k) 1 where the rank is true
    precision = np.cumsum(hits, axis=1) / np.arange(1, top.shape[1] + 1)
    n_true = np.minimum(Y.sum(axis=1), k)
    ap = np.where(n_true > 0, (precision * hits).sum(axis=1) / np.maximum(n_true, 1), 0.0)
    return float(ap.mean())


def ordinal_ranks(classes: list[str] | None, n: int) -> np.ndarray:
    """(C,) the rank of each class in the rating order qwk weighs: by numeric value when every
    class parses as a number ("0".."4"; "10" after "9"), else by position in `classes`."""
    try:
        values = [float(c) for c in classes] if classes else list(range(n))
    except ValueError:
        values = list(range(n))
    ranks = np.empty(n, dtype=int)
    ranks[np.argsort(values, kind="stable")] = np.arange(n)
    return ranks


# ----------------------------------------------------------------------------- runs


def competition_target(meta: dict, source: str = "competition.json") -> tuple[str, str]:
    """(task, metric) of a competition.json dict; a file without the keys (fetched before they
    existed) is a multiclass competition scored by accuracy. Checked: one-line error naming
    `source` for an unknown or mismatched name."""
    task, metric = meta.get("task") or "multiclass", meta.get("metric") or "accuracy"
    try:
        check_metric(metric, task)
    except KitError as e:
        raise KitError(f"{source}: {e}") from None
    return task, metric


def cv_score(summary: dict) -> tuple[str, float | None]:
    """(metric, CV value) of a run's summary.json (older runs: accuracy)."""
    metric = summary.get("metric") or "accuracy"
    value = (summary.get("cv") or {}).get(metric)
    return metric, None if value is None else float(value)


def oof_scores(oof: pd.DataFrame, labels: pd.Series, classes: list[str],
               metric: str = "accuracy", task: str = "multiclass") -> dict:
    """Scores of out-of-fold probabilities.

    oof: indexed by Id (str), a `fold` column and one probability column per class.
    labels: class values indexed by Id (multilabel: sets, see `set_sep`); joined by Id.
    Returns {"cv": {"accuracy", "log_loss", "accuracy_std", metric, "<metric>_std"},  # std over
             "per_fold": [{"fold", "accuracy", "log_loss", metric}],   # folds (ddof=0), by fold
             "per_class": {class: recall or None if the class has no OOF image}}
    """
    missing = [c for c in ("fold", *classes) if c not in oof.columns]
    if missing:
        raise KitError(f"oof: columns {missing} missing; expected fold + {classes}")
    oof = oof.copy()
    oof.index = oof.index.astype(str)
    y = encode_targets(labels, oof.index, classes, task)
    p = oof[classes].to_numpy(dtype=float)
    folds = oof["fold"].to_numpy(dtype=int)
    names = list(dict.fromkeys(["accuracy", "log_loss", metric]))

    def scores(m: np.ndarray) -> dict:
        return {n: score(n, y[m], p[m], task, classes) for n in names}

    cv = scores(np.ones(len(y), dtype=bool))
    per_fold = [{"fold": int(k), **scores(folds == k)} for k in sorted(set(folds.tolist()))]
    for n in dict.fromkeys(["accuracy", metric]):
        vals = [f[n] for f in per_fold if not np.isnan(f[n])]  # NaN: undefined on that fold
        cv[f"{n}_std"] = float(np.std(vals)) if vals else float("nan")
    return {"cv": cv, "per_fold": per_fold, "per_class": per_class_recall(y, p, classes, task)}


def per_class_recall(y: np.ndarray, p: np.ndarray, classes: list[str],
                     task: str = "multiclass") -> dict[str, float | None]:
    """{class: fraction of its images predicted as it (argmax; multilabel: >= THRESHOLD)}."""
    if task == "multilabel":
        pred = decide("accuracy", p, task)
        return {c: (float(pred[y[:, i] == 1, i].mean()) if y[:, i].any() else None)
                for i, c in enumerate(classes)}
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=int)
    return {c: (float((pred[y == i] == i).mean()) if (y == i).any() else None)
            for i, c in enumerate(classes)}


def confusion(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted (argmax) class."""
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y, np.asarray(p).argmax(axis=1)), 1)
    return cm
