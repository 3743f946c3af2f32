"""Layout detection of an unpacked Kaggle competition folder (used by fetch.py).

`detect_layout` finds the sample submission, the train labels (a label CSV -- one label column,
one-hot columns or space-separated lists -- or, with no label CSV, one folder per class or the
label in the file name, or pixels in CSV columns), joins every train and test Id to its image file
(by name, with or without the extension, in a folder or its class subfolders; never by listing
order), and reads the task, metric and submission format (layout_target.py). It returns kit's
index of both splits: the rows fetch writes as `train_index.csv` / `test_index.csv`.
Errors raise KitError naming the file/line and the flag that settles an ambiguity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from kaggle_kit import KitError
from kaggle_kit.layout_find import (  # noqa: F401
    IMAGE_EXTS,
    JUNK,
    common_ext,
    has_ext,
    image_dirs,
    labels_from_files,
    orphans,
    pick_dir,
    resolve,
)
from kaggle_kit.layout_target import class_names, detect_target, read_labels

HINTS = ("id_col", "label_col", "train_dir", "test_dir", "group_col", "metric", "positive")


def detect_layout(src: Path, kit_root: Path, hints: dict) -> tuple[dict, pd.DataFrame,
                                                                    pd.DataFrame, list[str]]:
    """(competition.json layout keys, train index Id/label/path[/group], test index Id/path,
    warnings) for the shipped files in `src`. Pixel CSVs are written as PNGs under
    `kit_root/pixels/` (layout_pixels.py). `hints`: the fetch flags in HINTS (None = detect)."""
    hints = {k: hints.get(k) for k in HINTS}
    csvs = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.csv")
                  if not JUNK & set(p.relative_to(src).parts))
    sample = _pick_sample(src, csvs)
    sub = read_csv(src / sample)
    if hints["id_col"] and hints["id_col"] in sub.columns and sub.columns[0] != hints["id_col"]:
        raise KitError(f"{sample}: the Id column comes first; '{sub.columns[0]}' is")
    if len(sub) == 0:
        raise KitError(f"{sample}: no rows; refetch with --force (is this the right competition?)")
    from kaggle_kit.layout_pixels import detect_pixels, pixel_csvs

    if pixel_csvs(src, csvs):
        layout, train, test, warnings = detect_pixels(src, kit_root, csvs, sample, sub, hints)
    else:
        layout, train, test, warnings = _detect_files(src, csvs, sample, sub, hints)
    _check_ids(layout["labels_csv"] or layout["train_dir"], train["Id"])
    _check_ids(sample, test["Id"])
    _check_labels(layout, train)
    multilabel = layout.pop("multilabel")
    target = detect_target(sample, sub, train["label"], multilabel,
                           layout["labels_csv"] or layout["train_dir"], hints["metric"],
                           hints["positive"])
    skip = {sample, *(c for c in csvs if sub.columns[0] in read_csv(src / c, nrows=0).columns)}
    names, map_file = class_names(src, target["classes"], skip | {layout["labels_csv"]})
    layout.update(target, class_names=names, label_map=map_file, id_col=sub.columns[0],
                  sample_submission=sample, submission_columns=list(sub.columns),
                  hints={k: v for k, v in hints.items() if v is not None})
    return layout, train, test, warnings


def read_csv(path: Path, nrows: int | None = None) -> pd.DataFrame:
    """A CSV with every value as text (Ids like `007` keep their zeros), or a one-line error."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=nrows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: not a readable CSV ({e}); refetch with --force") from e


def _strip(df: pd.DataFrame) -> pd.DataFrame:
    """The label CSV without spaces around names and values: `1000.jpg ` or `cat ` (a hand-edited
    or spreadsheet-saved file) names the image `1000.jpg` and the class `cat`. The sample is not
    stripped: its Ids are sent back to Kaggle exactly as shipped."""
    df = df.rename(columns=lambda c: c.strip())
    return df.apply(lambda col: col.str.strip())


def _pick_sample(root: Path, csvs: list[str]) -> str:
    samples = [c for c in csvs if "sample" in Path(c).name.lower()]
    if len(samples) > 1:
        samples = [c for c in samples if Path(c).name.lower() == "sample_submission.csv"] or samples
    if len(samples) != 1:
        raise KitError(f"{root}: expected one sample_submission.csv (test Ids come from it), "
                       f"found {samples or 'none'} among CSVs {csvs}")
    return samples[0]


def _detect_files(src: Path, csvs: list[str], sample: str, sub: pd.DataFrame,
                  hints: dict) -> tuple[dict, pd.DataFrame, pd.DataFrame, list[str]]:
    """Image files on disk: labels from a label CSV, or from folders / file names."""
    dirs = image_dirs(src)
    if not dirs:
        raise KitError(f"{src}: no image files ({', '.join(sorted(IMAGE_EXTS))}) found")
    labels_csv = _pick_labels_csv(src, [c for c in csvs if c != sample], sub, hints)
    test = pd.DataFrame({"Id": sub[sub.columns[0]]})
    if labels_csv is None:
        test_dir = pick_dir("test", test["Id"].tolist(), dirs, hints["test_dir"], None)
        train_dir, train, kind = labels_from_files(dirs, test_dir, hints["train_dir"], sample)
        label_col, multilabel = None, False
        if hints["group_col"]:
            raise KitError(f"--group-col {hints['group_col']}: no label CSV holds it ({sample} "
                           "is the only CSV)")
    else:
        df = _strip(read_csv(src / labels_csv))
        if len(df) == 0:
            raise KitError(f"{labels_csv}: no rows; refetch with --force (is this the right "
                           "competition?)")
        id_col = _pick_id_col(labels_csv, df, sub, hints["id_col"])
        labels, label_col, multilabel = read_labels(labels_csv, df, sub, id_col,
                                                    hints["label_col"], hints["group_col"])
        train = pd.DataFrame({"Id": df[id_col], "label": labels})
        if hints["group_col"]:
            train["group"] = _group(labels_csv, df, hints["group_col"])
        train_dir = pick_dir("train", train["Id"].tolist(), dirs, hints["train_dir"], None)
        train["path"] = resolve(labels_csv, train["Id"], dirs, train_dir)
        test_dir = pick_dir("test", test["Id"].tolist(), dirs, hints["test_dir"], train_dir)
        kind = "one_hot" if multilabel and "," in label_col else "label_csv"
    test["path"] = resolve(sample, test["Id"], dirs, test_dir)
    warnings = _orphans(dirs, train, test, train_dir, test_dir, labels_csv or train_dir, sample)
    layout = {"layout": kind, "labels_csv": labels_csv, "label_col": label_col,
              "train_id_col": None if labels_csv is None else id_col,
              "group_col": hints["group_col"], "train_dir": train_dir, "test_dir": test_dir,
              "ext": "" if has_ext(train["Id"].tolist()) else common_ext(
                  {p: [p] for p in train["path"]}),
              "image_root": "source", "multilabel": multilabel}
    return layout, train, test, warnings


def _pick_labels_csv(root: Path, csvs: list[str], sub: pd.DataFrame, hints: dict) -> str | None:
    """The CSV with the training labels; None when there is none (folder / file-name labels).
    Prefers CSVs holding the sample's Id column, then the sample's target columns, then ones
    named like train/label."""
    cols = {c: set(read_csv(root / c, nrows=0).columns) for c in csvs}
    cands = [c for c in csvs if len(cols[c]) > 1]
    want = {c for c in (hints["id_col"], hints["label_col"]) if c}
    named = lambda cs: [c for c in cs if re.search(r"train|label", Path(c).name.lower())]  # noqa
    if want:
        cands = [c for c in cands if want <= cols[c]]
    else:
        cands = [c for c in cands if sub.columns[0] in cols[c]] or named(cands)
        if not cands:
            return None
    if len(cands) > 1:  # the one holding the sample's target columns (ranzcr: train.csv, not
        targets = set(sub.columns[1:])  # train_annotations.csv with the same Id column)
        cands = [c for c in cands if targets <= cols[c]] or cands
    if len(cands) > 1:
        cands = named(cands) or cands
    if len(cands) != 1:
        raise KitError(f"{root}: cannot tell which CSV holds the training labels ({cands or csvs}); "
                       "pass --id-col and --label-col naming columns only that CSV has")
    return cands[0]


def _pick_id_col(labels_csv: str, df: pd.DataFrame, sub: pd.DataFrame, hint: str | None) -> str:
    if hint is not None:
        if hint not in df.columns:
            raise KitError(f"{labels_csv}: no column '{hint}'; pass --id-col (one of "
                           f"{list(df.columns)})")
        return hint
    if sub.columns[0] in df.columns:
        return sub.columns[0]
    named = [c for c in df.columns if re.fullmatch(r"(image_?)?id|image|file_?name|file|img",
                                                   c.lower())]
    if len(named) != 1:
        raise KitError(f"{labels_csv}: cannot tell the Id column; pass --id-col "
                       f"(one of {list(df.columns)})")
    return named[0]


def _group(labels_csv: str, df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        raise KitError(f"--group-col {col}: no such column in {labels_csv} (one of "
                       f"{list(df.columns)})")
    empty = df.index[df[col].str.strip() == ""]
    if len(empty):
        raise KitError(f"{labels_csv} line {empty[0] + 2}: empty {col} (the --group-col); fill "
                       "it in or remove the row")
    return df[col]


def _orphans(dirs, train, test, train_dir, test_dir, train_csv, sample) -> list[str]:
    if train_dir == test_dir:  # one shared folder: its images are train or test
        return orphans(dirs, train_dir, set(train["path"]) | set(test["path"]),
                       f"{train_csv} or {sample}")
    return (orphans(dirs, train_dir, set(train["path"]), train_csv)
            + orphans(dirs, test_dir, set(test["path"]), sample))


# ----------------------------------------------------------------------------- validation


def _check_ids(csv: str, ids: pd.Series) -> None:
    blank = ids.index[ids.str.strip() == ""]
    if len(blank):
        raise KitError(f"{csv} line {blank[0] + 2}: empty Id; fill it in or remove the row")
    dup = ids.index[ids.duplicated()]
    if len(dup):
        i = dup[0]
        first = ids.index[ids == ids[i]][0]
        raise KitError(f"{csv} line {i + 2}: Id {ids[i]} appears again (first on line {first + 2}, "
                       f"{len(dup)} duplicate rows); remove the duplicate row")


def _check_labels(layout: dict, train: pd.DataFrame) -> None:
    empty = train.index[train["label"].str.strip() == ""]
    if len(empty):
        i = empty[0]
        col = layout["label_col"] or "label"
        raise KitError(f"{layout['labels_csv']} line {i + 2}: Id {train['Id'][i]} has an empty "
                       f"{col} ({len(empty)} rows); fill it in or remove the row")


def decode_all(paths: Iterable[str | Path]) -> None:
    """Decode every image once (and drop it): finds truncated files when no cache is built."""
    from kaggle_kit.decode import decode_image

    for path in paths:
        decode_image(path)


def image_sizes(paths: Iterable[str | Path]) -> dict[str, int]:
    """Size histogram {"HxW": n} of the images at `paths`, most common first (headers only)."""
    hist: dict[str, int] = {}
    for path in paths:
        try:  # reads the header only: truncation is caught when decoding
            with Image.open(path) as im:
                key = f"{im.size[1]}x{im.size[0]}"
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise KitError(f"{path}: unreadable image ({e}); refetch with `kit fetch --force` "
                           "or remove its row") from e
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]))
