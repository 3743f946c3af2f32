"""What a competition asks for (used by layout.py): the label column(s) of the train CSV, the task
(multiclass / binary / multilabel), the submission format read from sample_submission.csv, the
metric, and display names from a label map. The competition.json keys it returns are DESIGN's:
task, metric, classes, class_names, submission {id_col, columns, kind, positive, k}.

Where the files do not settle a choice it raises a one-line KitError naming the candidates and
the flag (--label-col, --metric, --positive); it never guesses silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.metrics import set_sep, split_set

PROB_METRICS = {"log_loss", "roc_auc", "macro_auc"}  # scored on probabilities, not labels


def check_metric(name: str | None) -> str | None:
    """`name` if metrics.py knows it (map@5, f2_samples ...), else a one-line KitError listing
    the known ones."""
    if name is None:
        return None
    from kaggle_kit.metrics import METRICS, parse_metric

    try:
        parse_metric(name)
    except KitError:
        raise KitError(f"--metric {name}: unknown metric; known: {', '.join(METRICS)} (e.g. "
                       "map@5, f2_samples)") from None
    return name


# ----------------------------------------------------------------------------- labels


def read_labels(csv: str, df: pd.DataFrame, sub: pd.DataFrame, id_col: str,
                hint: str | None, group_col: str | None) -> tuple[pd.Series, str, bool]:
    """(label per row as str, the label column(s), multilabel?). One-hot columns named like the
    sample's (plant-pathology) -> the set of columns that hold 1; a column of
    space-separated lists (iMet) -> the sorted set. Sets are joined as metrics.set_sep says."""
    rest = [c for c in sub.columns[1:]]
    if hint is None and len(rest) >= 2 and set(rest) <= set(df.columns) and \
            df[rest].isin(["0", "1", "0.0", "1.0"]).all().all():
        onehot = df[rest].astype(float).astype(int)
        sep = _onehot_sep(csv, rest)
        labels = onehot.apply(lambda r: sep.join(sorted(c for c in rest if r[c] == 1)), axis=1)
        return labels, ",".join(rest), True
    col = hint or _pick_label_col(csv, df, sub, id_col, group_col)
    if col not in df.columns:
        raise KitError(f"{csv}: no column '{col}'; pass --label-col (one of {list(df.columns)})")
    labels = df[col].str.strip()
    multi = labels.str.split()
    tokens = {t for v in multi for t in v}
    if multi.map(len).max() > 1 and len(tokens) < labels.nunique():  # lists share their tokens
        return multi.map(lambda v: " ".join(sorted(set(v)))), col, True
    return labels, col, False


def _onehot_sep(csv: str, columns: list[str]) -> str:
    """The set separator for one-hot class columns (metrics.set_sep); a name holding both
    whitespace and '|' cannot be written either way."""
    sep = set_sep(columns)
    bad = [c for c in columns if sep in c]
    if bad:
        raise KitError(f"{csv}: class column {bad[0]!r} holds both a space and '|'; rename the "
                       "column in the label CSV and the sample alike")
    return sep


def _pick_label_col(csv: str, df: pd.DataFrame, sub: pd.DataFrame, id_col: str,
                    group_col: str | None) -> str:
    rest = [c for c in sub.columns[1:]]
    if len(rest) == 1 and rest[0] in df.columns and rest[0] != id_col:
        return rest[0]
    others = [c for c in df.columns if c not in (id_col, group_col)]
    if len(rest) >= 2:  # the sample's columns are the class names: the column holding them
        named = [c for c in others if set(df[c].unique()) <= set(rest)]
        if not named:  # mostly the sample's names: the label column of a contradicting sample
            named = [c for c in others if len(set(df[c]) & set(rest)) >= df[c].nunique() / 2]
        if len(named) == 1:
            return named[0]
        if named:
            raise KitError(f"{csv}: columns {named} all hold the sample's class names; pass "
                           "--label-col")
    if len(others) != 1:
        raise KitError(f"{csv}: cannot tell the label column; pass --label-col "
                       f"(one of {others[:10]}{' ...' if len(others) > 10 else ''})")
    return others[0]


# ----------------------------------------------------------------------------- task + submission


def detect_target(sample: str, sub: pd.DataFrame, labels: pd.Series, multilabel: bool,
                  labels_file: str, metric: str | None, positive: str | None) -> dict:
    """task, metric, classes and the submission format, from the train labels and the sample."""
    metric = check_metric(metric)
    if multilabel:  # one-hot sample: sets joined as read_labels joined its columns
        sep = set_sep(list(sub.columns[1:])) if len(sub.columns) > 2 else " "
        classes = sorted({t for v in labels for t in split_set(v, sep)})
    else:
        classes = sorted(set(labels))
    if len(classes) < 2:
        raise KitError(f"{labels_file}: only {len(classes)} class ({classes}); a classifier "
                       "needs two or more")
    task = "multilabel" if multilabel else "binary" if len(classes) == 2 else "multiclass"
    id_col, rest = sub.columns[0], list(sub.columns[1:])
    sub_info = {"id_col": id_col, "columns": list(sub.columns)}
    if not rest:
        raise KitError(f"{sample}: only an Id column; a submission needs a prediction column")
    if len(rest) >= 2:
        _same_classes(sample, rest, classes, labels_file)
        kind, default = "prob", "macro_auc" if multilabel else "log_loss"
    else:
        kind, k = _one_column_kind(sample, rest[0], sub[rest[0]], classes, task, metric)
        default = {"label": "accuracy", "prob_positive": "roc_auc",
                   "labels": "f2_samples" if multilabel else f"map@{k}"}[kind]
        if kind == "labels" and not multilabel:
            sub_info["k"] = k
    if kind == "prob_positive":
        sub_info["positive"] = _positive(sample, rest[0], classes, positive)
    elif positive is not None:
        raise KitError(f"--positive {positive}: only for a one-column probability submission; "
                       f"{sample} asks for {kind}")
    return {"task": task, "metric": metric or default, "classes": classes,
            "submission": {**sub_info, "kind": kind}}


def _same_classes(sample: str, cols: list[str], classes: list[str], labels_file: str) -> None:
    if set(cols) != set(classes):
        missing, extra = sorted(set(classes) - set(cols)), sorted(set(cols) - set(classes))
        raise KitError(f"{sample}: probability columns differ from the classes in {labels_file}"
                       f" (no column for {missing[:5]}, columns {extra[:5]} are no class); "
                       "check the files, or pass --label-col naming the right label column")


def _one_column_kind(sample: str, col: str, vals: pd.Series, classes: list[str], task: str,
                     metric: str | None) -> tuple[str, int]:
    """(kind, k) of a one-column sample: label, labels (space-separated, k of them) or
    prob_positive (P(positive) as a number)."""
    tokens = vals.str.split()
    k = int(tokens.map(len).max())
    known = set(classes)
    if k > 1 or task == "multilabel":
        bad = [t for v in tokens for t in v if t not in known]
        if bad:
            raise KitError(f"{sample}: column {col} holds '{bad[0]}', which is no class of the "
                           "train labels; check the files (or --label-col)")
        return "labels", k
    nums = pd.to_numeric(vals, errors="coerce")
    numeric = bool(nums.notna().all() and nums.between(0, 1).all())  # probabilities
    if vals.isin(known).all():
        if task == "binary" and metric in PROB_METRICS:
            return "prob_positive", 1
        if task == "binary" and metric is None and vals.nunique() == 1 and numeric:
            raise KitError(f"{sample}: column {col} is {vals.iloc[0]} on every row: cannot tell "
                           f"labels from P(positive); pass --metric roc_auc (or log_loss) for "
                           "probabilities, --metric accuracy for labels")
        return "label", 1
    if numeric:
        if task != "binary":
            raise KitError(f"{sample}: column {col} holds numbers ({vals.iloc[0]}) but the train "
                           f"labels have {len(classes)} classes; a single probability column "
                           "needs a binary target: check the files (or --label-col)")
        return "prob_positive", 1
    bad = vals[~vals.isin(known)].iloc[0]
    raise KitError(f"{sample}: column {col} holds '{bad}', which is no class of the train labels "
                   f"({classes[:5]}{' ...' if len(classes) > 5 else ''}); check the files "
                   "(or --label-col)")


def _positive(sample: str, col: str, classes: list[str], positive: str | None) -> str:
    if positive is not None:
        if positive not in classes:
            raise KitError(f"--positive {positive}: not a class; one of {classes}")
        return positive
    if classes == ["0", "1"]:
        return "1"
    raise KitError(f"{sample}: column {col} is P(one class): which one? pass --positive "
                   f"{classes[0]} or --positive {classes[1]}")


# ----------------------------------------------------------------------------- label maps


def class_names(src: Path, classes: list[str], skip: set[str]) -> tuple[dict | None, str | None]:
    """({class value: display name}, map file) from a label map Kaggle ships: a JSON object
    (cassava's label_num_to_disease_map.json) or a two-column CSV (iMet's labels.csv) whose keys
    are the class values. A map that names some classes but misses others is an error."""
    for path in sorted(src.rglob("*.json")) + sorted(src.rglob("*.csv")):
        rel = path.relative_to(src).as_posix()
        if rel in skip or path.stat().st_size > 50_000_000:
            continue
        found = _read_map(path)
        if not found:
            continue
        hit = set(found) & set(classes)
        if not hit or (path.suffix == ".csv" and len(hit) < len(classes) / 2):
            continue
        missing = [c for c in classes if c not in found]
        if missing:
            raise KitError(f"{rel}: label map has no name for class(es) {missing[:5]} found in "
                           "the train labels; add them to the map (or remove the file)")
        return {c: found[c] for c in classes}, rel
    return None, None


def _read_map(path: Path) -> dict[str, str] | None:
    try:
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            ok = isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values())
            return {str(k): v for k, v in obj.items()} if ok else None
        df = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=200_000)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    if df.shape[1] != 2 or df.iloc[:, 0].duplicated().any():
        return None
    return dict(zip(df.iloc[:, 0], df.iloc[:, 1], strict=True))
