"""Decode-once image cache: `data/<comp>/cache/<split>_<key>.npy` (N,H,W,3) uint8, `.ids.txt`,
and `.json`, the build record that lets every reader check the cache cheaply.

Decoding a 32x32 PNG costs more than a small net's forward pass, so every image is decoded exactly
once per (split, size, fit). Row i of the array is the image of line i of the ids file: train rows
follow the label CSV, test rows follow sample_submission.csv. Ids are joined to files by name
(`CompetitionDir.image_path`), never by listing order.

Building (memory flat in N): the .npy is created at full size with `np.lib.format.open_memmap`
as `.<name>.partial`, then worker processes (a fork pool over the cores) decode chunks of rows
(`CHUNK_BYTES` each) and write them in place with `os.pwrite`; a chunk's bytes do not depend on
which worker decoded it, so the file is identical for any number of workers and to the
`np.save(np.stack(...))` kit wrote before. Each finished chunk is recorded (sha256 + pixel-value
histogram) in `.<name>.progress.json`, so an interrupted build resumes where it stopped; only a
complete, fsynced file is renamed to its final name, after its ids file and build record.

Checking (`check_cache`): sizes, header, ids and the per-chunk sha256 recorded at build. `full`
re-hashes every chunk (kit fetch: it says "verified"); otherwise small caches (< FULL_CHECK_BYTES)
are still fully hashed, larger ones only when the file's (size, mtime) differs from the build's,
else 8 chunks spread over the file (zeroed rows, truncation, swapped ids lines are caught).

Reading: `images.open_cache` -> `images.CacheArray` (rows read with os.pread, not via a memmap).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kaggle_kit import KitError
from kaggle_kit.decode import DECODE_VERSION, decode_image
from kaggle_kit.workspace import CompetitionDir, write_json, write_text

CHUNK_BYTES = 16 << 20  # decoded bytes per worker task: bounds each worker's memory
FULL_CHECK_BYTES = 512 << 20  # caches up to this size are re-hashed whole on every check
WORKERS_ENV = "KIT_DECODE_WORKERS"  # decode processes (default: the CPUs this process may use)
Say = Callable[[str], None]


def cache_key(size: tuple[int, int] | None, fit: str = "stretch") -> str:
    """'native' for images as shipped, else 'HxW' resized (stretched) or 'HxW_crop'."""
    if size is None:
        return "native"
    return f"{size[0]}x{size[1]}" + ("" if fit == "stretch" else f"_{fit}")


def cache_paths(comp: CompetitionDir, split: str, size: tuple[int, int] | None,
                fit: str = "stretch") -> tuple[Path, Path]:
    """(array path, ids path) of one cache entry; its build record is the array's `.json`."""
    stem = f"{split}_{cache_key(size, fit)}"
    return comp.cache_dir / f"{stem}.npy", comp.cache_dir / f"{stem}.ids.txt"


def split_ids(comp: CompetitionDir, split: str) -> list[str]:
    """Ids of a split in cache row order."""
    if split == "train":
        return comp.labels()["Id"].tolist()
    if split == "test":
        return comp.test_ids()
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def decode_workers() -> int:
    """Decode processes: $KIT_DECODE_WORKERS, else the CPUs this process may run on."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        if not env.isdigit() or int(env) < 1:
            raise KitError(f"{WORKERS_ENV}={env!r}: must be a whole number >= 1")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------- ensure / open


def build_cache(comp: CompetitionDir, split: str, size: tuple[int, int] | None = None,
                progress: bool = True, fit: str = "stretch", full_check: bool = True,
                say: Say | None = None, workers: int | None = None) -> dict:
    """Make sure the cache of `split` exists and matches its build record; decode what is
    missing (resuming an interrupted build) or rebuild a corrupt one (saying why through `say`).
    Returns {"path", "n", "shape", "bytes", "decode_s", "built": bool, "problem": str | None}."""
    arr_path, ids_path = cache_paths(comp, split, size, fit)
    ids = split_ids(comp, split)
    problem = check_cache(arr_path, ids, full=full_check)
    if problem is None:
        return {"path": str(arr_path), "n": len(ids), "shape": _record(arr_path)["shape"],
                "bytes": arr_path.stat().st_size, "decode_s": 0.0, "built": False, "problem": None}
    if problem != "missing" and say:
        say(f"{arr_path}: {problem}; rebuilding it")
    paths = comp.image_paths(split)  # same order as ids: both follow the split's index
    t0 = time.perf_counter()
    _build(arr_path, ids_path, ids, paths, size, fit, progress, say, workers or decode_workers())
    rec = _record(arr_path)
    return {"path": str(arr_path), "n": len(ids), "shape": rec["shape"], "bytes": rec["bytes"],
            "decode_s": round(time.perf_counter() - t0, 3), "built": True,
            "problem": None if problem == "missing" else problem}


def load_cache(comp: CompetitionDir, split: str, size: tuple[int, int] | None = None,
               fit: str = "stretch") -> tuple[list[str], np.ndarray]:
    """(ids, images (N,H,W,3) uint8 np.memmap) for a split; builds it if missing or corrupt."""
    build_cache(comp, split, size, progress=False, fit=fit, full_check=False)
    arr_path, ids_path = cache_paths(comp, split, size, fit)
    return ids_path.read_text().splitlines(), np.load(arr_path, mmap_mode="r")


def record_path(arr_path: Path) -> Path:
    """The build record (JSON) of a cache array."""
    return arr_path.with_suffix(".json")


def _record(arr_path: Path) -> dict:
    return json.loads(record_path(arr_path).read_text())


def value_histogram(x: np.ndarray) -> np.ndarray:
    """(3, 256) int64 count of each value per channel of a (..., 3) uint8 array."""
    return np.stack([np.bincount(x[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.int64)


def pixel_histogram(arr_path: Path) -> np.ndarray:
    """(3, 256) int64 count of each value per channel over the whole cache (from its record)."""
    return np.asarray(_record(arr_path)["histogram"], dtype=np.int64)


# ----------------------------------------------------------------------------- check


def check_cache(arr_path: Path, ids: list[str], full: bool = True) -> str | None:
    """None if the cache at `arr_path` holds exactly `ids` as recorded at build, else what is wrong
    ("missing", or a short reason). See the module docstring for what `full` changes."""
    ids_path = arr_path.with_name(arr_path.name.replace(".npy", ".ids.txt"))
    if not arr_path.exists() or not ids_path.exists():
        return "missing"
    try:
        rec = _record(arr_path)
    except (OSError, ValueError):
        return "no readable build record (made by an older kit, or damaged)"
    if rec.get("decoder") != DECODE_VERSION:
        return f"decoded by decoder version {rec.get('decoder')}, this kit uses {DECODE_VERSION}"
    st = arr_path.stat()
    if st.st_size != rec["bytes"]:
        return f"{st.st_size} bytes, {rec['bytes']} recorded at build (truncated or replaced)"
    if _sha(ids_path.read_bytes()) != rec["ids_sha256"]:
        return "ids file changed since build (lines edited, swapped or removed)"
    if _sha(_ids_text(ids)) != rec["ids_sha256"]:
        return "built for other Ids than the competition's current list"
    try:
        arr = np.load(arr_path, mmap_mode="r")
        shape, offset = list(arr.shape), arr.offset
        del arr
    except (ValueError, OSError) as e:
        return f"unreadable .npy header ({e})"
    if shape != rec["shape"] or offset != rec["offset"]:
        return f"header says {shape}, {rec['shape']} recorded at build"
    moved = [st.st_size, st.st_mtime_ns] != rec["stamp"]  # copied, touched or written to
    problem = _check_chunks(arr_path, rec, full or moved or st.st_size <= FULL_CHECK_BYTES)
    if problem is None and moved:  # every chunk checked and intact (e.g. a copy): re-stamp
        write_json(record_path(arr_path), {**rec, "stamp": [st.st_size, st.st_mtime_ns]})
    return problem


def _check_chunks(arr_path: Path, rec: dict, every: bool) -> str | None:
    """Re-hash every chunk, or 8 spread over the file (first and last included)."""
    n_chunks = len(rec["chunks"])
    which = range(n_chunks) if every else sorted(set(np.linspace(0, n_chunks - 1, 8).astype(int)))
    row_bytes = int(np.prod(rec["shape"][1:]))
    with open(arr_path, "rb") as f:
        for k in which:
            start, stop = _chunk_rows(k, rec["chunk_rows"], rec["shape"][0])
            data = os.pread(f.fileno(), (stop - start) * row_bytes, rec["offset"] + start * row_bytes)
            if _sha(data) != rec["chunks"][k]:
                return (f"rows {start}..{stop - 1} differ from what was decoded at build "
                        "(sha256 recorded in the build record)")
    return None


# ----------------------------------------------------------------------------- build


def _build(arr_path: Path, ids_path: Path, ids: list[str], paths: list[str],
           size: tuple[int, int] | None, fit: str, progress: bool, say: Say | None,
           workers: int) -> None:
    """Decode `paths` into `arr_path` (resumable, see the module docstring)."""
    n = len(paths)
    hw = size if size is not None else (decode_image(paths[0]).shape[:2] if n else (1, 1))
    shape = (n, int(hw[0]), int(hw[1]), 3)
    row_bytes = shape[1] * shape[2] * 3
    chunk_rows = max(1, CHUNK_BYTES // row_bytes)
    plan = {"shape": list(shape), "chunk_rows": chunk_rows, "ids_sha256": _sha(_ids_text(ids)),
            "decoder": DECODE_VERSION, "size": size and list(size), "fit": fit}
    partial = arr_path.with_name(f".{arr_path.name}.partial")
    progress_path = arr_path.with_name(f".{arr_path.stem}.progress.jsonl")
    done, histogram = _resume(partial, progress_path, plan)  # {chunk: sha256}, summed histogram
    if not done:
        _create(partial, shape, say)
        write_text(progress_path, json.dumps(plan) + "\n")  # line 1: the plan; then one per chunk
    offset = int(np.load(partial, mmap_mode="r").offset)
    n_chunks = -(-n // chunk_rows)
    tasks = [(k, str(partial), offset, *_chunk_rows(k, chunk_rows, n), shape,
              paths[k * chunk_rows:(k + 1) * chunk_rows], size, fit)
             for k in range(n_chunks) if str(k) not in done]
    if say and done:
        say(f"{arr_path}: resuming an interrupted build ({len(done)} of {n_chunks} chunks done)")
    with open(progress_path, "a") as log:  # append-only: a torn last line is ignored on resume
        for k, sha, hist in _run(tasks, workers, progress, n, n - sum(len(t[6]) for t in tasks),
                                 arr_path.name):
            done[str(k)] = sha
            histogram += np.asarray(hist, dtype=np.int64)  # summed as they come: 768 Python ints
            # per chunk kept until the end were ~40 MB at 100,000 images of 256 px
            log.write(json.dumps({"chunk": k, "sha256": sha, "histogram": hist}) + "\n")
            log.flush()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    write_text(ids_path, _ids_text(ids).decode())
    st = partial.stat()
    write_json(record_path(arr_path), {
        **plan, "offset": offset, "bytes": st.st_size, "stamp": [st.st_size, st.st_mtime_ns],
        "chunks": [done[str(k)] for k in range(n_chunks)], "histogram": histogram.tolist()})
    os.replace(partial, arr_path)  # last: only a complete, recorded file has the final name
    progress_path.unlink(missing_ok=True)


def _resume(partial: Path, progress_path: Path, plan: dict) -> tuple[dict, np.ndarray]:
    """Chunks already decoded by an interrupted build of the same plan ({chunk: sha256}) and the
    sum of their value histograms; ({}, zeros) to start over."""
    histogram = np.zeros((3, 256), np.int64)
    try:
        lines = progress_path.read_text().splitlines()
        saved = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        return {}, histogram
    if not partial.exists() or saved != plan:
        return {}, histogram
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:  # the line being written when the build was killed
            continue
        if str(rec["chunk"]) not in done:
            done[str(rec["chunk"])] = rec["sha256"]
            histogram += np.asarray(rec["histogram"], dtype=np.int64)
    return done, histogram


def _create(partial: Path, shape: tuple, say: Say | None) -> None:
    """Create the full-size .npy (header + zeros), refusing up front when the disk is too small."""
    need = int(np.prod(shape)) + 128
    free = shutil.disk_usage(partial.parent if partial.parent.exists() else Path.cwd()).free
    if need > free - (64 << 20):
        raise KitError(f"{partial.parent}: the cache needs {need / 1e9:.2f} GB "
                       f"({shape[0]} images x {shape[1]}x{shape[2]}x3 bytes) but only "
                       f"{free / 1e9:.2f} GB are free; free disk space or set a smaller "
                       "data.image_size")
    if say and need > 1 << 30:
        say(f"building {partial.name.strip('.').removesuffix('.partial')}: {need / 1e9:.2f} GB, "
            f"{shape[0]} images of {shape[1]}x{shape[2]}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()
    try:  # reserve the blocks now: a full disk fails here, not half-way through decoding
        with open(partial, "rb+") as f:
            os.posix_fallocate(f.fileno(), 0, need)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise KitError(f"{partial.parent}: cannot reserve {need / 1e9:.2f} GB for the cache "
                       f"({e.strerror}); free disk space or set a smaller data.image_size") from e
    except AttributeError:  # no posix_fallocate (macOS): the sparse file fills as it is written
        pass


def _run(tasks: list, workers: int, progress: bool, total: int, completed: int, label: str):
    """Yield (chunk, sha256, histogram) of each task as it finishes, on a fork pool when
    workers > 1 (decoding is CPU-bound; PIL holds the GIL for parts of it)."""
    bar = None
    try:
        if workers <= 1 or len(tasks) <= 1:
            bar = _bar(progress, label, total, completed)
            for t in tasks:
                yield _advance(bar, t, decode_chunk(t))
            return
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(min(workers, len(tasks))) as pool:  # forked before the bar's thread starts
            bar = _bar(progress, label, total, completed)
            for t, out in zip(tasks, pool.imap(decode_chunk, tasks), strict=True):
                yield _advance(bar, t, out)
    finally:
        if bar is not None:
            bar.stop()


def decode_chunk(task: tuple) -> tuple[int, str, list]:
    """Worker: decode one chunk of rows and write it into the partial file at its offset.
    Returns (chunk, sha256 of its bytes, (3,256) value histogram as lists)."""
    k, partial, offset, start, stop, shape, paths, size, fit = task
    out = np.empty((stop - start, *shape[1:]), np.uint8)
    for j, p in enumerate(paths):
        im = decode_image(Path(p), size, fit)
        if im.shape != out.shape[1:]:
            raise KitError(f"{p}: image is {im.shape[0]}x{im.shape[1]}, the others "
                           f"{shape[1]}x{shape[2]}; the images have mixed sizes: set "
                           "data.image_size in the recipe so they are resized to one size")
        out[j] = im
    data = memoryview(out).cast("B")
    with open(partial, "rb+") as f:
        written = os.pwrite(f.fileno(), data, offset + start * int(np.prod(shape[1:])))
    if written != len(data):
        raise KitError(f"{partial}: short write ({written} of {len(data)} bytes); disk full?")
    hist = value_histogram(out).tolist()
    return k, _sha(data), hist


def _advance(bar, task, out):
    if bar is not None:
        bar.advance(bar.task_ids[0], task[4] - task[3])
    return out


def _bar(enabled: bool, label: str, total: int, completed: int):
    if not enabled:
        return None
    from rich import progress as rp

    bar = rp.Progress(rp.TextColumn(f"decoding {label}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                      rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                      transient=True)
    bar.add_task(label, total=total, completed=completed)
    bar.start()
    return bar


def _chunk_rows(k: int, chunk_rows: int, n: int) -> tuple[int, int]:
    return k * chunk_rows, min(n, (k + 1) * chunk_rows)


def _ids_text(ids: list[str]) -> bytes:
    return ("\n".join(ids) + "\n").encode()


def _sha(data) -> str:
    return hashlib.sha256(data).hexdigest()
