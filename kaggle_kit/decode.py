"""Decode one image file to the (H,W,3) uint8 RGB array the cache stores.

What kit does with images that are not plain 8-bit RGB (the same for every competition):
- 16-bit / 32-bit integer and float grayscale (PNG, TIFF: PIL modes I;16*, I, F) are scaled to
  0..255 by the image's own range (min -> 0, max -> 255, rounded): a 12-bit scan stored in 16
  bits keeps its contrast instead of landing in 0..15 (fixed /257) or being clipped to 0/255
  (PIL's convert("RGB")). The price: absolute intensity is not comparable between images.
  A constant image becomes 0. 16-bit RGB PNGs are reduced to 8 bits per channel by PIL.
- grayscale (L, 1) is replicated to 3 channels; palette (P) images are expanded through their
  palette; CMYK / YCbCr are converted to RGB.
- alpha (RGBA, LA, P with transparency) is composited over white, what an image viewer shows;
  a fully opaque image keeps its RGB bytes unchanged.
- sizes: `size=(H,W)` resizes with PIL bilinear: fit "stretch" scales to exactly (H,W) (aspect
  ratio not kept), fit "crop" scales the short side and centre-crops (ImageOps.fit), keeping it.

Plain 8-bit RGB / L files decode to exactly the bytes kit has always cached. Imports only numpy
and PIL: it runs in the decode worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kaggle_kit import KitError

# Bump when decoding changes what bytes an image becomes: caches record it and are rebuilt.
DECODE_VERSION = 2
FITS = ("stretch", "crop")
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_image(path: Path, size: tuple[int, int] | None = None,
                 fit: str = "stretch") -> np.ndarray:
    """Decode one image to (H,W,3) uint8 RGB, resized (bilinear) to `size`=(H,W) if given,
    by `fit` ("stretch" or "crop": short side + centre crop). Errors are one line naming it."""
    try:
        with Image.open(path) as im:
            rgb = to_rgb(im)
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = resize(rgb, size, fit)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError as e:
        raise KitError(f"{path}: image missing; refetch with `kit fetch --force`") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise KitError(f"{path}: unreadable or truncated image ({e}); "
                       "refetch with `kit fetch --force` or remove its row") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB PIL image of any mode (see the module docstring for what each mode becomes)."""
    if im.mode in _WIDE_MODES:
        return Image.fromarray(stretch_to_uint8(np.asarray(im))).convert("RGB")
    if im.mode == "P":  # palette: expand; keep its transparency as alpha, composited below
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not opaque: what a viewer shows
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return rgba.convert("RGB")
    return im.convert("RGB")


def stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    """(H,W) integer or float array -> uint8 with its min at 0 and max at 255 (rounded)."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    out = np.where(finite, (a - lo) * (255.0 / (hi - lo)), 0.0)
    return np.rint(out).astype(np.uint8)


def resize(im: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    """Resize an RGB PIL image to `size`=(H,W): "stretch" (exact, aspect not kept) or "crop"."""
    if fit == "crop":
        return ImageOps.fit(im, (size[1], size[0]), Image.BILINEAR)
    if fit != "stretch":
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    return im.resize((size[1], size[0]), Image.BILINEAR)
