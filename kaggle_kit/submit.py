"""Build, validate, write and submit a Kaggle submission; keep the CV-to-leaderboard ledger.

- `build_submission(run, comp)`: a run's test.csv -> sample_submission's columns and Id order
  (argmax class names, or the probabilities themselves when the sample asks for them).
- `validate_submission(df, comp, source)`: same columns/order, exactly the same Ids, labels from
  the class list (or probabilities in [0, 1] summing to 1), no empty cells. Raises KitError.
- `write_submission(df, submissions_dir, run_name)`: `submissions/<UTC stamp>-<run>.csv`, atomic.
- `submit(...)`: `kit submit`: build/validate/write, upload (kaggle_io), poll, ledger.
- `show_ledger(...)`: `kit submissions`: newest first, CV next to the public score.

`submissions/ledger.csv` columns (LEDGER_COLUMNS): time (UTC ISO), competition, file, sha256, run,
method, cv, message, submission_id, status (pending|complete|error), public_score, error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.workspace import CompetitionDir, RunDir, write_csv

LEDGER_COLUMNS = ["time", "competition", "file", "sha256", "run", "method", "cv", "message",
                  "submission_id", "status", "public_score", "error"]
PROB_ATOL = 1e-3  # tolerance on "each probability row sums to 1"
SHOW_ROWS = 5  # offending rows quoted in a validation error


# ----------------------------------------------------------------------------- build / validate


def _label_col(comp: CompetitionDir) -> str | None:
    """The sample's label column, or None when the sample asks for one probability per class."""
    sample_cols = list(comp.sample_submission().columns)
    id_col, classes = comp.meta()["id_col"], comp.classes
    rest = [c for c in sample_cols if c != id_col]
    if sorted(rest) == sorted(classes):
        return None
    if len(rest) != 1:
        raise KitError(f"{comp.root / comp.meta()['sample_submission']}: columns {rest} are neither "
                       f"one label column nor one column per class {classes}")
    return rest[0]


def build_submission(run: RunDir, comp: CompetitionDir) -> pd.DataFrame:
    """The submission for `run` on `comp`: sample_submission's columns, in its Id order.

    Label competitions get the argmax class NAME per Id (ties -> first class in sorted order);
    probability competitions get the run's probabilities in the sample's column order.
    Raises KitError when test.csv lacks some sample Ids or has Ids the sample does not know.
    """
    meta, classes = comp.meta(), comp.classes
    id_col, ids = meta["id_col"], comp.test_ids()
    test = run.read_test(classes)  # index Id (str), (n_test, n_classes) probabilities
    missing = [i for i in ids if i not in test.index]
    extra = sorted(set(test.index) - set(ids))
    if missing or extra:
        raise KitError(f"{run.test_path}: Ids differ from {meta['sample_submission']}: "
                       f"{len(missing)} missing (first {missing[:SHOW_ROWS]}), {len(extra)} extra "
                       f"(first {extra[:SHOW_ROWS]}); was the run trained on competition {comp.name}?")
    test = test.loc[ids]
    if test.isna().any().any():
        raise KitError(f"{run.test_path}: empty probabilities for {int(test.isna().any(axis=1).sum())} Ids")
    label_col = _label_col(comp)
    if label_col is None:
        cols = [c for c in comp.sample_submission().columns if c != id_col]
        return pd.concat([pd.Series(ids, name=id_col), test[cols].reset_index(drop=True)], axis=1)
    labels = np.asarray(classes)[test.to_numpy().argmax(axis=1)]
    out = pd.DataFrame({id_col: ids, label_col: labels})
    return out[list(comp.sample_submission().columns)]


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
    no empty cells; labels from the class list, or (when the sample has one column per class)
    numbers in [0, 1] whose rows sum to 1 (+-PROB_ATOL). The error counts the offending rows and
    shows the first few with their CSV line numbers (header = line 1).
    """
    sample, meta = comp.sample_submission(), comp.meta()
    id_col, classes = meta["id_col"], comp.classes
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
    extra = ~ids.isin(set(sample[id_col].astype(str)))
    if extra.any():
        raise _offending(df, extra, f"with an {id_col} not in sample_submission.csv", source)
    missing = sorted(set(sample[id_col].astype(str)) - set(ids))
    if missing:
        raise KitError(f"{source}: {len(missing)} {id_col}(s) of sample_submission.csv missing "
                       f"(first {missing[:SHOW_ROWS]}); the file needs one row per test image")
    label_col = _label_col(comp)
    if label_col is not None:
        bad = ~text[label_col].isin(set(classes))
        if bad.any():
            raise _offending(df, bad, f"with a {label_col} not in the class list "
                             f"{classes[:20]}", source)
        return
    probs = df[[c for c in df.columns if c != id_col]].apply(pd.to_numeric, errors="coerce")
    bad = probs.isna().any(axis=1) | ((probs < 0) | (probs > 1)).any(axis=1)
    bad |= (probs.sum(axis=1) - 1).abs() > PROB_ATOL
    if bad.any():
        raise _offending(df, bad, "that are not probabilities (numbers in [0, 1] "
                         "summing to 1 per row)", source)


def write_submission(df: pd.DataFrame, submissions_dir: Path, run_name: str) -> Path:
    """Write `submissions_dir/<UTC stamp>-<run_name>.csv` atomically (never overwrites); return it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(submissions_dir) / f"{stamp}-{run_name}.csv"
    n = 1
    while path.exists():  # two submissions of one run within a second
        path = Path(submissions_dir) / f"{stamp}-{run_name}-{n}.csv"
        n += 1
    return write_csv(path, df)
