"""`kit fetch`: a Kaggle competition (download, `--from` zip/folder, or the offline demo) into a
verified `data/<comp>/` (docs/design.md section 1).

Steps: obtain the zip -> safe unzip into `files/` of a temp folder next to the target (nested top
folder and zips-inside-the-zip unpacked) -> detect the layout -> validate (both in layout.py) ->
sha256 every file -> stratified folds.csv -> decode-once cache -> competition.json -> rename the
temp folder onto `data/<comp>`. Kaggle's files stay under `files/`, kit's (competition.json,
folds.csv, cache/) beside it, so a competition that ships its own folds.csv still verifies.
`--from <folder>` (without zips inside) is read in place: nothing is copied, competition.json
records the folder as "source" and each file's size + mtime instead of its sha256.
Any error removes the temp folder, so nothing half-written is left behind.
A second fetch verifies the recorded hashes and does nothing (no download, no decoding).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kaggle_kit import KitError
from kaggle_kit.folds import write_folds
from kaggle_kit.layout import JUNK, decode_all, detect_layout, image_sizes
from kaggle_kit.layout_target import check_metric
from kaggle_kit.unzip import unpack
from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv

if TYPE_CHECKING:
    import pandas as pd


def fetch(competition: str, *, data_dir: Path = Path("data"), source: Path | None = None,
          force: bool = False, n_folds: int = 4, seed: int = 42, refold: bool = False,
          id_col: str | None = None, label_col: str | None = None, train_dir: str | None = None,
          test_dir: str | None = None, group_col: str | None = None, metric: str | None = None,
          positive: str | None = None) -> dict:
    """Make `data_dir/<competition>/` verified: files + competition.json + folds.csv + cache.

    `source`: a zip or folder to import (offline); else 'demo' is built offline and anything else
    is downloaded with the official client (kaggle_io). Already fetched: verify hashes and do
    nothing, unless `force` (refetch) or `refold` (remake folds with `n_folds`/`seed`); another
    `n_folds`/`seed` without `refold` is an error. The hint arguments settle ambiguous layouts;
    `group_col` makes group-aware folds, `metric` / `positive` override the detected metric and
    name the class a one-column probability submission is about. Returns a summary dict (status, counts, classes, folds, decode time, cache size, warnings)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", competition):
        raise KitError(f"competition '{competition}': not a Kaggle slug (letters, digits, '-', '_')")
    if n_folds < 2:
        raise KitError(f"--folds {n_folds}: need at least 2 folds")
    comp = CompetitionDir(Path(data_dir) / competition)
    check_metric(metric)  # an unknown name fails before anything is read or written
    hints = {"id_col": id_col, "label_col": label_col, "train_dir": train_dir, "test_dir": test_dir,
             "group_col": group_col, "metric": metric, "positive": positive}
    if comp.meta_path.exists() and not force:
        _same_source(comp, source)
        return _verify_existing(comp, n_folds, seed, refold, hints)
    if comp.root.exists() and any(comp.root.iterdir()) and not force:
        raise KitError(f"{comp.root}: exists but has no competition.json; "
                       "pass --force to replace it with a fresh fetch")
    if force and not refold and comp.meta_path.exists():
        _keep_folds_explicit(comp, n_folds, seed)
    return _import(comp, source, force, n_folds, seed, hints)


# ----------------------------------------------------------------------------- obtain + unpack


def _obtain(comp: CompetitionDir, source: Path | None, force: bool) -> tuple[Path, bool]:
    """(zip or folder to import, whether it is a download of ours to delete afterwards)."""
    downloads = comp.root.parent / ".downloads"
    if source is not None:
        source = Path(source)
        if not source.exists():
            raise KitError(f"--from {source}: no such file or folder")
        return source, False
    if comp.name == "demo":
        from kaggle_kit.demo_data import build_demo_zip

        return build_demo_zip(downloads), True
    from kaggle_kit import kaggle_io  # lazy: importing the kaggle client authenticates

    return kaggle_io.download_competition(comp.name, downloads, force=force), True


# ----------------------------------------------------------------------------- import


def _import(comp: CompetitionDir, source: Path | None, force: bool, n_folds: int, seed: int,
            hints: dict) -> dict:
    _remove_stale(comp)
    archive, ours = _obtain(comp, source, force)
    comp.root.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed download leaves no data/
    in_place = in_place_root(archive)
    tmp = Path(tempfile.mkdtemp(dir=comp.root.parent,
                                prefix=f".{comp.name}.partial-{os.getpid()}-"))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the final folder should look like any other
    try:
        if in_place is None:
            unpack(archive, tmp / "files")
        origin = {"source": str(archive.resolve()) if not ours else comp.name,
                  "sha256": sha256_file(archive) if archive.is_file() else None}
        summary = _build(CompetitionDir(tmp), comp.name, n_folds, seed, hints, origin,
                         str(in_place) if in_place else "files")
        _replace_dir(tmp, comp.root)
    except KitError as e:  # name the file inside the archive, not the temp folder
        msg = str(e)
        for path, short in ((f"{tmp}{os.sep}files{os.sep}", ""), (f"{tmp}{os.sep}files", "."),
                            (f"{tmp}{os.sep}", ""), (str(tmp), ".")):
            msg = msg.replace(path, short)
        raise KitError(msg if msg.startswith(str(archive)) else f"{archive}: {msg}") from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            kept = (f"; the download {archive} ({archive.stat().st_size / 1e6:.0f} MB) is kept so "
                    "the rerun does not download it again (delete it to free that space)"
                    if ours and archive.is_file() else "")
            raise KitError(f"{comp.root.parent}: disk full while writing {comp.name}; free space "
                           f"and rerun (nothing of {comp.name} was kept{kept})") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ours:
        archive.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            archive.parent.rmdir()  # .downloads/, if now empty
    return {"status": "fetched", "path": str(comp.root), "source": str(in_place or "files"),
            **summary}


def in_place_root(src: Path) -> Path | None:
    """The folder to read in place for `--from <folder>` (Kaggle notebooks: /kaggle/input/<comp>
    is read-only, and copying multi-GB inputs wastes the working disk): the folder itself, or the
    one folder it nests everything in. None when the source must be unpacked into `files/`: a zip,
    or a folder that holds zips (train.zip ...)."""
    if not src.is_dir():
        return None
    root = src.resolve()
    while True:
        entries = [p for p in root.iterdir() if p.name not in JUNK]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = entries[0]
    if any(p.is_file() for p in root.rglob("*.zip")):
        return None
    return root


def _remove_stale(comp: CompetitionDir) -> None:
    """Remove temp folders left by a fetch that was killed (-9) before it could clean up."""
    for p in comp.root.parent.glob(f".{comp.name}.[po][al]*-*"):  # .partial-<pid>-*, .old-<pid>
        m = re.fullmatch(rf"\.{re.escape(comp.name)}\.(?:partial|old)-(\d+)(?:-.*)?", p.name)
        if m and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(new: Path, final: Path) -> None:
    """Rename `new` onto `final`; an old `final` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(comp: CompetitionDir, name: str, n_folds: int, seed: int, hints: dict,
           origin: dict, source: str) -> dict:
    """Detect, validate, index, hash, fold and cache the competition whose shipped files are in
    `source` ("files" = `comp.root/files`, or an absolute folder read in place)."""
    src = comp.root / source if source == "files" else Path(source)
    layout, train, test, warnings = detect_layout(src, comp.root, hints)
    img_root = str(comp.root if layout["image_root"] == "kit" else src)
    sizes = image_sizes(_image_paths(img_root, train, test))
    if len(sizes) > 1:
        warnings.append(f"{layout['train_dir']}, {layout['test_dir']}: images have mixed sizes "
                        f"{sizes}; no native cache is built: set data.image_size in the recipe "
                        "so they are resized to one size")
        decode_all(_image_paths(img_root, train, test))  # no cache to catch a truncated image
    write_csv(comp.index_path("train"), train)
    write_csv(comp.index_path("test"), test)
    n_train, n_test = len(train), len(test)
    del train, test  # from here on the index files are the data: memory stays flat in N
    check = "sha256" if source == "files" else "stat"
    shipped = comp.write_shipped({rel: file_stamp(Path(src, rel), check)
                                  for rel in shipped_files(src)})
    meta = {"name": name, "source": source, **layout,
            "n_train": n_train, "n_test": n_test, "image_sizes": sizes,
            "index": {s: sha256_file(comp.index_path(s)) for s in ("train", "test")},
            "folds": {}, "shipped_files": shipped, "file_check": check, "cache": {},
            "origin": origin}
    comp.write_meta(meta)
    meta["folds"], fold_warnings = write_folds(comp, n_folds, seed, meta)
    warnings += fold_warnings
    for w in warnings:
        _say(f"warning: {w}")
    if len(sizes) == 1:
        meta["cache"] = _build_caches(comp)
    comp.write_meta(meta)
    return _summary(meta, warnings, sum(c["decode_s"] for c in meta["cache"].values()))


def _image_paths(root: str, *index: pd.DataFrame) -> Iterator[str]:
    """The image paths of index frames, made as read (a list of 100,000 Path objects holds
    ~50 MB)."""
    return (os.path.join(root, p) for frame in index for p in frame["path"])


def shipped_files(src: Path) -> list[str]:
    """Every file under `src` as a sorted POSIX path relative to it (what shipped_files.json
    records), walked as strings: memory per file is its name, not a Path object."""
    out = []
    for d, subdirs, names in os.walk(src):
        subdirs.sort()
        rel = os.path.relpath(d, src)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + n for n in names if os.path.isfile(os.path.join(d, n)))
    out.sort()
    return out


def file_stamp(path: Path, check: str) -> str:
    """What competition.json records of a shipped file: its sha256 (files kit unpacked), or
    "size:mtime_ns" for a folder read in place (hashing multi-GB read-only inputs on every fetch
    would cost minutes; Kaggle's input folders do not change under a notebook)."""
    if check == "sha256":
        return sha256_file(path)
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _build_caches(comp: CompetitionDir) -> dict:
    """Native caches for train and test ({"train_native": info, ...}); decodes only if missing."""
    from kaggle_kit.cache import build_cache  # not images: that imports torch

    cache = {}
    for split in ("train", "test"):  # full check: re-hashes the cache against its build record
        info = build_cache(comp, split, None, progress=sys.stderr.isatty(), say=_say)
        info["path"] = Path(info["path"]).relative_to(comp.root).as_posix()
        info.pop("problem")
        if info.pop("built"):
            info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            _say(f"decoded {info['n']} {split} images in {info['decode_s']:.2f} s -> "
                 f"{info['path']} ({info['bytes'] / 1e6:.1f} MB)")
        cache[f"{split}_native"] = info
    return cache


def _summary(meta: dict, warnings: list[str], decode_s: float) -> dict:
    cache = meta.get("cache", {})
    return {"competition": meta["name"], "classes": len(meta["classes"]),
            "task": meta.get("task"), "metric": meta.get("metric"),
            "submission": meta.get("submission"),
            "n_train": meta["n_train"], "n_test": meta["n_test"], "folds": meta["folds"],
            "image_sizes": meta["image_sizes"],
            "decode_s": round(decode_s, 3),  # spent in this call
            "cache_mb": round(sum(c["bytes"] for c in cache.values()) / 1e6, 2),
            "warnings": warnings}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ----------------------------------------------------------------------------- rerun


def _same_source(comp: CompetitionDir, source: Path | None) -> None:
    """`--from` another zip or folder than the one fetched must not be silently ignored."""
    if source is None or not Path(source).exists():
        return
    meta = comp.meta()
    comp.source_root  # noqa: B018 - an old-layout folder: the one-line refetch error
    origin = meta.get("origin", {})
    if Path(source).is_file():
        recorded = origin.get("sha256")
        differs = recorded and sha256_file(source) != recorded
    else:
        differs = origin.get("source") and Path(source).resolve() != Path(origin["source"])
    if differs:
        raise KitError(f"--from {source}: differs from the {'archive' if Path(source).is_file() else 'folder'} "
                       f"{comp.name} was fetched from; pass --force to import it instead")


def _verify_existing(comp: CompetitionDir, n_folds: int, seed: int, refold: bool,
                     hints: dict) -> dict:
    """Already fetched: check hashes, folds and cache; write nothing unless asked to refold
    or a cache file went missing."""
    meta = comp.meta()
    src = comp.source_root  # an old-layout folder: the one-line refetch error
    given = meta.get("hints", {})
    for key, val in hints.items():
        if val is not None and val not in (meta.get(key), given.get(key)):
            raise KitError(f"{comp.meta_path}: recorded {key}={given.get(key, meta.get(key))!r}, "
                           f"not {val!r}; pass --force to refetch and re-detect with the option")
    check = meta.get("file_check", "sha256")
    bad = [rel for rel, h in comp.shipped_stamps().items()
           if not (src / rel).is_file() or file_stamp(src / rel, check) != h]
    bad += [comp.index_path(s).name for s, h in meta.get("index", {}).items()
            if not comp.index_path(s).is_file() or sha256_file(comp.index_path(s)) != h]
    if bad:
        where = comp.root if bad[0].endswith("_index.csv") else src
        raise KitError(f"{where / bad[0]}: missing or changed since fetch ({len(bad)} files); "
                       "rerun with --force to refetch")
    status = "no-op: already fetched and verified"
    if _check_folds(comp, meta["folds"], n_folds, seed, refold):
        meta["folds"], fold_warnings = write_folds(comp, n_folds, seed, meta)
        for w in fold_warnings:
            _say(f"warning: {w}")
        status = f"refolded: folds.csv remade with --folds {n_folds} --seed {seed}"
    decode_s = 0.0
    if len(meta["image_sizes"]) == 1:
        rebuilt = {k: v for k, v in _build_caches(comp).items() if "built_at" in v}
        if rebuilt:  # only when a cache file was deleted or failed its check (said why)
            meta["cache"].update(rebuilt)
            decode_s = sum(v["decode_s"] for v in rebuilt.values())
            status = ("files verified" if status.startswith("no-op") else status) + \
                f"; rebuilt missing or corrupt cache {sorted(rebuilt)}"
    if not status.startswith("no-op") or decode_s:
        comp.write_meta(meta)
    _say(f"{comp.root}: {status}")
    return {"status": status, "path": str(comp.root), **_summary(meta, [], decode_s)}


def _keep_folds_explicit(comp: CompetitionDir, n_folds: int, seed: int) -> None:
    """--force keeps the fold split; changing k or seed needs --refold as well."""
    try:
        rec = comp.meta().get("folds", {})
    except KitError:
        return  # corrupt competition.json: --force is how to recover
    if rec and (rec.get("k"), rec.get("seed")) != (n_folds, seed):
        raise KitError(f"{comp.folds_path}: made with --folds {rec.get('k')} --seed "
                       f"{rec.get('seed')}; pass those again, or --refold to change them to "
                       f"--folds {n_folds} --seed {seed}")


def _check_folds(comp: CompetitionDir, rec: dict, n_folds: int, seed: int, refold: bool) -> bool:
    """Whether folds.csv must be remade; another k/seed or a changed file needs `refold`."""
    intact = comp.folds_path.exists() and sha256_file(comp.folds_path) == rec.get("sha256")
    if intact and (rec.get("k"), rec.get("seed")) == (n_folds, seed):
        return False
    if not refold:
        what = (f"made with --folds {rec.get('k')} --seed {rec.get('seed')}" if intact
                else "missing or changed since fetch")
        raise KitError(f"{comp.folds_path}: {what}; pass --refold to remake it with --folds "
                       f"{n_folds} --seed {seed} (runs on the old folds will not compare)")
    return True
