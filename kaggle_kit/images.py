"""Images for training: reading the uint8 decode cache and the Dataset over it.

`open_cache` -> `CacheArray`: rows are read with os.pread instead of through a np.memmap, whose
touched pages count in the process's RSS: a streamed 20 GB cache then costs page cache (shared
between runs and ranks, evictable), not process memory. `stream_batches` reads ahead into pinned
memory for the GPU. Decoding one file is decode.py; building and checking the cache is cache.py
(their public names are re-exported here, where callers have always found them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from kaggle_kit import KitError
from kaggle_kit.cache import (  # noqa: F401 - re-exported: images.build_cache etc.
    Say,
    build_cache,
    cache_key,
    cache_paths,
    check_cache,
    load_cache,
    pixel_histogram,
    split_ids,
)
from kaggle_kit.decode import decode_image  # noqa: F401 - re-exported
from kaggle_kit.workspace import CompetitionDir


def open_cache(comp: CompetitionDir, split: str, size: tuple[int, int] | None = None,
               fit: str = "stretch", say: Say | None = None) -> tuple[list[str], CacheArray]:
    """(ids, CacheArray) of a split, built / repaired first if missing or corrupt (cheap check)."""
    build_cache(comp, split, size, progress=say is not None, fit=fit, full_check=False, say=say)
    arr_path, ids_path = cache_paths(comp, split, size, fit)
    return ids_path.read_text().splitlines(), CacheArray(arr_path)



class CacheArray:
    """Read-only (N,H,W,3) uint8 view of a cache .npy whose rows are read with os.pread.

    `index` (optional, (N,) int) maps row i of this view to row index[i] of the file (e.g. train
    rows in folds.csv order, or a data.limit subset). Supports len, .shape/.dtype/.ndim/.nbytes,
    `a[i]`, `a[slice]`, `a[int array]` (-> new ndarray) and `read_into(rows, out)`. Safe to use
    after fork (each process opens its own file descriptor) and to pickle."""

    def __init__(self, path: Path, index: np.ndarray | None = None):
        arr = np.load(path, mmap_mode="r")  # header only: shape and data offset
        self.path, self.offset, self.file_shape = Path(path), int(arr.offset), arr.shape
        del arr
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        n = self.file_shape[0] if self.index is None else len(self.index)
        self.shape = (n, *self.file_shape[1:])
        self.dtype, self.ndim = np.dtype(np.uint8), 4
        self.row_bytes = int(np.prod(self.file_shape[1:]))
        self.nbytes = n * self.row_bytes
        self._fd, self._pid = None, None

    def view(self, rows) -> CacheArray:
        """A CacheArray of rows `rows` of this one (no data read)."""
        rows = np.asarray(rows, dtype=np.int64)
        return CacheArray(self.path, rows if self.index is None else self.index[rows])

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self[np.array([key % len(self)])][0]
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        self.read_into(rows, out)
        return out

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Fill out[j] (a C-contiguous (len(rows),H,W,3) uint8 buffer) with row rows[j]."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"rows out of range for {len(self)} rows")
        if not out.flags.c_contiguous or out.shape != (len(rows), *self.shape[1:]):
            raise ValueError(f"out must be C-contiguous {(len(rows), *self.shape[1:])} uint8")
        phys = rows if self.index is None else self.index[rows]
        fd = self._file()
        flat = memoryview(out.reshape(len(rows), -1)).cast("B")
        if np.array_equal(phys, np.arange(phys[0], phys[0] + len(phys))):
            self._pread(fd, flat, int(phys[0]))  # one contiguous block: one read
            return
        rb = self.row_bytes
        for j, r in enumerate(phys.tolist()):
            self._pread(fd, flat[j * rb:(j + 1) * rb], r)

    def _pread(self, fd: int, buf: memoryview, row: int) -> None:
        got = os.preadv(fd, [buf], self.offset + row * self.row_bytes)
        if got != len(buf):
            raise KitError(f"{self.path}: truncated (short read at row {row}); "
                           "rerun `kit fetch` to rebuild the cache")

    def _file(self) -> int:
        if self._pid != os.getpid():  # first use, or a forked DataLoader worker
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


READ_THREADS = 4  # pread calls in flight per batch: one thread left the GPU waiting (6.4k vs
# 9.5k img/s at 128 px on an H200, where every syscall is slow)


def stream_batches(arr: CacheArray, batches: list, device, depth: int = 2):
    """Yield arr[rows] as a (B,H,W,3) uint8 tensor on `device` for each `rows` in `batches`.

    Threads read `depth` batches ahead (pread releases the GIL; each batch is split over
    READ_THREADS reads). For a GPU they read into a ring of depth + 1 pinned buffers and the copy
    is non_blocking, so reading and copying overlap the step's compute; a buffer is refilled only
    once the CUDA event after its last copy has completed, so pinned memory stays
    (depth + 1) x one batch however far the host runs ahead."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if not batches:
        return
    pin = torch.device(device).type == "cuda"
    slots = depth + 1
    ring = [torch.empty((max(map(len, batches)), *arr.shape[1:]), dtype=torch.uint8,
                        pin_memory=True) for _ in range(slots)] if pin else None
    copied: list = [None] * slots  # CUDA event after the last copy out of each ring buffer
    arr._file()  # open the file once here, not racing in the reader threads

    def read(i: int, pool) -> torch.Tensor:
        rows = np.asarray(batches[i])
        if pin:
            if copied[i % slots] is not None:
                copied[i % slots].synchronize()
            t = ring[i % slots][: len(rows)]
        else:  # CPU: the yielded tensor is the buffer itself, so a fresh one per batch
            t = torch.empty((len(rows), *arr.shape[1:]), dtype=torch.uint8)
        out, parts = t.numpy(), np.array_split(np.arange(len(rows)), READ_THREADS)
        for f in [pool.submit(arr.read_into, rows[p], out[p[0]:p[-1] + 1]) for p in parts if len(p)]:
            f.result()
        return t

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kit-read") as readers, \
            ThreadPoolExecutor(1, thread_name_prefix="kit-batch") as ahead_pool:
        ahead = deque(ahead_pool.submit(read, i, readers) for i in range(min(depth, len(batches))))
        for i in range(len(batches)):
            t = ahead.popleft().result()
            if pin:
                t = t.to(device, non_blocking=True)
                copied[i % slots] = torch.cuda.Event()
                copied[i % slots].record()
            if i + depth < len(batches):  # its ring buffer is batch i-1's: event recorded above
                ahead.append(ahead_pool.submit(read, i + depth, readers))
            yield t


# --- Dataset over the cache (owned by the models/augment helper) -------------------------------

class Batch(NamedTuple):
    """A collated batch as `ImageDataset.__getitems__` returns it: x (B,3,H,W) uint8 (NHWC memory,
    i.e. channels_last strides), y (B,) int64 labels (-1 if unlabelled), idx (B,) int64 rows."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


class ImageDataset:
    """Map-style dataset over a (N,H,W,3) uint8 array (e.g. the memory-mapped cache).

    `ds[i]` -> (uint8 tensor (3,H,W), label int or -1, i). `ds.__getitems__(rows)` -> Batch, the
    fast path torch's DataLoader uses (pass `collate_fn=collate_uint8`): rows without a per-image
    transform are sliced from the array in one go, with no per-image Python work; only rows that
    `transform` or their class's `class_transforms` entry touch go through albumentations (the
    class pipeline runs after the common one). Normalisation happens later, on the device.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None,
                 transform=None, class_transforms: dict | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N,H,W,3) uint8, got {images.shape} {images.dtype}")
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(images):
            raise ValueError(f"{len(self.labels)} labels for {len(images)} images")
        self.transform = transform
        self.class_transforms = {int(k): v for k, v in (class_transforms or {}).items()}
        self._worker_seed: int | None = None

    def _reseed_for_worker(self) -> None:
        """In a DataLoader worker, reseed the albumentations pipelines once from the worker's seed
        (drawn from the loader's generator, so it differs per worker and per epoch yet is
        reproducible); otherwise every worker copy would replay the same random stream."""
        info = torch.utils.data.get_worker_info()
        if info is None or self._worker_seed == info.seed:
            return
        self._worker_seed = info.seed
        pipes = [(-1, self.transform), *self.class_transforms.items()]
        for k, t in pipes:
            if t is not None:
                t.set_random_seed(int(info.seed + 7919 * (k + 2)) % 2**32)

    def __len__(self) -> int:
        return len(self.images)

    def _label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    def _augment(self, img: np.ndarray, label: int) -> np.ndarray:
        out = img
        for t in (self.transform, self.class_transforms.get(label)):
            if t is not None:
                out = t(image=np.ascontiguousarray(out))["image"]
        if out.shape != img.shape or out.dtype != np.uint8:
            raise KitError(f"augment: the transforms turned a {img.shape} uint8 image into "
                           f"{out.shape} {out.dtype}; keep size and dtype (no Resize/Normalize/"
                           "ToTensorV2: resizing is data.image_size, normalisation is the loop's)")
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        i = int(i)
        self._reseed_for_worker()
        label = self._label(i)
        img = self._augment(np.array(self.images[i]), label)  # copy: the cache is read-only
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), label, i

    def __getitems__(self, indices) -> Batch:
        rows = np.asarray(indices, dtype=np.int64)
        self._reseed_for_worker()
        x = np.asarray(self.images[rows])  # (B,H,W,3) uint8: fancy indexing copies once
        y = (np.full(len(rows), -1, np.int64) if self.labels is None else self.labels[rows])
        if self.transform is not None:
            touched = np.arange(len(rows))
        else:
            touched = np.flatnonzero(np.isin(y, list(self.class_transforms))) \
                if self.class_transforms else np.zeros(0, np.int64)
        for j in touched:
            x[j] = self._augment(x[j], int(y[j]))
        return Batch(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y.copy()),
                     torch.from_numpy(rows))


def collate_uint8(batch) -> Batch:
    """collate_fn for ImageDataset: passes a Batch from `__getitems__` through; stacks a list of
    `__getitem__` samples into a Batch otherwise."""
    if isinstance(batch, Batch):
        return batch
    xs, ys, idx = zip(*batch, strict=True)
    x = torch.stack([t.permute(1, 2, 0) for t in xs]).permute(0, 3, 1, 2)  # NHWC memory
    return Batch(x, torch.tensor(ys, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64))
