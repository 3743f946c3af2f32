"""The on-disk contract between commands (see docs/design.md section 1).

This module is the only reader/writer of `competition.json` and `folds.csv`, and holds the atomic
writers every module uses (temp file + rename, so a killed command never leaves a half-written
artefact). A run folder's files are read and written by rundir.py and runfiles.py only.

Ids are always strings (read with dtype=str) and are joined, never matched by position.
Probability columns are named by class name, never by index.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.metrics import set_sep, split_set

# ----------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only set it: flipping it, even
    briefly, races with files other threads create meanwhile). Linux: /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # the usual default where /proc is absent (macOS): files come out 0644


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write `text` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (numpy scalars converted)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a one-line error naming it if it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise KitError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KitError(f"{path}: not valid JSON ({e}); delete it and rerun the command") from e


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Atomically write a DataFrame as CSV without its index."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- competitions

_META_CACHE: dict[Path, tuple[tuple[int, int], dict]] = {}  # competition.json path -> (stamp, meta)


@dataclass(frozen=True)
class CompetitionDir:
    """`data/<comp>/` as written by `kit fetch`: kit's own files (competition.json, folds.csv,
    cache/) live here; the files Kaggle ships live under `source_root` (`files/` here, or the
    read-only folder `kit fetch --from <folder>` read in place), never mixed with kit's.

    competition.json keys (written by fetch.py through `write_meta`; docs/competitions.md):
      name, source ("files" = `root/files`, or an absolute folder read in place), layout,
      labels_csv, label_col, train_id_col, group_col, train_dir, test_dir, ext, image_root
      ("source" | "kit"), sample_submission (paths relative to `source_root`), id_col (the
      sample's), submission_columns, task, metric, classes (sorted values as text), class_names,
      label_map, submission ({id_col, columns, kind, positive, k}), hints (fetch flags given),
      n_train, n_test, image_sizes ({"32x32": n}), index ({split: sha256 of <split>_index.csv}),
      folds ({"k", "seed", "sha256"}), shipped_files ({"path": "shipped_files.json", "n",
      "sha256"}: that file holds {relpath under source_root: sha256, or "size:mtime_ns" when
      file_check is "stat"}; an older kit wrote the dict inline as "files"), file_check,
      cache ({key: info}), origin.
    """

    root: Path

    @classmethod
    def open(cls, data_dir: str | Path, name: str) -> CompetitionDir:
        """Open a fetched competition; error with the fetch command if it is not there."""
        comp = cls(Path(data_dir) / name)
        if not comp.meta_path.exists():
            raise KitError(
                f"{comp.meta_path}: competition '{name}' not fetched; run `kit fetch {name}` first"
            )
        return comp

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def meta_path(self) -> Path:
        return self.root / "competition.json"

    @property
    def folds_path(self) -> Path:
        return self.root / "folds.csv"

    @property
    def shipped_path(self) -> Path:
        """shipped_files.json: {relpath under source_root: stamp} of every shipped file (see
        `write_shipped`). Kept out of competition.json, which every command reads: for 120,000
        files it is ~6 MB of JSON and ~30 MB of Python objects per parse."""
        return self.root / "shipped_files.json"

    def write_shipped(self, files: dict[str, str]) -> dict:
        """Write the shipped-file stamps (compact, sorted JSON: its sha256 is the data hash runs
        record) and return competition.json's "shipped_files" record {"path", "n", "sha256"}."""
        text = _stamps_text(files)
        write_text(self.shipped_path, text)
        return {"path": self.shipped_path.name, "n": len(files),
                "sha256": hashlib.sha256(text.encode()).hexdigest()}

    def shipped_stamps(self) -> dict[str, str]:
        """{relpath: stamp} recorded at fetch, checked against its recorded sha256 (a
        competition.json of an older kit holds them inline under "files")."""
        meta = self.meta()
        if "shipped_files" not in meta:
            return dict(meta.get("files", {}))
        rec, path = meta["shipped_files"], self.shipped_path
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != rec.get("sha256"):
            raise KitError(f"{path}: missing or changed since fetch; rerun "
                           f"`kit fetch {self.name} --force`")
        return json.loads(data)

    def shipped_sha256(self) -> str:
        """sha256 of the shipped-file stamps as compact sorted JSON (what provenance.json records
        as files_sha256); read from competition.json, not recomputed."""
        meta = self.meta()
        if "shipped_files" in meta:
            return meta["shipped_files"]["sha256"]
        # fetched by an older kit (inline "files") or written by hand: the same definition
        return hashlib.sha256(_stamps_text(meta.get("files", {})).encode()).hexdigest()

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def source_root(self) -> Path:
        """The folder holding the files Kaggle ships: `root/files`, or the folder that
        `kit fetch --from` read in place. Every path to a shipped file goes through here."""
        source = self.meta().get("source")
        if source is None:
            raise KitError(f"{self.root}: fetched by an older kit (Kaggle's files mixed with kit's); "
                           f"run `kit fetch {self.name} --force` to refetch it")
        return self.root / source if source == "files" else Path(source)

    def meta(self) -> dict:
        """competition.json, parsed once per version of the file (keyed by mtime and size), so
        per-image helpers such as `image_path` cost no JSON read. Returns a shallow copy: callers
        may set top-level keys (then `write_meta`), never edit nested values in place."""
        path = self.meta_path
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return read_json(path)  # raises the one-line "not found" error
        hit = _META_CACHE.get(path)
        if hit is None or hit[0] != stamp:
            hit = _META_CACHE[path] = (stamp, read_json(path))
        return dict(hit[1])

    def write_meta(self, meta: dict) -> None:
        write_json(self.meta_path, meta)

    @property
    def classes(self) -> list[str]:
        return list(self.meta()["classes"])

    def labels(self) -> pd.DataFrame:
        """Train labels as a DataFrame with columns Id (str), label (str), in CSV order
        (multilabel: the sorted set of class values, joined as metrics.set_sep says)."""
        m = self.meta()
        if "index" not in m:  # a competition.json written by hand (tests) without kit's index
            df = pd.read_csv(self.source_root / m["labels_csv"], dtype=str, keep_default_na=False)
            return df[[m["id_col"], m["label_col"]]].set_axis(["Id", "label"], axis=1)
        return self.train_index()[["Id", "label"]]

    def index_path(self, split: str) -> Path:
        """Kit's index of a split, written by fetch: `train_index.csv` (Id,label,path[,group]),
        `test_index.csv` (Id,path); rows in label-CSV / sample_submission order, paths relative
        to `image_root`."""
        return self.root / f"{split}_index.csv"

    def train_index(self) -> pd.DataFrame:
        return _read_index(self.index_path("train"), self.name)

    def test_index(self) -> pd.DataFrame:
        return _read_index(self.index_path("test"), self.name)

    @property
    def image_root(self) -> Path:
        """Where the index's image paths start: `source_root`, or `root` for images kit made
        itself (pixels given as CSV columns, written once as PNGs under `root/pixels/`)."""
        return self.root if self.meta().get("image_root") == "kit" else self.source_root

    def folds(self) -> pd.DataFrame:
        """folds.csv as DataFrame Id (str), label (str), fold (int), checked against what
        `kit fetch` recorded (its sha256 in competition.json) and against the class list."""
        path, meta = self.folds_path, self.meta()
        if not path.exists():
            raise KitError(f"{path}: missing; rerun `kit fetch {self.name}`")
        rec = meta.get("folds") or {}
        refold = (f"`kit fetch {self.name} --refold --folds {rec.get('k')} --seed {rec.get('seed')}`"
                  if rec.get("k") else f"`kit fetch {self.name} --refold`")
        if rec.get("sha256") and sha256_file(path) != rec["sha256"]:
            raise KitError(f"{path}: changed since kit fetch wrote it (sha256 differs from "
                           f"{self.meta_path.name}); remake it with {refold}")
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if list(df.columns) != ["Id", "label", "fold"]:
            raise KitError(f"{path}: columns {list(df.columns)}, expected Id,label,fold; "
                           f"remake it with {refold}")
        fold = pd.to_numeric(df["fold"], errors="coerce")
        bad = fold.isna() | (fold != fold.round())
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise KitError(f"{path}: line {i + 2}: fold {df['fold'].iloc[i]!r} is not an integer; "
                           f"remake it with {refold}")
        classes = set(meta.get("classes") or [])
        sep = set_sep(list(classes))  # multilabel: a set of class values (docs/design.md sec. 1)
        unknown = df["label"].map(
            lambda v: v not in classes and not set(split_set(v, sep)) <= classes)
        if classes and unknown.any():
            i = int(unknown.to_numpy().argmax())
            raise KitError(f"{path}: line {i + 2}: label {df['label'].iloc[i]!r} is not a class of "
                           f"{self.meta_path} ({len(classes)} classes); refetch with "
                           f"`kit fetch {self.name} --force`")
        if df["Id"].duplicated().any():
            dup = df.loc[df["Id"].duplicated(), "Id"].iloc[0]
            raise KitError(f"{path}: Id {dup} appears more than once; remake it with {refold}")
        return df.assign(fold=fold.astype(int))

    def sample_submission(self) -> pd.DataFrame:
        """sample_submission.csv with the id column as str."""
        m = self.meta()
        return pd.read_csv(self.source_root / m["sample_submission"], dtype={m["id_col"]: str},
                           keep_default_na=False)

    def test_ids(self) -> list[str]:
        """Test Ids in sample_submission order."""
        if "index" in self.meta():
            return self.test_index()["Id"].tolist()
        return self.sample_submission()[self.meta()["id_col"]].tolist()

    def image_path(self, split: str, image_id: str) -> Path:
        """Path of one image: `split` is 'train' or 'test'."""
        m = self.meta()
        if "index" not in m:
            return self.source_root / m[f"{split}_dir"] / f"{image_id}{m['ext']}"
        path = self.index_path(split)
        st = path.stat()
        hit = _INDEX_CACHE.get(path)
        if hit is None or hit[0] != (st.st_mtime_ns, st.st_size):
            df = _read_index(path, self.name)
            hit = _INDEX_CACHE[path] = ((st.st_mtime_ns, st.st_size),
                                        dict(zip(df["Id"], df["path"], strict=True)))
        if image_id not in hit[1]:
            raise KitError(f"{path}: no {split} image with Id {image_id}")
        return self.image_root / hit[1][image_id]

    def image_paths(self, split: str) -> list[str]:
        """Paths of a split's images, in the split's Id order (see `index_path`): one index read,
        not one `image_path` lookup per Id (~8x faster: each does three meta() stats). Strings,
        not Path objects: 100,000 Paths hold ~40 MB more (a decode builds this list)."""
        if "index" not in self.meta():  # hand-written competition.json (tests): no index file
            ids = self.labels()["Id"] if split == "train" else self.test_ids()
            return [str(self.image_path(split, i)) for i in ids]
        root = str(self.image_root)
        index = _read_index(self.index_path(split), self.name)
        return [os.path.join(root, p) for p in index["path"]]


def _stamps_text(files: dict[str, str]) -> str:
    """shipped_files.json's text: compact JSON with sorted keys (its sha256 is runs' data hash)."""
    return json.dumps(files, sort_keys=True)


_INDEX_CACHE: dict[Path, tuple[tuple[int, int], dict[str, str]]] = {}


def _read_index(path: Path, name: str) -> pd.DataFrame:
    if not path.exists():
        raise KitError(f"{path}: missing; rerun `kit fetch {name} --force`")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- runs

_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@,-]{0,127}")


def check_run_name(name: str, option: str = "--name") -> str:
    """`name` if it is one plain path component (letters, digits, `._+=@,-`, not starting with '.',
    at most 128 characters); else a KitError. A run name becomes `runs/<name>/`, and kit deletes
    files inside a run folder, so '.', '..', '../x', '/abs', 'a/b' and hidden names are refused."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise KitError(f"{option} {name!r}: not a plain run name; use one folder name of letters, "
                       "digits and ._+=@,- (not starting with '.'), e.g. --name resnet_a")
    return name


def disk_full(e: BaseException, where: Path | str, doing: str) -> KitError | None:
    """A one-line KitError for an OSError ENOSPC anywhere in `e`'s chain, else None."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return KitError(f"{where}: disk full while {doing}; free some space and rerun "
                            "(finished files are kept; half-written ones were discarded)")
        e = e.__cause__ or e.__context__
    return None
