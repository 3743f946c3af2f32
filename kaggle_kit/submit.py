"""`kit submit` and `kit submissions`: upload a validated submission, keep the CV-to-leaderboard
ledger. The file itself (format, build, validate, write) is submission.py's.

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

import pandas as pd

from kaggle_kit import KitError, honest, metrics
from kaggle_kit.ledger import LEDGER_COLUMNS, append_row, ledger_path, read_ledger, record_results  # noqa: F401, E501 - LEDGER_COLUMNS re-exported
from kaggle_kit.rundir import RunDir
from kaggle_kit.submission import build_submission, validate_submission, write_submission
from kaggle_kit.workspace import CompetitionDir, disk_full, sha256_file

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
            "estimate_is": "; ".join(filter(None, [honest.estimate_label(estimates, metric),
                                                   honest.scaled_label(summary, estimates, metric)])),
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
        "error": df["error"].str[:60]})
    if not table["error"].str.len().any():
        table = table.drop(columns="error")
    return table.to_string(index=False) + note + _run_notes(df)


def _run_notes(df: pd.DataFrame) -> str:
    """Below the table (a sentence each would make it too wide to read): what each shown run's cv
    is a score of (rows from before kit recorded it say so), and its holdout estimate."""
    cv_is = df["cv_is"].where((df["cv_is"] != "") | (df["cv"] == ""), "(not recorded)")
    lines = [f"{run}: cv is {what}" for run, what in zip(df["run"], cv_is, strict=True) if what]
    lines += [f"{r.run}: {r.estimate_is}" for r in df.itertuples() if r.estimate_is]
    return "".join(f"\n{line}" for line in dict.fromkeys(lines))  # once each, newest first
