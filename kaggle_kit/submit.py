"""Build, validate, write and submit a Kaggle submission; keep the CV-to-leaderboard ledger.

- `submission_spec(comp)`: the format (competition.json "submission": id column, columns, kind
  label | labels | prob | prob_positive, positive class, k).
- `build_submission(run, comp)`: a run's test.csv -> sample_submission's columns and Id order,
  values by kind (argmax class value, top-k / multilabel set, probabilities clipped for log loss).
- `validate_submission(df, comp, source)`: same columns/order, exactly the same Ids, values of the
  kind (class values, k distinct values, probabilities), no empty cells. Raises KitError.
- `write_submission(df, submissions_dir, run_name)`: `submissions/<UTC stamp>-<run>.csv`, atomic.
- `submit(...)`: `kit submit`: build/validate/write, upload (kaggle_io), poll, ledger.
- `show_ledger(...)`: `kit submissions`: newest first, CV next to the public score.

`submissions/ledger.csv` (kaggle_kit/ledger.py, append-only) columns: time (UTC ISO), competition, file, sha256, run,
method, cv, message, submission_id, status (pending|complete|error), public_score, error, metric
(the competition metric `cv` is measured in; empty in rows written before it existed).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, honest, metrics
from kaggle_kit.ledger import LEDGER_COLUMNS, append_row, ledger_path, read_ledger, record_results  # noqa: F401, E501 - LEDGER_COLUMNS re-exported
from kaggle_kit.workspace import CompetitionDir, RunDir, disk_full, sha256_file, write_csv

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
    try:
        return _submit(Path(target), message, dry_run, competition, timeout, Path(data_dir),
                       Path(runs_dir), Path(submissions_dir), poll_s)
    except OSError as e:
        err = disk_full(e, submissions_dir, "writing the submission")
        if err is None:
            raise
        raise err from None


def _submit(target: Path, message: str | None, dry_run: bool, competition: str | None,
            timeout: float, data_dir: Path, runs_dir: Path, submissions_dir: Path,
            poll_s: float) -> str:
    read_ledger(submissions_dir)  # a ledger kit cannot parse: refused before any work or upload
    path, info = _prepare(target, competition, data_dir, runs_dir, submissions_dir)
    comp = info["competition"]
    if dry_run:
        partial = (f"\nnote: {info['run']} is a partial run: {', '.join(info['partial'])} -- its "
                   "test predictions are a quick look's, not the recipe's") if info["partial"] else ""
        return (f"dry run: {path} is a valid submission for {comp}; nothing uploaded\n  "
                f"{info['scores']}{partial}")
    from kaggle_kit import kaggle_io

    msg = message or (f"{info['run'] or path.stem} (cv {info['metric']} {info['cv'] or '?'}"
                      + (f", holdout {info['estimate']}" if info["estimate"] else "") + ")")
    kaggle_io.check_credentials()  # every check before the upload: it counts against the limit
    row = {"competition": comp, "file": str(path), "sha256": sha256_file(path), "run": info["run"],
           "method": info["method"], "cv": info["cv"], "metric": info["metric"], "message": msg,
           "cv_is": info["cv_is"], "estimate": info["estimate"], "estimate_is": info["estimate_is"],
           "status": "pending", "public_score": "", "error": ""}
    sub = kaggle_io.submit_file(comp, path, msg)
    row.update(time=datetime.now(timezone.utc).isoformat(timespec="seconds"), submission_id=sub["id"])
    try:
        append_row(submissions_dir, row)
    except (OSError, KitError) as e:  # uploaded: say so, with the id, whatever the ledger did
        raise KitError(f"submission {sub['id']} ({path.name}) was uploaded, but "
                       f"{ledger_path(submissions_dir)} could not be written ({e}); note the id, "
                       "fix the ledger, then `kit submissions --refresh`") from None
    print(f"uploaded {path.name} as submission {sub['id']}; waiting up to {timeout:.0f} s "
          f"for Kaggle's score", flush=True)
    try:
        result = _poll(comp, sub["id"], timeout, poll_s)
    except KitError as e:
        return (f"submission {sub['id']} uploaded but its status is unknown ({e}); it stays "
                f"pending in the ledger: run `kit submissions --refresh` later")
    if result is None:
        return (f"submission {sub['id']} not scored after {timeout:.0f} s; it stays pending in "
                f"{ledger_path(submissions_dir)}: run `kit submissions --refresh` later")
    record_results(submissions_dir, {sub["id"]: result})
    if result["status"] == "error":
        raise KitError(f"{path}: Kaggle could not score submission {sub['id']}: {result['error']}")
    score = result["public_score"]
    return (f"submission {sub['id']} ({path.name}): public score "
            f"{'(none yet)' if score is None else f'{score:.5f}'} | {info['scores']}")


def _prepare(target: Path, competition: str | None, data_dir: Path, runs_dir: Path,
             submissions_dir: Path) -> tuple[Path, dict]:
    """(validated file to upload, {"competition", "run", "method", "cv"}) for a run or a CSV."""
    if not target.exists() and (runs_dir / target).is_dir():
        target = runs_dir / target
    if target.is_dir():
        run = RunDir(target)
        info = _run_info(run, competition, runs_dir)
        comp = CompetitionDir.open(data_dir, info["competition"])
        df = build_submission(run, comp)
        validate_submission(df, comp, f"submission built from {run.test_path}")
        return _reuse_identical(write_submission(df, submissions_dir, run.name), run.name), info
    if not target.is_file():
        raise KitError(f"{target}: neither a run folder nor a submission CSV")
    stamped = re.match(r"\d{8}T\d{6}Z-(.+?)(-\d+)?\.csv$", target.name)
    run = RunDir(runs_dir / stamped.group(1)) if stamped else None
    if run is not None and run.summary_path.exists():
        info = _run_info(run, competition, runs_dir)
    else:
        info = {"competition": competition or _only_competition(data_dir, target),
                "run": "", "method": "csv", "cv": "", "metric": "", "partial": [], "cv_is": "",
                "estimate": "", "estimate_is": "",
                "scores": "no CV: a CSV kit cannot trace to a run (no score estimate)"}
    comp = CompetitionDir.open(data_dir, info["competition"])
    validate_submission(read_submission_csv(target), comp, str(target))
    return target, info


def read_submission_csv(path: Path) -> pd.DataFrame:
    """A submission CSV as str cells; a one-line KitError for an empty, binary or zip file."""
    import zipfile

    if path.stat().st_size == 0:
        raise KitError(f"{path}: empty file (0 bytes); give the CSV kit blend / kit submit wrote")
    if zipfile.is_zipfile(path):
        raise KitError(f"{path}: a zip archive, not a CSV; unzip it and give the CSV, so kit can "
                       "check it against sample_submission.csv before uploading")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\0" in head:
        raise KitError(f"{path}: binary content (NUL bytes), not a CSV text file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise KitError(f"{path}: not a readable CSV ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:120]})") from None


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


def _run_info(run: RunDir, competition: str | None, runs_dir: Path) -> dict:
    """What the ledger and the output say about a run: its CV, what that CV is (cv_is, the
    short label of honest.py) and the held-out estimate of the same recipe (kit estimate), if any."""
    summary = run.summary()
    comp = competition or summary.get("competition")
    if not comp:
        raise KitError(f"{run.summary_path}: no 'competition' key; pass --competition")
    metric, cv = metrics.cv_score(summary)
    estimates = honest.find_estimates(run.root, runs_dir)
    est = honest.estimate_value(estimates, metric)
    return {"competition": comp, "run": run.name, "cv": "" if cv is None else f"{cv:.5f}",
            "metric": metric, "method": summary.get("method") or summary.get("kind") or "",
            "partial": summary.get("partial") or [],
            "cv_is": honest.cv_label(summary, est is not None),
            "estimate": "" if est is None else f"{est:.5f}",
            "estimate_is": honest.estimate_label(estimates, metric),
            "scores": honest.score_line(summary, estimates)}


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


def show_ledger(submissions_dir: Path, refresh: bool = False) -> str:
    """`kit submissions`: the ledger newest first, CV next to the public score (and their gap).

    refresh=True first asks Kaggle (kaggle_io.list_submissions) for every pending row's status.
    """
    df = read_ledger(submissions_dir)
    if df.empty:
        made = [p for p in Path(submissions_dir).glob("*.csv") if p.name != "ledger.csv"]
        dry = (f"; {len(made)} file(s) from dry runs in {submissions_dir}/ are not in it until "
               "uploaded: kit submit <file.csv>") if made else ""
        return f"no submissions yet ({ledger_path(submissions_dir)} is empty or absent){dry}"
    note = ""
    if refresh:
        from kaggle_kit import kaggle_io

        pending = df.loc[df["status"] == "pending", "competition"].unique()
        results = {s["id"]: s for comp in pending for s in kaggle_io.list_submissions(comp)}
        note = f"\nrefreshed: {record_results(submissions_dir, results)} of " \
               f"{int((df['status'] == 'pending').sum())} pending row(s) updated"
        df = read_ledger(submissions_dir)
    df = df.iloc[::-1].sort_values("time", ascending=False, kind="stable")  # ties: later row first
    num = lambda c: pd.to_numeric(df[c], errors="coerce")  # noqa: E731
    gap = lambda d: d.map(lambda x: "" if pd.isna(x) else f"{x:+.4f}")  # noqa: E731
    cv, lb, ho = num("cv"), num("public_score"), num("estimate")
    table = pd.DataFrame({
        "time": df["time"].str.replace("+00:00", "Z"), "run": df["run"], "method": df["method"],
        "metric": df["metric"].replace("", "?"), "cv": df["cv"], "holdout": df["estimate"],
        "public": df["public_score"], "lb-cv": gap(lb - cv), "lb-holdout": gap(lb - ho),
        "status": df["status"], "id": df["submission_id"], "message": df["message"].str[:40],
        "error": df["error"].str[:60],
        # what the cv column is a score of; rows from before kit recorded it say so
        "cv is": df["cv_is"].where((df["cv_is"] != "") | (df["cv"] == ""), "(not recorded)")})
    if not table["error"].str.len().any():
        table = table.drop(columns="error")
    return table.to_string(index=False) + note + _estimate_notes(df)


def _estimate_notes(df: pd.DataFrame) -> str:
    """Below the table: each shown run's holdout estimate and how it was obtained (newest first)."""
    seen = df.loc[df["estimate_is"] != "", ["run", "estimate_is"]].drop_duplicates()
    return "".join(f"\n{r.run}: {r.estimate_is}" for r in seen.itertuples())
