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

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.workspace import CompetitionDir, RunDir, sha256_file, write_csv

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


# ----------------------------------------------------------------------------- kit submit


def submit(target: Path, *, message: str | None = None, dry_run: bool = False,
           competition: str | None = None, timeout: float = 300.0, data_dir: Path = Path("data"),
           runs_dir: Path = Path("runs"), submissions_dir: Path = Path("submissions"),
           poll_s: float = 2.0) -> str:
    """`kit submit`: validate `target` (a run folder -> its test.csv, or a submission CSV) against
    the competition's sample_submission, upload it with the official client, poll up to `timeout`
    seconds (first poll right away, then every `poll_s` growing x1.5) and report the public score.

    Every upload gets a ledger row (pending, then complete/error). Dry run: validate (and write
    submissions/<stamp>-<run>.csv for a run), upload nothing, no ledger row. Raises KitError for
    invalid files, Kaggle errors (kaggle_io) and Kaggle's scoring error (the row says `error`).
    """
    path, info = _prepare(Path(target), competition, Path(data_dir), Path(runs_dir),
                          Path(submissions_dir))
    comp = info["competition"]
    if dry_run:
        partial = (f"\nnote: {info['run']} is a partial run: {', '.join(info['partial'])} -- its "
                   "test predictions are a quick look's, not the recipe's") if info["partial"] else ""
        return f"dry run: {path} is a valid submission for {comp}; nothing uploaded{partial}"
    from kaggle_kit import kaggle_io

    msg = message or f"{info['run'] or path.stem} (cv {info['cv'] or '?'})"
    sub = kaggle_io.submit_file(comp, path, msg)
    _append_ledger(Path(submissions_dir), {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": comp,
        "file": str(path), "sha256": sha256_file(path), "run": info["run"],
        "method": info["method"], "cv": info["cv"], "message": msg, "submission_id": sub["id"],
        "status": "pending", "public_score": "", "error": ""})
    print(f"uploaded {path.name} as submission {sub['id']}; waiting up to {timeout:.0f} s "
          f"for Kaggle's score", flush=True)
    try:
        result = _poll(comp, sub["id"], timeout, poll_s)
    except KitError as e:
        return (f"submission {sub['id']} uploaded but its status is unknown ({e}); it stays "
                f"pending in the ledger: run `kit submissions --refresh` later")
    if result is None:
        return (f"submission {sub['id']} not scored after {timeout:.0f} s; it stays pending in "
                f"{_ledger_path(Path(submissions_dir))}: run `kit submissions --refresh` later")
    _update_ledger(Path(submissions_dir), {sub["id"]: result})
    if result["status"] == "error":
        raise KitError(f"{path}: Kaggle could not score submission {sub['id']}: {result['error']}")
    score = result["public_score"]
    return (f"submission {sub['id']} ({path.name}): public score "
            f"{'(none yet)' if score is None else f'{score:.5f}'} | CV {info['cv'] or '?'}")


def _prepare(target: Path, competition: str | None, data_dir: Path, runs_dir: Path,
             submissions_dir: Path) -> tuple[Path, dict]:
    """(validated file to upload, {"competition", "run", "method", "cv"}) for a run or a CSV."""
    if not target.exists() and (runs_dir / target).is_dir():
        target = runs_dir / target
    if target.is_dir():
        run = RunDir(target)
        info = _run_info(run, competition)
        comp = CompetitionDir.open(data_dir, info["competition"])
        df = build_submission(run, comp)
        validate_submission(df, comp, f"submission built from {run.test_path}")
        return _reuse_identical(write_submission(df, submissions_dir, run.name), run.name), info
    if not target.is_file():
        raise KitError(f"{target}: neither a run folder nor a submission CSV")
    stamped = re.match(r"\d{8}T\d{6}Z-(.+?)(-\d+)?\.csv$", target.name)
    run = RunDir(runs_dir / stamped.group(1)) if stamped else None
    if run is not None and run.summary_path.exists():
        info = _run_info(run, competition)
    else:
        info = {"competition": competition or _only_competition(data_dir, target),
                "run": "", "method": "csv", "cv": "", "partial": []}
    comp = CompetitionDir.open(data_dir, info["competition"])
    df = pd.read_csv(target, dtype=str, keep_default_na=False)
    validate_submission(df, comp, str(target))
    return target, info


def _reuse_identical(path: Path, run_name: str) -> Path:
    """An earlier `<stamp>-<run>.csv` with the same bytes instead of `path` (deleted), so retrying
    a failed upload does not pile up copies; else `path`."""
    digest = sha256_file(path)
    pattern = re.compile(rf"\d{{8}}T\d{{6}}Z-{re.escape(run_name)}(-\d+)?\.csv")
    for old in sorted(path.parent.glob(f"*-{run_name}*.csv")):
        if old != path and pattern.fullmatch(old.name) and sha256_file(old) == digest:
            path.unlink()
            return old
    return path


def _run_info(run: RunDir, competition: str | None) -> dict:
    summary = run.summary()
    comp = competition or summary.get("competition")
    if not comp:
        raise KitError(f"{run.summary_path}: no 'competition' key; pass --competition")
    cv = (summary.get("cv") or {}).get("accuracy")
    return {"competition": comp, "run": run.name, "cv": "" if cv is None else f"{cv:.5f}",
            "method": summary.get("method") or summary.get("kind") or "",
            "partial": summary.get("partial") or []}


def _only_competition(data_dir: Path, target: Path) -> str:
    comps = sorted(p.parent.name for p in data_dir.glob("*/competition.json"))
    if len(comps) != 1:
        raise KitError(f"{target}: which competition is it for? pass --competition "
                       f"(fetched in {data_dir}: {comps or 'none'})")
    return comps[0]


def _poll(competition: str, sub_id: str, timeout: float, poll_s: float) -> dict | None:
    """Kaggle's entry for `sub_id` once it is no longer pending, or None after `timeout` s."""
    from kaggle_kit import kaggle_io

    deadline, wait = time.monotonic() + timeout, poll_s
    while True:
        for s in kaggle_io.list_submissions(competition):
            if s["id"] == sub_id and s["status"] != "pending":
                return s
        if time.monotonic() + wait > deadline:
            return None
        time.sleep(wait)
        wait = min(wait * 1.5, 30.0)


# ----------------------------------------------------------------------------- ledger


def _ledger_path(submissions_dir: Path) -> Path:
    return Path(submissions_dir) / "ledger.csv"


def read_ledger(submissions_dir: Path) -> pd.DataFrame:
    """submissions/ledger.csv as str columns LEDGER_COLUMNS (empty frame if there is none)."""
    path = _ledger_path(submissions_dir)
    if not path.exists():
        return pd.DataFrame(columns=LEDGER_COLUMNS, dtype=str)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in LEDGER_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return df[LEDGER_COLUMNS]


def _append_ledger(submissions_dir: Path, row: dict) -> None:
    df = read_ledger(submissions_dir)
    new = pd.DataFrame([{c: "" if row.get(c) is None else str(row[c]) for c in LEDGER_COLUMNS}])
    write_csv(_ledger_path(submissions_dir), new if df.empty else pd.concat([df, new]))


def _update_ledger(submissions_dir: Path, results: dict[str, dict]) -> int:
    """Write Kaggle's final status/score/error into the pending rows found in `results`
    ({id: list_submissions item}); return how many rows changed."""
    df, changed = read_ledger(submissions_dir), 0
    for i, sub_id in df["submission_id"].items():
        s = results.get(sub_id)
        if s is None or s["status"] == "pending" or df.loc[i, "status"] != "pending":
            continue
        score = "" if s["public_score"] is None else f"{s['public_score']:.5f}"
        df.loc[i, ["status", "public_score", "error"]] = [s["status"], score, s["error"] or ""]
        changed += 1
    if changed:
        write_csv(_ledger_path(submissions_dir), df)
    return changed


def show_ledger(submissions_dir: Path, refresh: bool = False) -> str:
    """`kit submissions`: the ledger newest first, CV next to the public score (and their gap).

    refresh=True first asks Kaggle (kaggle_io.list_submissions) for every pending row's status.
    """
    df = read_ledger(submissions_dir)
    if df.empty:
        made = [p for p in Path(submissions_dir).glob("*.csv") if p.name != "ledger.csv"]
        dry = (f"; {len(made)} file(s) from dry runs in {submissions_dir}/ are not in it until "
               "uploaded: kit submit <file.csv>") if made else ""
        return f"no submissions yet ({_ledger_path(submissions_dir)} is empty or absent){dry}"
    note = ""
    if refresh:
        from kaggle_kit import kaggle_io

        pending = df.loc[df["status"] == "pending", "competition"].unique()
        results = {s["id"]: s for comp in pending for s in kaggle_io.list_submissions(comp)}
        note = f"\nrefreshed: {_update_ledger(submissions_dir, results)} of " \
               f"{int((df['status'] == 'pending').sum())} pending row(s) updated"
        df = read_ledger(submissions_dir)
    df = df.iloc[::-1].sort_values("time", ascending=False, kind="stable")  # ties: later row first
    cv, lb = pd.to_numeric(df["cv"], errors="coerce"), pd.to_numeric(df["public_score"], errors="coerce")
    table = pd.DataFrame({
        "time": df["time"].str.replace("+00:00", "Z"), "run": df["run"], "method": df["method"],
        "cv": df["cv"], "public": df["public_score"], "lb-cv": (lb - cv).map(
            lambda x: "" if pd.isna(x) else f"{x:+.4f}"),
        "status": df["status"], "id": df["submission_id"], "message": df["message"].str[:40],
        "error": df["error"].str[:60]})
    if not table["error"].str.len().any():
        table = table.drop(columns="error")
    return table.to_string(index=False) + note
