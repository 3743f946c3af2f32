"""`submissions/ledger.csv`: the append-only history of every upload (read and written only here).

Columns (LEDGER_COLUMNS): time (UTC ISO), competition, file, sha256, run, method, cv, message,
submission_id, status (pending|complete|error), public_score, error, metric, cv_is (what the
CV is a score of: honest.py's short label), estimate (the held-out score of the same recipe's
test.csv from `kit estimate`, empty when there is none), estimate_is (how it was obtained).
A ledger started before a column existed keeps its own header: its rows lack that column (read
as "") -- the file is never rewritten to add it.

The file is history a user cannot get back, so kit never rewrites it whole: an upload appends one
row, and Kaggle's later verdict appends another row with the same submission_id (the last row of
an id is its current state; `read_ledger` shows one row per id). A ledger kit cannot parse (e.g.
re-saved by a spreadsheet with ';' separators) is refused with a one-line error, never "repaired".
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from kaggle_kit import KitError

LEDGER_COLUMNS = ["time", "competition", "file", "sha256", "run", "method", "cv", "message",
                  "submission_id", "status", "public_score", "error", "metric", "cv_is", "estimate",
                  "estimate_is"]
REQUIRED = ("time", "competition", "file", "submission_id", "status")  # in every kit ledger


def ledger_path(submissions_dir: Path) -> Path:
    return Path(submissions_dir) / "ledger.csv"


def _unreadable(path: Path, why: str) -> KitError:
    return KitError(f"{path}: {why}; kit cannot read this ledger and will not change it: restore "
                    "it (comma-separated, header time,competition,file,...) or move it away")


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ledger file, each row as long as the header; KitError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _unreadable(path, "not a UTF-8 text file") from None
    if "\0" in text:
        raise _unreadable(path, "binary content (NUL bytes)")
    try:
        lines = [r for r in csv.reader(io.StringIO(text)) if r]
    except csv.Error as e:
        raise _unreadable(path, f"not valid CSV ({e})") from None
    if not lines:
        return list(LEDGER_COLUMNS), []
    header, rows = lines[0], lines[1:]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise _unreadable(path, f"header lacks columns {missing} (got {header[:3]}...)")
    for n, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise _unreadable(path, f"row {n} has {len(row)} fields, the header {len(header)}")
    return header, rows


def read_ledger(submissions_dir: Path, history: bool = False) -> pd.DataFrame:
    """The ledger as str columns LEDGER_COLUMNS, one row per submission (its latest state) in
    upload order; `history=True`: every appended row. Empty frame if there is no ledger."""
    path = ledger_path(submissions_dir)
    if not path.exists():
        return pd.DataFrame(columns=LEDGER_COLUMNS, dtype=str)
    header, rows = _rows(path)
    df = pd.DataFrame(rows, columns=header, dtype=str)
    for col in LEDGER_COLUMNS:  # older ledgers lack later columns (e.g. metric)
        if col not in df.columns:
            df[col] = ""
    df = df[LEDGER_COLUMNS]
    if history:
        return df
    ids = df["submission_id"]
    key = ids.where(ids != "", "#row" + df.index.astype(str))  # a row without an id stays a row
    latest = df.assign(_key=key).drop_duplicates("_key", keep="last").set_index("_key")
    return latest.loc[key.drop_duplicates()].reset_index(drop=True)  # at each id's first position


def append_row(submissions_dir: Path, row: dict) -> None:
    """Append one row (in the file's own column order) with a single write; the file is created
    with the LEDGER_COLUMNS header if absent. Refuses (KitError) a ledger it cannot parse."""
    path = ledger_path(submissions_dir)
    header = _rows(path)[0] if path.exists() else None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header is None:
        writer.writerow(LEDGER_COLUMNS)
    writer.writerow(["" if row.get(c) is None else str(row[c]) for c in header or LEDGER_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():  # a file a user saved without a final newline: start a new line
            f.seek(-1, os.SEEK_END)
            if f.read(1) not in (b"\n", b"\r"):
                f.write(b"\n")
        f.write(out.getvalue().encode())
        f.flush()
        os.fsync(f.fileno())


def record_results(submissions_dir: Path, results: dict[str, dict]) -> int:
    """Append Kaggle's final status/score/error for each pending submission found in `results`
    ({id: kaggle_io.list_submissions item}); return how many submissions changed."""
    changed = 0
    for _, row in read_ledger(submissions_dir).iterrows():
        s = results.get(row["submission_id"])
        if s is None or s["status"] == "pending" or row["status"] != "pending":
            continue
        score = "" if s["public_score"] is None else f"{s['public_score']:.5f}"
        append_row(submissions_dir, {**row.to_dict(), "status": s["status"],
                                     "public_score": score, "error": s["error"] or ""})
        changed += 1
    return changed
