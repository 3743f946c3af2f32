"""Pixels in CSV columns, no image files (digit-recognizer: train.csv `label,pixel0..pixel783`,
test.csv `pixel0..pixel783`, sample `ImageId,Label` with ImageId 1..N = test.csv row order).

The pixels are written once as lossless grayscale PNGs under kit's own folder
(`data/<comp>/pixels/{train,test}/<Id>.png`), so the cache, training and prediction read them like
any other competition's images. Train Ids are the label CSV's row numbers (0-based, as text).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kaggle_kit import KitError

PIXEL_COL = re.compile(r"pixel_?\d+", re.IGNORECASE)


def pixel_csvs(src: Path, csvs: list[str]) -> list[str]:
    """The CSVs whose columns are mostly `pixel<n>` (at least 4 of them)."""
    from kaggle_kit.layout import read_csv

    out = []
    for c in csvs:
        cols = list(read_csv(src / c, nrows=0).columns)
        if sum(bool(PIXEL_COL.fullmatch(x)) for x in cols) >= 4:
            out.append(c)
    return out


def detect_pixels(src: Path, kit_root: Path, csvs: list[str], sample: str, sub: pd.DataFrame,
                  hints: dict) -> tuple[dict, pd.DataFrame, pd.DataFrame, list[str]]:
    """Layout keys, train index, test index and warnings of a pixel-CSV competition; writes the
    PNGs under `kit_root/pixels/`."""
    from kaggle_kit.layout import read_csv

    found = pixel_csvs(src, csvs)
    tables = {c: read_csv(src / c) for c in found}
    extra = {c: [x for x in t.columns if not PIXEL_COL.fullmatch(x)] for c, t in tables.items()}
    train_csvs = [c for c in found if extra[c]]
    test_csvs = [c for c in found if not extra[c]]
    if len(train_csvs) != 1 or len(test_csvs) != 1:
        raise KitError(f"{src}: pixel CSVs {found}: expected one with a label column (train) and "
                       "one with pixels only (test)")
    (train_csv,), (test_csv,) = train_csvs, test_csvs
    df, tdf = tables[train_csv], tables[test_csv]
    label_col = hints["label_col"] or _one(train_csv, extra[train_csv])
    if label_col not in df.columns:
        raise KitError(f"{train_csv}: no column '{label_col}'; pass --label-col (one of "
                       f"{extra[train_csv]})")
    test_ids = sub[sub.columns[0]]
    _check_row_ids(sample, test_csv, test_ids, len(tdf))
    train = pd.DataFrame({"Id": [str(i) for i in range(len(df))], "label": df[label_col]})
    train["path"] = _write_pngs(train_csv, df, train["Id"], kit_root / "pixels" / "train")
    test = pd.DataFrame({"Id": test_ids})
    test["path"] = _write_pngs(test_csv, tdf, test["Id"], kit_root / "pixels" / "test")
    layout = {"layout": "pixels", "labels_csv": train_csv, "label_col": label_col,
              "train_id_col": None, "group_col": None, "train_dir": "pixels/train",
              "test_dir": "pixels/test", "ext": ".png", "test_csv": test_csv, "image_root": "kit",
              "multilabel": False}
    return layout, train, test, []


def _one(csv: str, cols: list[str]) -> str:
    if len(cols) != 1:
        raise KitError(f"{csv}: cannot tell the label column among {cols}; pass --label-col")
    return cols[0]


def _check_row_ids(sample: str, test_csv: str, ids: pd.Series, n: int) -> None:
    """The sample's Ids must number test.csv's rows (1..N or 0..N-1): the only link there is."""
    if len(ids) != n:
        raise KitError(f"{sample}: {len(ids)} rows but {test_csv} has {n}; the sample's Ids "
                       "number the test rows, so both must have as many")
    for start in (1, 0):
        if ids.tolist() == [str(i) for i in range(start, n + start)]:
            return
    raise KitError(f"{sample}: Ids are not the row numbers 1..{n} of {test_csv}; cannot tell "
                   "which pixel row is which Id")


def _write_pngs(csv: str, df: pd.DataFrame, ids: pd.Series, folder: Path) -> list[str]:
    """One 8-bit grayscale PNG per row (lossless: the CSV holds 0..255 integers)."""
    cols = [c for c in df.columns if PIXEL_COL.fullmatch(c)]
    side = math.isqrt(len(cols))
    if side * side != len(cols):
        raise KitError(f"{csv}: {len(cols)} pixel columns is no square image; cannot reshape")
    try:
        px = df[cols].to_numpy(dtype=np.float64)
    except ValueError as e:
        raise KitError(f"{csv}: a pixel value is not a number ({e}); fix the row") from e
    bad = np.flatnonzero(~((px >= 0) & (px <= 255) & (px == np.round(px))).all(axis=1))
    if len(bad):
        raise KitError(f"{csv} line {bad[0] + 2}: pixel values must be integers 0..255")
    folder.mkdir(parents=True, exist_ok=True)
    arr = px.astype(np.uint8).reshape(len(df), side, side)
    rel = []
    for i, im in zip(ids, arr, strict=True):
        Image.fromarray(im).save(folder / f"{i}.png")
        rel.append(f"pixels/{folder.name}/{i}.png")
    return rel
