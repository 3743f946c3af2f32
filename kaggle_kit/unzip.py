"""Unpacking a competition archive safely (used by `kit fetch`, fetch.py): refuses entries that
would land outside the target (absolute paths, `..`, symlinks), lifts one nested top folder and
unpacks zips inside the zip (e.g. train.zip) in place.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from kaggle_kit import KitError
from kaggle_kit.layout import JUNK


def safe_unzip(zip_path: Path, dest: Path) -> int:
    """Extract `zip_path` into `dest`, refusing absolute paths, drive letters, `..` and symlinks
    (checked for every entry before anything is written). Skips macOS junk. Returns #files."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = []
            for info in zf.infolist():
                parts = _safe_parts(zip_path, info)
                if info.is_dir() or not parts or JUNK & set(parts):
                    continue
                members.append((info, dest.joinpath(*parts)))
            for info, target in members:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, EOFError) as e:
        raise KitError(f"{zip_path}: not a complete zip ({e}); delete it and rerun with --force "
                       "(an interrupted download?)") from e
    return len(members)


def _safe_parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    unsafe = name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts
    if unsafe or stat.S_ISLNK(info.external_attr >> 16):
        raise KitError(f"{zip_path}: entry '{info.filename}' would be written outside the target "
                       "folder (absolute path, '..' or symlink); refusing to unzip this archive")
    return tuple(p for p in parts if p not in ("", "."))


def unpack(src: Path, dest: Path) -> None:
    """Zip or folder -> `dest` in Kaggle's layout: one nested top folder is lifted up, and zips
    inside (e.g. train.zip) are unpacked in place, up to 3 levels deep."""
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n in JUNK])
    elif zipfile.is_zipfile(src):
        safe_unzip(src, dest)
    elif src.suffix.lower() == ".zip":
        raise KitError(f"{src}: not a complete zip archive (an interrupted download?); "
                       "delete it and rerun (with --force)")
    else:
        raise KitError(f"{src}: neither a zip nor a folder; pass a Kaggle competition zip")
    _lift_single_folder(dest)
    for _ in range(3):
        inner = sorted(p for p in dest.rglob("*.zip") if p.is_file())
        if not inner:
            break
        for z in inner:
            _unpack_inner(z)
        _lift_single_folder(dest)


def _lift_single_folder(dest: Path) -> None:
    entries = [p for p in dest.iterdir() if p.name not in JUNK]
    while len(entries) == 1 and entries[0].is_dir():
        top = entries[0].rename(dest / f".lift-{entries[0].name}")
        for p in top.iterdir():
            p.rename(dest / p.name)
        top.rmdir()
        entries = [p for p in dest.iterdir() if p.name not in JUNK]


def _unpack_inner(z: Path) -> None:
    """`train.zip` -> `train/` next to it (its own single top folder kept if it has one)."""
    stage = Path(tempfile.mkdtemp(dir=z.parent, prefix=".inner-"))
    safe_unzip(z, stage)
    entries = list(stage.iterdir())
    if len(entries) == 1 and (entries[0].is_dir() or entries[0].name == z.stem):
        src = entries[0]  # train.zip holding train/, or train.csv.zip holding train.csv
    else:
        src = stage  # train.zip holding the images themselves
    target = z.parent / (src.name if src is not stage else z.stem)
    if target.exists():
        raise KitError(f"{z}: unpacks to {target}, which is also in the archive; "
                       "unpack it by hand and import the folder with --from")
    src.rename(target)
    if stage.exists():
        stage.rmdir()
    z.unlink()
