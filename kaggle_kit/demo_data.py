"""The offline `demo` competition: scikit-learn's bundled handwritten digits in Kaggle's layout.

`load_digits()` ships 1,797 real 8x8 grey digits (values 0..16) with scikit-learn, so the demo needs
no network. Each image is upscaled to 32x32 (bilinear, in numpy so the bytes never depend on an
image library's resampler), repeated to 3 channels and written as PNG into `demo.zip`:

    train.csv              Id,Category    (Category: "zero" .. "nine")
    train/<Id>.png         32x32 RGB
    test/<Id>.png          32x32 RGB, labels withheld as on Kaggle
    sample_submission.csv  Id,Category    (every row "zero")

A fixed, seeded, per-class 20% split is the hidden test set; its labels are NOT in the zip:
`demo_solution()` returns them (the local Kaggle double scores demo submissions with it).
Ids are integers (train 0..1437, test 0..358), in a seeded shuffled order, not zero-padded.
Building twice gives the same bytes (fixed zip timestamps, entry order and compression level).
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kaggle_kit.workspace import atomic_path

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SEED = 2019            # fixes the hidden-test split and the Id order
TEST_FRACTION = 0.2    # per class
SIZE = 32              # output images are SIZE x SIZE x 3
_ZIP_TIME = (2019, 11, 18, 0, 0, 0)


def _upscale_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, pixel centres aligned (like align_corners=False)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels): images (N,32,32,3) uint8, labels int."""
    from sklearn.datasets import load_digits

    d = load_digits()
    a = _upscale_matrix(8, SIZE)
    grey = np.einsum("ij,njk,lk->nil", a, d.images * (255.0 / 16.0), a)  # (N,32,32) in 0..255
    images = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=3)
    rng = np.random.default_rng(SEED)
    is_test = np.zeros(len(d.target), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        is_test[idx[: int(round(TEST_FRACTION * len(idx)))]] = True
    train = rng.permutation(np.flatnonzero(~is_test))  # shuffled: Id order is not class order
    test = rng.permutation(np.flatnonzero(is_test))
    return images[train], d.target[train], images[test], d.target[test]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode()


def _entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever the host: same bytes everywhere
    zf.writestr(info, data, compresslevel=6)


def demo_solution() -> pd.DataFrame:
    """The hidden test labels: DataFrame Id (str), Category (class name), in test Id order."""
    _, _, test_x, test_y = _digits()
    return pd.DataFrame({"Id": [str(i) for i in range(len(test_x))],
                         "Category": [CLASSES[y] for y in test_y]})


def build_demo_zip(dest_dir: Path) -> Path:
    """Write `dest_dir/demo.zip` (Kaggle's layout, see module doc) atomically; return its path.

    Deterministic: every build has the same sha256."""
    train_x, train_y, test_x, _ = _digits()
    labels = pd.DataFrame({"Id": range(len(train_x)), "Category": [CLASSES[y] for y in train_y]})
    sample = pd.DataFrame({"Id": range(len(test_x)), "Category": CLASSES[0]})
    path = Path(dest_dir) / "demo.zip"
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _entry(zf, "train.csv", _csv(labels))
        _entry(zf, "sample_submission.csv", _csv(sample))
        for i, im in enumerate(train_x):
            _entry(zf, f"train/{i}.png", _png(im))
        for i, im in enumerate(test_x):
            _entry(zf, f"test/{i}.png", _png(im))
    return path
