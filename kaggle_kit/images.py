"""Decode-once image cache: `data/<comp>/cache/<split>_<size>.npy` (N,H,W,3) uint8 + `.ids.txt`.

Decoding a 32x32 PNG costs more than a small net's forward pass, so every image is decoded exactly
once per (split, size) and training / prediction read the uint8 array (memory-mapped).
Row i of the array is the image of line i of the ids file: train rows follow the label CSV,
test rows follow sample_submission.csv. Ids are joined to files by name, never by listing order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kaggle_kit import KitError
from kaggle_kit.workspace import CompetitionDir, atomic_path, write_text


def cache_key(size: tuple[int, int] | None) -> str:
    """'native' for images as shipped, else 'HxW' for images resized to that size."""
    return "native" if size is None else f"{size[0]}x{size[1]}"


def cache_paths(comp: CompetitionDir, split: str, size: tuple[int, int] | None) -> tuple[Path, Path]:
    """(array path, ids path) of one cache entry."""
    stem = f"{split}_{cache_key(size)}"
    return comp.cache_dir / f"{stem}.npy", comp.cache_dir / f"{stem}.ids.txt"


def decode_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to (H,W,3) uint8 RGB, resized (bilinear) to `size`=(H,W) if given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as e:
        raise KitError(f"{path}: image missing; refetch with `kit fetch --force`") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise KitError(f"{path}: unreadable or truncated image ({e}); "
                       "refetch with `kit fetch --force` or remove its row") from e


def split_ids(comp: CompetitionDir, split: str) -> list[str]:
    """Ids of a split in cache row order."""
    if split == "train":
        return comp.labels()["Id"].tolist()
    if split == "test":
        return comp.test_ids()
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def build_cache(comp: CompetitionDir, split: str, size: tuple[int, int] | None = None,
                progress: bool = True) -> dict:
    """Decode every image of `split` into the cache (skipped if already there). Returns info:
    {"path", "n", "shape", "bytes", "decode_s", "built": bool}."""
    arr_path, ids_path = cache_paths(comp, split, size)
    if arr_path.exists() and ids_path.exists():
        arr = np.load(arr_path, mmap_mode="r")
        return {"path": str(arr_path), "n": int(arr.shape[0]), "shape": list(arr.shape),
                "bytes": arr_path.stat().st_size, "decode_s": 0.0, "built": False}
    ids = split_ids(comp, split)
    t0 = time.perf_counter()
    images = [decode_image(comp.image_path(split, i), size) for i in _progress(ids, split, progress)]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        hist = _size_histogram(images)
        raise KitError(f"{comp.root}/{split}: images have mixed sizes {hist}; "
                       "set data.image_size in the recipe so they are resized to one size")
    arr = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    decode_s = time.perf_counter() - t0
    with atomic_path(arr_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    write_text(ids_path, "\n".join(ids) + "\n")
    return {"path": str(arr_path), "n": len(ids), "shape": list(arr.shape),
            "bytes": arr_path.stat().st_size, "decode_s": round(decode_s, 3), "built": True}


def load_cache(comp: CompetitionDir, split: str,
               size: tuple[int, int] | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, images (N,H,W,3) uint8, memory-mapped) for a split; builds the cache if missing."""
    arr_path, ids_path = cache_paths(comp, split, size)
    if not arr_path.exists() or not ids_path.exists():
        build_cache(comp, split, size, progress=False)
    ids = ids_path.read_text().split()
    arr = np.load(arr_path, mmap_mode="r")
    if len(ids) != arr.shape[0]:
        raise KitError(f"{arr_path}: cache is inconsistent ({len(ids)} ids, {arr.shape[0]} images);"
                       f" delete {comp.cache_dir} and rerun")
    return ids, arr


def _size_histogram(images: list[np.ndarray]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for im in images:
        key = f"{im.shape[0]}x{im.shape[1]}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: -kv[1]))


def _progress(items: list[str], split: str, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=f"decoding {split}", transient=True)


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
