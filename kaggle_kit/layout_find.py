"""Finding the image file of every Id (used by layout.py): image folders, Ids joined to file names
(with or without the extension, in a folder or in its class subfolders), folder-per-class and
label-in-the-file-name layouts. Paths are relative to the folder Kaggle's files are in.

Errors raise KitError naming the folder/file and the option that settles an ambiguity.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pandas as pd

from kaggle_kit import KitError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
JUNK = {"__MACOSX", ".DS_Store", "Thumbs.db"}


def image_dirs(root: Path) -> dict[str, list[str]]:
    """{folder relative to root ('.' for root): image file names directly in it}."""
    out = {}
    for d, _, names in os.walk(root):
        imgs = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTS and not n.startswith(".")]
        rel = Path(d).relative_to(root).as_posix()
        if imgs and not JUNK & set(Path(rel).parts):
            out[rel] = imgs
    return out


def _files_under(dirs: dict[str, list[str]], d: str) -> dict[str, list[str]]:
    """{file name: [paths]} for images in `d` and in its direct subfolders (class folders)."""
    out: dict[str, list[str]] = {}
    for sub, names in dirs.items():
        parent = PurePosixPath(sub).parent.as_posix() if sub != "." else None
        if sub == d or parent == d:
            for n in names:
                out.setdefault(n, []).append(n if sub == "." else f"{sub}/{n}")
    return out


def _key(name: str, with_ext: bool) -> str:
    return name if with_ext else Path(name).stem


def has_ext(ids: list[str]) -> bool:
    """Whether the Ids name files (`abc.jpg`) rather than stems (`abc` + `.jpg` on disk)."""
    return bool(ids) and all(Path(i).suffix.lower() in IMAGE_EXTS for i in ids[:100])


def pick_dir(role: str, ids: list[str], dirs: dict[str, list[str]], hint: str | None,
             exclude: str | None) -> str:
    """The folder whose files (directly or in class subfolders) cover `ids` best, preferring one
    named like `role`; `exclude` (the train folder) only when no other folder holds the Ids."""
    if hint is not None:
        hint = PurePosixPath(hint).as_posix()
        if hint not in dirs and not _files_under(dirs, hint):
            raise KitError(f"--{role}-dir {hint}: no images there; folders with images: "
                           f"{sorted(dirs)}")
        return hint
    with_ext, want = has_ext(ids), set(ids)
    parents = {PurePosixPath(d).parent.as_posix() for d in dirs if d != "."}
    cover = {}
    for d in set(dirs) | parents:
        keys = {_key(n, with_ext) for n in _files_under(dirs, d)}
        cover[d] = len(want & keys) / max(len(want), 1)
    inside = lambda d: exclude is not None and (d == "." or exclude.startswith(f"{d}/"))  # noqa
    cands = [d for d, c in cover.items() if c > 0 and d != exclude and not inside(d)]
    if not cands and exclude is not None and cover.get(exclude, 0) > 0:
        cands = [exclude]  # train and test images share one folder (told apart by the CSVs)
    named = [d for d in cands if role in d.lower()]
    cands = named or cands
    best = max((cover[d] for d in cands), default=0)
    top = [d for d in cands if cover[d] == best]
    if len(top) > 1:  # a folder and its own parent cover the same Ids: take the deepest
        top = [d for d in top if not any(o != d and o.startswith(f"{d}/") for o in top)
               and not (d == "." and len(top) > 1)]
    if len(top) != 1:
        raise KitError(f"cannot tell the {role} image folder (candidates: "
                       f"{ {d: round(cover[d], 3) for d in top} or sorted(dirs)} = share of "
                       f"{role} Ids found); pass --{role}-dir")
    return top[0]


def resolve(csv: str, ids: pd.Series, dirs: dict[str, list[str]], folder: str) -> pd.Series:
    """Path (relative to the source root) of each Id's image in `folder` or its class
    subfolders; an Id with no image or with two raises KitError naming the CSV line."""
    with_ext = has_ext(ids.tolist())
    by_key: dict[str, list[str]] = {}
    for name, paths in _files_under(dirs, folder).items():
        by_key.setdefault(_key(name, with_ext), []).extend(paths)
    paths = ids.map(lambda i: by_key.get(i, [None]))
    missing = ids.index[paths.map(lambda p: p[0] is None)]
    if len(missing):
        i = missing[0]
        ext = "" if with_ext else common_ext(_files_under(dirs, folder))
        raise KitError(f"{csv} line {i + 2}: no image {folder}/{ids[i]}{ext} for Id {ids[i]} "
                       f"({len(missing)} missing); restore it (kit fetch --force) or remove the row")
    twice = ids.index[paths.map(len) > 1]
    if len(twice):
        i = twice[0]
        raise KitError(f"{csv} line {i + 2}: Id {ids[i]} matches {len(paths[i])} images "
                       f"({', '.join(paths[i][:3])}); remove the duplicates or pass --{folder}-dir")
    return paths.map(lambda p: p[0])


def common_ext(files: dict[str, list[str]]) -> str:
    exts = pd.Series([Path(n).suffix for n in files])
    return str(exts.mode().iloc[0]) if len(exts) else ""


def orphans(dirs: dict[str, list[str]], folder: str, used: set[str], csv: str) -> list[str]:
    """Warning for images in `folder` (and its class subfolders) that no row names."""
    extra = sorted(p for paths in _files_under(dirs, folder).values() for p in paths
                   if p not in used)
    if not extra:
        return []
    return [f"{extra[0]}: image with no row in {csv} ({len(extra)} such images); ignored: add "
            "rows for them to use them"]


# ----------------------------------------------------------------------------- no label CSV


def labels_from_files(dirs: dict[str, list[str]], test_dir: str, hint: str | None,
                      sample: str) -> tuple[str, pd.DataFrame, str]:
    """Train images without a label CSV: one folder per class (`train/<class>/<file>`, e.g.
    plant-seedlings, state-farm's imgs/train/c0..c9) or the label in the file name
    (`train/cat.0.jpg`, dogs-vs-cats). Returns (train folder, frame Id/label/path, layout kind)."""
    cands = [hint] if hint else sorted({d for d in dirs if d != test_dir and "train" in d.lower()}
                                       | {PurePosixPath(d).parent.as_posix() for d in dirs
                                          if "train" in PurePosixPath(d).parent.as_posix().lower()})
    found = {d: f for d in cands if (f := _class_folders(dirs, d)) is not None}
    if not found:
        found = {d: f for d in cands if (f := _label_in_name(dirs, d)) is not None}
    if len(found) != 1:
        raise KitError(f"{sample}: no label CSV, and cannot tell the training images (folder per "
                       f"class or label in the file name) among {sorted(found) or sorted(dirs)}; "
                       "pass --train-dir (or a label CSV with --id-col/--label-col)")
    (folder, (df, kind)), = found.items()
    return folder, df, kind


def _class_folders(dirs: dict[str, list[str]], d: str) -> tuple[pd.DataFrame, str] | None:
    """`d/<class>/<image>` with at least two class folders and no images directly in `d`."""
    subs = {s: n for s, n in dirs.items() if s != "." and PurePosixPath(s).parent.as_posix() == d}
    if len(subs) < 2 or d in dirs:
        return None
    rows = [(n, PurePosixPath(s).name, f"{s}/{n}") for s, names in sorted(subs.items())
            for n in sorted(names)]
    df = pd.DataFrame(rows, columns=["Id", "label", "path"])
    dup = df["Id"][df["Id"].duplicated()]
    if len(dup):
        first = df["path"][df["Id"] == dup.iloc[0]].tolist()
        raise KitError(f"{d}: file name {dup.iloc[0]} is in two class folders ({first[0]}, "
                       f"{first[1]}); an image belongs to one class: remove one")
    return df, "folders"


def _label_in_name(dirs: dict[str, list[str]], d: str) -> tuple[pd.DataFrame, str] | None:
    """`d/<label>.<n>.<ext>`: every file name has a label before its first dot, with a few
    distinct labels (2 or more, each shared by several files)."""
    names = sorted(dirs.get(d, []))
    stems = [Path(n).stem for n in names]
    if not names or not all("." in s for s in stems):
        return None
    labels = [s.split(".", 1)[0] for s in stems]
    n_labels = len(set(labels))
    if n_labels < 2 or n_labels > len(names) / 2:
        return None
    ids = [Path(n).stem for n in names]  # Id `cat.0`, file `cat.0.jpg` (the extension is the ext)
    return pd.DataFrame({"Id": ids, "label": labels, "path": [f"{d}/{n}" for n in names]}), \
        "label_in_file_name"
