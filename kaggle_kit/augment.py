"""Augmentation: albumentations pipelines from recipe specs (per image, uint8 HWC), fast vectorised
batch augmentation on tensors (flip + translate, mixup/cutmix), TTA views, and the targeted
(per-class) oversampling of issue 4.

This module never imports cli/recipe/kaggle_io: it takes plain lists/dicts and tensors.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from kaggle_kit import KitError

if TYPE_CHECKING:  # annotations only: albumentations is imported lazily where it is used
    import albumentations as A

TTA_VIEWS = ("orig", "hflip", "vflip", "shift", "shift_dr", "shift_ul", "hflip_shift_dr",
             "hflip_shift_ul")


def _transform_names() -> list[str]:
    import albumentations as A  # lazily: only recipes with per-image transforms need it

    return sorted(n for n, c in vars(A).items()
                  if inspect.isclass(c) and issubclass(c, A.BasicTransform)
                  and not n.startswith("_") and n not in ("BasicTransform", "DualTransform",
                                                          "ImageOnlyTransform"))


def build_one(spec: dict, where: str = "augment") -> A.BasicTransform:
    """One albumentations transform from {"name": "HorizontalFlip", "p": 0.5, **kwargs}.
    Unknown name -> KitError with close names; kwargs it does not take or rejects -> KitError
    naming the transform."""
    import albumentations as A

    if not isinstance(spec, dict) or "name" not in spec:
        raise KitError(f"{where}: each transform needs a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    names = _transform_names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see albumentations' transform list"
        raise KitError(f"{where}: unknown albumentations transform {name!r}; {hint}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t = getattr(A, name)(**kwargs)
        except (TypeError, ValueError) as e:
            msg = " ".join(str(e).split())[:300]
            raise KitError(f"{where}: {name}({kwargs}) rejected: {msg}") from e
    bad = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
    if bad:
        raise KitError(f"{where}: {bad[0]}; valid: {sorted(_init_args(getattr(A, name)))}")
    for w in caught:  # e.g. deprecations: pass them on
        warnings.warn(f"{where}: {w.message}", w.category, stacklevel=2)
    return t


def _init_args(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]


def build_transform(specs: list[dict], seed: int | None = None,
                    where: str = "augment") -> A.Compose | None:
    """albumentations Compose of the specs, in order (None for an empty list). Applied per image to
    (H,W,3) uint8 arrays; must keep the shape and dtype (normalisation happens in the train loop).
    seed: albumentations' own seed for reproducible pipelines."""
    if not specs:
        return None
    import albumentations as A

    return A.Compose([build_one(s, f"{where}[{i}]") for i, s in enumerate(specs)], seed=seed)


def build_class_transforms(specs: dict[int, list[dict]],
                           seed: int | None = None) -> dict[int, A.Compose]:
    """{class index: Compose} for the targeted (per-class) extra pipelines; empty ones dropped."""
    out = {}
    for c, s in specs.items():
        t = build_transform(s, None if seed is None else seed + 1000 * (int(c) + 1),
                            where=f"augment.targeted[{c}]")
        if t is not None:
            out[int(c)] = t
    return out


def _randint(high: int, shape: tuple, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(0, high, shape, generator=generator, device=gdev).to(device)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices in [-(n-1), 2(n-1)] into [0, n) as reflect padding does (no edge repeat)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def batch_augment(x: torch.Tensor, *, flip: bool, pad_crop: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flip (p=0.5) and random translation by up to `pad_crop` px per image
    (= reflect pad + random crop) of a (B,C,H,W) batch, as one vectorised gather on x's device
    (padding folded into the index arithmetic). Deterministic given `generator`. Returns a new
    (B,C,H,W) tensor in x's memory format (~6 ms for 256x3x32x32 on one CPU thread)."""
    if not flip and pad_crop <= 0:
        return x
    b, c, h, w = x.shape
    p = min(max(int(pad_crop), 0), h - 1, w - 1)
    dev = x.device
    dy = _randint(2 * p + 1, (b,), generator, dev) - p  # translation, px
    dx = _randint(2 * p + 1, (b,), generator, dev) - p
    cols = torch.arange(w, device=dev).expand(b, w)  # (B,W) source column of each output column
    if flip:
        flipped = _randint(2, (b,), generator, dev).bool()
        cols = torch.where(flipped[:, None], w - 1 - cols, cols)
    cols = _reflect(cols + dx[:, None], w)
    rows = _reflect(torch.arange(h, device=dev) + dy[:, None], h)  # (B,H)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    # gather on NCHW memory: measured faster than gathering (B,HW,C) rows, even with 2 copies
    out = x.contiguous().reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    return out.contiguous(memory_format=fmt)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate content by (dy, dx) px (reflect padding fills the border)."""
    p = max(abs(dy), abs(dx))
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return xp[..., p - dy:p - dy + h, p - dx:p - dx + w]


def tta_views(x: torch.Tensor, views: list[str]) -> list[torch.Tensor]:
    """One (B,C,H,W) tensor per view name, in order. Names: orig, hflip, vflip, shift (= shift_dr:
    content moved 1 px down-right), shift_ul (1 px up-left), hflip_shift_dr, hflip_shift_ul.
    Use the same list for validation (OOF) and test so OOF estimates test."""
    out = []
    for v in views:
        if v == "orig":
            out.append(x)
        elif v == "hflip":
            out.append(x.flip(-1))
        elif v == "vflip":
            out.append(x.flip(-2))
        elif v in ("shift", "shift_dr", "shift_ul", "hflip_shift_dr", "hflip_shift_ul"):
            base = x.flip(-1) if v.startswith("hflip") else x
            out.append(_shift(base, -1, -1) if v.endswith("ul") else _shift(base, 1, 1))
        else:
            close = difflib.get_close_matches(str(v), TTA_VIEWS, n=3)
            raise KitError(f"tta.views: unknown view {v!r}"
                           + (f"; did you mean {', '.join(close)}?" if close else "")
                           + f" (valid: {', '.join(TTA_VIEWS)})")
    return out


def mix_batch(x: torch.Tensor, y_onehot: torch.Tensor, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, prob: float = 1.0,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch with a permutation of itself (one lambda per batch, as timm's
    'batch' mode). With both alphas > 0, each batch picks one of the two at random.
    x: (B,C,H,W) float; y_onehot: (B,K) float (may be label-smoothed). Returns (x, y_soft), the
    inputs unchanged with probability 1-prob. Deterministic given `generator`."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return x, y_onehot
    seed = int(_randint(2**31 - 1, (1,), generator, torch.device("cpu")).item())
    rng = np.random.default_rng(seed)
    if rng.random() >= prob:
        return x, y_onehot
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    if not use_cutmix:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        return x * lam + x[perm] * (1 - lam), y_onehot * lam + y_onehot[perm] * (1 - lam)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
    h, w = x.shape[-2:]
    ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))  # box side, px
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box actually pasted
    return x, y_onehot * lam + y_onehot[perm] * (1 - lam)


def oversampled_indices(labels: np.ndarray, factors: dict[int, float],
                        rng: np.random.Generator) -> np.ndarray:
    """Shuffled indices into `labels` for one epoch: images of class c appear floor(f) times, and
    round(frac(f) * n_c) of them (drawn without replacement) once more, f = factors.get(c, 1).
    So class c contributes round(f * n_c) samples. Classes absent from `factors` appear once."""
    labels = np.asarray(labels)
    counts = np.ones(len(labels), dtype=np.int64)
    for c, f in factors.items():
        if not f >= 0:
            raise KitError(f"augment.targeted: oversampling factor for class {c} must be >= 0, "
                           f"got {f}")
        members = np.flatnonzero(labels == c)
        counts[members] = int(np.floor(f))
        n_extra = int(round((f - np.floor(f)) * len(members)))
        counts[rng.choice(members, size=n_extra, replace=False)] += 1
    idx = np.repeat(np.arange(len(labels)), counts)
    rng.shuffle(idx)
    return idx
