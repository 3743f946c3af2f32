"""Layout detection and validation of an unpacked Kaggle competition folder (used by fetch.py).

`detect_layout` finds the label CSV, id/label columns, sample submission, train/test image folders
and the extension; `validate` checks the CSVs against the image folders; `image_sizes` reads the
size histogram from image headers. Errors raise KitError naming the file/line and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image, UnidentifiedImageError

from kaggle_kit import KitError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
JUNK = {"__MACOSX", ".DS_Store", "Thumbs.db"}


# ----------------------------------------------------------------------------- layout


def detect_layout(root: Path, id_col: str | None = None, label_col: str | None = None,
                  train_dir: str | None = None, test_dir: str | None = None) -> dict:
    """Find label CSV, id/label columns, sample submission, train/test image folders and the
    extension, joining CSV Ids to file names. Returns the layout keys of competition.json.
    Ambiguity raises KitError naming the option (--id-col/--label-col/--train-dir/--test-dir)."""
    csvs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.csv"))
    sample = _pick_sample(root, csvs)
    sub = _read_csv(root / sample)
    labels_csv = _pick_labels_csv(root, [c for c in csvs if c != sample], id_col, label_col)
    df = _read_csv(root / labels_csv)
    for csv, n in ((labels_csv, len(df)), (sample, len(sub))):
        if n == 0:
            raise KitError(f"{csv}: no rows; refetch with --force (is this the right competition?)")
    id_col = id_col or _pick_id_col(labels_csv, df, sub)
    label_col = label_col or _pick_label_col(labels_csv, df, sub, id_col)
    for col, opt in ((id_col, "--id-col"), (label_col, "--label-col")):
        if col not in df.columns:
            raise KitError(f"{labels_csv}: no column '{col}'; pass {opt} (one of {list(df.columns)})")
    dirs = _image_dirs(root)
    if not dirs:
        raise KitError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTS))}) found")
    train_ids = df[id_col].tolist()
    test_ids = sub[sub.columns[0]].tolist() if id_col not in sub.columns else sub[id_col].tolist()
    with_ext = all(Path(i).suffix.lower() in IMAGE_EXTS for i in train_ids[:100])
    train_dir = _pick_dir("train", train_ids, dirs, train_dir, with_ext, None)
    test_dir = _pick_dir("test", test_ids, dirs, test_dir, with_ext, train_dir)
    ext = "" if with_ext else _common_ext(dirs[train_dir], set(train_ids))
    return {"id_col": id_col, "label_col": label_col, "labels_csv": labels_csv,
            "train_dir": train_dir, "test_dir": test_dir, "ext": ext,
            "sample_submission": sample, "submission_columns": list(sub.columns)}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: not a readable CSV ({e}); refetch with --force") from e


def _pick_sample(root: Path, csvs: list[str]) -> str:
    samples = [c for c in csvs if "sample" in Path(c).name.lower()]
    if len(samples) > 1:
        samples = [c for c in samples if Path(c).name.lower() == "sample_submission.csv"] or samples
    if len(samples) != 1:
        raise KitError(f"{root}: expected one sample_submission.csv (test Ids come from it), "
                       f"found {samples or 'none'} among CSVs {csvs}")
    return samples[0]


def _pick_labels_csv(root: Path, csvs: list[str], id_col: str | None, label_col: str | None) -> str:
    cands = csvs
    if id_col or label_col:
        want = {c for c in (id_col, label_col) if c}
        cands = [c for c in csvs if want <= set(_read_csv(root / c).columns)]
    if len(cands) > 1:
        cands = [c for c in cands if re.search(r"train|label", Path(c).name.lower())] or cands
    if len(cands) != 1:
        raise KitError(f"{root}: cannot tell which CSV holds the training labels ({cands or csvs}); "
                       "pass --id-col and --label-col naming columns only that CSV has")
    return cands[0]


def _pick_id_col(labels_csv: str, df: pd.DataFrame, sub: pd.DataFrame) -> str:
    if sub.columns[0] in df.columns:
        return sub.columns[0]
    named = [c for c in df.columns if re.fullmatch(r"(image_?)?id|image|file_?name|file", c.lower())]
    if len(named) != 1:
        raise KitError(f"{labels_csv}: cannot tell the Id column; pass --id-col "
                       f"(one of {list(df.columns)})")
    return named[0]


def _pick_label_col(labels_csv: str, df: pd.DataFrame, sub: pd.DataFrame, id_col: str) -> str:
    if len(sub.columns) == 2 and sub.columns[1] in df.columns and sub.columns[1] != id_col:
        return sub.columns[1]
    rest = [c for c in df.columns if c != id_col]
    if len(rest) != 1:
        raise KitError(f"{labels_csv}: cannot tell the label column; pass --label-col "
                       f"(one of {rest})")
    return rest[0]


def _image_dirs(root: Path) -> dict[str, list[str]]:
    """{folder relative to root ('.' for root): image file names in it}."""
    out = {}
    for d, _, names in os.walk(root):
        imgs = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTS]
        rel = Path(d).relative_to(root).as_posix()
        if imgs and not JUNK & set(Path(rel).parts):
            out[rel] = imgs
    return out


def _pick_dir(role: str, ids: list[str], dirs: dict[str, list[str]], hint: str | None,
              with_ext: bool, exclude: str | None) -> str:
    """The folder whose file names cover `ids` best, preferring one named like `role`."""
    if hint is not None:
        hint = PurePosixPath(hint).as_posix()
        if hint not in dirs:
            raise KitError(f"--{role}-dir {hint}: no images there; folders with images: "
                           f"{sorted(dirs)}")
        return hint
    want = set(ids)
    cover = {d: len(want & {n if with_ext else Path(n).stem for n in names}) / max(len(want), 1)
             for d, names in dirs.items()}
    cands = [d for d, c in cover.items() if c > 0 and (d != exclude or len(dirs) == 1)]
    named = [d for d in cands if role in d.lower()]
    cands = named or cands
    best = max((cover[d] for d in cands), default=0)
    top = [d for d in cands if cover[d] == best]
    if len(top) != 1:
        raise KitError(f"cannot tell the {role} image folder (candidates: "
                       f"{ {d: round(cover[d], 3) for d in top} or sorted(dirs)} = share of "
                       f"{role} Ids found); pass --{role}-dir")
    return top[0]


def _common_ext(names: list[str], ids: set[str]) -> str:
    exts = pd.Series([Path(n).suffix for n in names if Path(n).stem in ids])
    return str(exts.mode().iloc[0]) if len(exts) else Path(names[0]).suffix


# ----------------------------------------------------------------------------- validation


def validate(root: Path, layout: dict, n_folds: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Check the label CSV and sample submission against the image folders.
    Returns (labels Id/label in CSV order, test Ids, warnings); errors raise KitError."""
    lcsv, sample = layout["labels_csv"], layout["sample_submission"]
    df = _read_csv(root / lcsv)
    labels = df[[layout["id_col"], layout["label_col"]]].set_axis(["Id", "label"], axis=1)
    sub = _read_csv(root / sample)
    test_ids = sub[layout["id_col"] if layout["id_col"] in sub.columns else sub.columns[0]]
    _check_ids(lcsv, labels["Id"])
    _check_ids(sample, test_ids)
    empty = labels.index[labels["label"].str.strip() == ""]
    if len(empty):
        i = empty[0]
        raise KitError(f"{lcsv} line {i + 2}: Id {labels['Id'][i]} has an empty "
                       f"{layout['label_col']} ({len(empty)} rows); fill it in or remove the row")
    _check_files(root, layout, lcsv, labels["Id"], "train")
    _check_files(root, layout, sample, test_ids, "test")
    counts = labels["label"].value_counts()
    if counts.min() < n_folds:
        raise KitError(f"{lcsv}: class '{counts.idxmin()}' has {counts.min()} images, fewer than "
                       f"--folds {n_folds}; pass --folds {max(2, counts.min())} or add images")
    return labels, test_ids.tolist(), _orphans(root, layout, labels["Id"], test_ids)


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


def _check_files(root: Path, layout: dict, csv: str, ids: pd.Series, split: str) -> None:
    folder, ext = layout[f"{split}_dir"], layout["ext"]
    present = set(os.listdir(root / folder))
    missing = ids.index[~(ids + ext).isin(present)]
    if len(missing):
        i = missing[0]
        raise KitError(f"{csv} line {i + 2}: no image {folder}/{ids[i]}{ext} for Id {ids[i]} "
                       f"({len(missing)} missing); restore it (kit fetch --force) or remove the row")


def _orphans(root: Path, layout: dict, train_ids: pd.Series, test_ids: pd.Series) -> list[str]:
    """Warnings for images that no CSV row names (they are ignored)."""
    warnings, ext = [], layout["ext"]
    splits = [("train", train_ids), ("test", test_ids)]
    if layout["train_dir"] == layout["test_dir"]:  # one folder: its images are train or test
        splits = [("train", pd.concat([train_ids, test_ids]))]
    for split, ids in splits:
        folder = layout[f"{split}_dir"]
        known = set(ids + ext)
        extra = sorted(n for n in os.listdir(root / folder)
                       if Path(n).suffix.lower() in IMAGE_EXTS and n not in known)
        if extra:
            csv = layout["labels_csv"] if split == "train" else layout["sample_submission"]
            warnings.append(f"{folder}/{extra[0]}: image with no row in {csv} ({len(extra)} such "
                            "images); ignored: add rows for them to use them")
    return warnings


def decode_all(root: Path, layout: dict, train_ids: list[str], test_ids: list[str]) -> None:
    """Decode every image once (and drop it): finds truncated files when no cache is built."""
    from kaggle_kit.decode import decode_image

    for split, ids in (("train", train_ids), ("test", test_ids)):
        for i in ids:
            decode_image(root / layout[f"{split}_dir"] / f"{i}{layout['ext']}")


def image_sizes(root: Path, layout: dict, train_ids: list[str],
                test_ids: list[str]) -> dict[str, int]:
    """Size histogram {"HxW": n} of all train + test images, most common first (headers only)."""
    hist: dict[str, int] = {}
    paths = [root / layout["train_dir"] / f"{i}{layout['ext']}" for i in train_ids]
    paths += [root / layout["test_dir"] / f"{i}{layout['ext']}" for i in test_ids]
    for path in paths:
        try:  # reads the header only: truncation is caught when decoding
            with Image.open(path) as im:
                key = f"{im.size[1]}x{im.size[0]}"
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise KitError(f"{path}: unreadable image ({e}); refetch with `kit fetch --force` "
                           "or remove its row") from e
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]))
