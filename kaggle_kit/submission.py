"""The submission file Kaggle receives: its format, building it from a run, validating it, writing it.

- `submission_spec(comp)`: the format (competition.json "submission": id column, columns, kind
  label | labels | prob | prob_positive, positive class, k).
- `build_submission(run, comp)`: a run's test.csv -> sample_submission's columns and Id order,
  values by kind (argmax class value, top-k / multilabel set, probabilities clipped for log loss).
- `validate_submission(df, comp, source)`: same columns/order, exactly the same Ids, values of the
  kind (class values, k distinct values, probabilities), no empty cells. Raises KitError.
- `write_submission(df, submissions_dir, run_name)`: `submissions/<UTC stamp>-<run>.csv`, atomic.

Used by kit blend, kit predict and kit submit (submit.py: upload, poll, ledger).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, metrics
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, write_csv

PROB_ATOL = 1e-3  # tolerance on "each probability row sums to 1"
SHOW_ROWS = 5  # offending rows quoted in a validation error


# ----------------------------------------------------------------------------- build / validate


KINDS = ("label", "labels", "prob", "prob_positive")
SUBMIT_CLIP = 1e-4  # log-loss submissions: probabilities kept in [1e-4, 1 - 1e-4]: a certain
# wrong answer costs -log(1e-4) = 9.2 instead of 34.5; a right one at most ~1e-4 * C


def submission_spec(comp: CompetitionDir) -> dict:
    """{"id_col", "columns", "kind", "positive", "k", "task", "metric", "prob_columns"} of a
    competition: competition.json "submission" (kit fetch), else -- files fetched before that key
    existed -- from the sample: one probability column per class (kind prob) or one label column.
    prob_columns: {sample column: class value} for kinds prob / prob_positive. Checked against
    sample_submission.csv's columns; one-line KitError naming the file and the fix."""
    meta, classes, where = comp.meta(), comp.classes, str(comp.meta_path)
    task, metric = metrics.competition_target(meta, where)
    columns = list(comp.sample_submission().columns)
    sub = dict(meta.get("submission") or {})
    id_col = sub.get("id_col") or meta["id_col"]
    rest = [c for c in columns if c != id_col]
    if not sub.get("kind"):
        sub["kind"] = "prob" if sorted(rest) == sorted(classes) else "label"
    kind = sub["kind"]
    if kind not in KINDS:
        raise KitError(f"{where}: submission kind {kind!r} unknown; choose one of {', '.join(KINDS)}")
    if sub.get("columns") and list(sub["columns"]) != columns:
        raise KitError(f"{where}: submission columns {sub['columns']} differ from the sample's "
                       f"{columns}; rerun `kit fetch {comp.name} --force`")
    if id_col not in columns:
        raise KitError(f"{where}: id column {id_col!r} is not in the sample's columns {columns}")
    spec = {"id_col": id_col, "columns": columns, "kind": kind, "task": task, "metric": metric,
            "positive": sub.get("positive"), "k": sub.get("k"), "prob_columns": {}}
    if kind in ("label", "labels") and len(rest) != 1:
        raise KitError(f"{comp.source_root / meta['sample_submission']}: columns "
                       f"{rest} are neither one label column nor one column per class {classes}")
    if kind == "label" and task == "multilabel":
        raise KitError(f"{where}: submission kind label gives one class per image, but the task is "
                       "multilabel; use kind labels (a space-separated set) or prob")
    if kind == "prob_positive":
        if task != "binary" or sub.get("positive") not in classes:
            raise KitError(f"{where}: submission kind prob_positive (one probability column) needs "
                           f"task binary and 'positive' one of {classes}; got task {task}, positive "
                           f"{sub.get('positive')!r}")
        spec["prob_columns"] = {rest[0]: str(sub["positive"])}
    if kind == "prob":
        spec["prob_columns"] = _prob_columns(rest, classes, meta.get("class_names") or {}, where)
    return spec


def _prob_columns(cols: list[str], classes: list[str], names: dict, where: str) -> dict:
    """{sample column: class value}: a column is a class value or its display name."""
    by_name = {str(n): str(v) for v, n in names.items()}
    out = {c: c if c in classes else by_name.get(c) for c in cols}
    unknown = [c for c, v in out.items() if v not in classes]
    if unknown or sorted(out.values()) != sorted(classes):
        raise KitError(f"{where}: the sample's probability columns {cols} do not name each class "
                       f"{classes} once (unknown: {unknown}); fix 'classes' / 'class_names'")
    return out


def _clip(p: np.ndarray, spec: dict) -> np.ndarray:
    """Probabilities as submitted: clipped to [SUBMIT_CLIP, 1 - SUBMIT_CLIP] for log loss
    (single-label rows renormalised), else unchanged."""
    if spec["metric"] != "log_loss":
        return p
    q = np.clip(p, SUBMIT_CLIP, 1 - SUBMIT_CLIP)
    return q if spec["task"] == "multilabel" or spec["kind"] == "prob_positive" else \
        q / q.sum(axis=1, keepdims=True)


def submission_values(p: np.ndarray, classes: list[str], spec: dict) -> dict[str, list]:
    """{sample column: values} of the non-Id columns from (n, C) test probabilities by kind:
    label = argmax class value; labels = top-k class values (most probable first) or the
    multilabel set (metrics.decide), space-separated; prob / prob_positive = probabilities."""
    cols = [c for c in spec["columns"] if c != spec["id_col"]]
    cls = np.asarray(classes, dtype=object)
    kind = spec["kind"]
    if kind == "label":
        return {cols[0]: list(cls[p.argmax(axis=1)])}
    if kind == "labels":
        if spec["k"]:
            picks = [cls[r] for r in metrics.top_k(p, int(spec["k"]))]
        else:  # multilabel set (class order) at the decision threshold
            picks = [cls[r.astype(bool)] for r in metrics.decide(spec["metric"], p, "multilabel")]
        return {cols[0]: [" ".join(r) for r in picks]}
    q = _clip(p, spec)
    index = {c: i for i, c in enumerate(classes)}
    return {col: list(q[:, index[v]]) for col, v in spec["prob_columns"].items()}


def build_submission(run: RunDir, comp: CompetitionDir) -> pd.DataFrame:
    """The submission for `run` on `comp`: sample_submission's columns, in its Id order, values
    by the competition's submission kind (`submission_values`). Raises KitError when test.csv
    lacks some sample Ids or has Ids the sample does not know.
    """
    spec, classes = submission_spec(comp), comp.classes
    ids = comp.test_ids()
    test = run.read_test(classes)  # index Id (str), (n_test, n_classes) probabilities
    missing = [i for i in ids if i not in test.index]
    extra = sorted(set(test.index) - set(ids))
    if missing or extra:
        raise KitError(f"{run.test_path}: Ids differ from {comp.meta()['sample_submission']}: "
                       f"{len(missing)} missing (first {missing[:SHOW_ROWS]}), {len(extra)} extra "
                       f"(first {extra[:SHOW_ROWS]}); was the run trained on competition {comp.name}?")
    test = test.loc[ids]
    if test.isna().any().any():
        raise KitError(f"{run.test_path}: empty probabilities for {int(test.isna().any(axis=1).sum())} Ids")
    values = submission_values(test.to_numpy(dtype=float), classes, spec)
    out = pd.DataFrame({spec["id_col"]: ids, **values})
    return out[spec["columns"]]


def _offending(df: pd.DataFrame, mask: pd.Series, what: str, source: str) -> KitError:
    """One-line error: how many rows, and the first few as `line N: col='v', ...` (CSV lines)."""
    positions, text = np.flatnonzero(mask.to_numpy()), df.astype(str)
    shown = "; ".join(
        f"line {pos + 2}: " + ", ".join(f"{c}={text.iloc[pos][c]!r}" for c in df.columns[:4])
        for pos in positions[:SHOW_ROWS]
    )
    return KitError(f"{source}: {len(positions)} row(s) {what} — first: {shown}")


def validate_submission(df: pd.DataFrame, comp: CompetitionDir, source: str) -> None:
    """Check `df` against comp's sample_submission before any upload; raise KitError naming `source`.

    Same columns in the same order; exactly the sample's Ids (none missing, extra or duplicated);
    no empty cells; then by submission kind: label = a class value; labels = space-separated
    distinct class values (at most k for top-k); prob = numbers in [0, 1] (single-label rows
    summing to 1 +-PROB_ATOL); prob_positive = a number in [0, 1]. The error counts the
    offending rows and shows the first few with their CSV line numbers (header = line 1).
    """
    spec, sample, classes = submission_spec(comp), comp.sample_submission(), comp.classes
    id_col = spec["id_col"]
    if list(df.columns) != list(sample.columns):
        raise KitError(f"{source}: columns {list(df.columns)} must be exactly "
                       f"{list(sample.columns)} (sample_submission.csv, same order)")
    df = df.reset_index(drop=True)
    text = df.astype(str)
    empty = df.isna().any(axis=1) | (text.apply(lambda s: s.str.strip()) == "").any(axis=1)
    if empty.any():
        raise _offending(df, empty, "with empty cells; fill every cell", source)
    ids = text[id_col]
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise _offending(df, dup, f"with a duplicated {id_col}; keep one row per Id", source)
    sample_ids = sample[id_col].astype(str)
    extra = ~ids.isin(set(sample_ids))
    if extra.any():
        raise _offending(df, extra, f"with an {id_col} not in sample_submission.csv", source)
    missing = sorted(set(sample_ids) - set(ids))
    if missing:
        raise KitError(f"{source}: {len(missing)} {id_col}(s) of sample_submission.csv missing "
                       f"(first {missing[:SHOW_ROWS]}); the file needs one row per test image")
    bad, what = _bad_values(df, text, spec, classes)
    if bad.any():
        raise _offending(df, bad, what, source)


def _bad_values(df: pd.DataFrame, text: pd.DataFrame, spec: dict, classes: list[str]
                ) -> tuple[pd.Series, str]:
    """(rows whose values do not fit the submission kind, what is wrong with them)."""
    cols = [c for c in df.columns if c != spec["id_col"]]
    known = set(classes)
    if spec["kind"] == "label":
        return ~text[cols[0]].isin(known), f"with a {cols[0]} not in the class list {classes[:20]}"
    if spec["kind"] == "labels":
        k = spec["k"]
        tokens = text[cols[0]].str.split()
        bad = tokens.map(lambda t: not t or len(set(t)) != len(t) or not set(t) <= known
                         or (bool(k) and len(t) > int(k)))
        most = f"at most {k} " if k else ""
        return bad, (f"whose {cols[0]} is not {most}distinct space-separated class values from "
                     f"{classes[:20]}")
    probs = df[cols].apply(pd.to_numeric, errors="coerce")
    bad = probs.isna().any(axis=1) | ((probs < 0) | (probs > 1)).any(axis=1)
    if spec["kind"] == "prob" and spec["task"] != "multilabel":
        bad |= (probs.sum(axis=1) - 1).abs() > PROB_ATOL
        return bad, "that are not probabilities (numbers in [0, 1] summing to 1 per row)"
    return bad, "that are not probabilities (numbers in [0, 1])"


def write_submission(df: pd.DataFrame, submissions_dir: Path, run_name: str) -> Path:
    """Write `submissions_dir/<UTC stamp>-<run_name>.csv` atomically (never overwrites); return it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(submissions_dir) / f"{stamp}-{run_name}.csv"
    n = 1
    while path.exists():  # two submissions of one run within a second
        path = Path(submissions_dir) / f"{stamp}-{run_name}-{n}.csv"
        n += 1
    return write_csv(path, df)
