"""augment.py + images.ImageDataset: recipe transforms, batch augmentation, TTA, mixing,
targeted oversampling, and the uint8 dataset fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaggle_kit import KitError
from kaggle_kit.augment import (
    TTA_VIEWS,
    batch_augment,
    build_class_transforms,
    build_one,
    build_transform,
    mix_batch,
    oversampled_indices,
    tta_views,
)
from kaggle_kit.images import Batch, ImageDataset, collate_uint8


def _images(n=12, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_build_transform_runs_and_empty_is_none():
    assert build_transform([]) is None
    t = build_transform([{"name": "HorizontalFlip", "p": 1.0},
                         {"name": "Affine", "translate_percent": 0.1, "rotate": 10, "p": 0.5}])
    img = _images(1)[0]
    out = t(image=img)["image"]
    assert out.shape == img.shape and out.dtype == np.uint8


def test_build_transform_errors():
    with pytest.raises(KitError, match=r"augment\[0\]: unknown .*'HorizontalFlp'.*HorizontalFlip"):
        build_transform([{"name": "HorizontalFlp"}])
    with pytest.raises(KitError, match=r"augment\[1\]: .*'degrees' are not valid for .*Affine"):
        build_transform([{"name": "HorizontalFlip"}, {"name": "Affine", "degrees": 3}])
    with pytest.raises(KitError, match=r"Affine.*rejected"):
        build_transform([{"name": "Affine", "scale": "big"}])
    with pytest.raises(KitError, match="needs a 'name'"):
        build_transform([{"p": 0.5}])


def test_batch_augment_shape_determinism_and_content():
    x = torch.randn(16, 3, 10, 10)
    a = batch_augment(x, flip=True, pad_crop=2, generator=torch.Generator().manual_seed(1))
    b = batch_augment(x, flip=True, pad_crop=2, generator=torch.Generator().manual_seed(1))
    c = batch_augment(x, flip=True, pad_crop=2, generator=torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # no translation: every image is itself or its mirror, and both occur
    f = batch_augment(x, flip=True, pad_crop=0, generator=torch.Generator().manual_seed(0))
    same = [torch.equal(f[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(f[i], x[i].flip(-1)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)
    # translation only: the centre (away from the reflected border) is a shifted copy
    t = batch_augment(x, flip=False, pad_crop=2, generator=torch.Generator().manual_seed(0))
    for i in range(16):
        assert any(torch.equal(t[i, :, 2:8, 2:8], x[i, :, 2 + dy:8 + dy, 2 + dx:8 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert batch_augment(x, flip=False, pad_crop=0) is x


def test_batch_augment_keeps_channels_last():
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    assert batch_augment(x, flip=True, pad_crop=1).is_contiguous(memory_format=torch.channels_last)


def test_tta_views():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    orig, hflip, shift, back = tta_views(x, ["orig", "hflip", "shift", "shift_ul"])
    assert torch.equal(orig, x) and torch.equal(hflip, x.flip(-1))
    assert torch.equal(shift[..., 1:, 1:], x[..., :-1, :-1])  # content moved 1 px down-right
    assert torch.equal(back[..., :-1, :-1], x[..., 1:, 1:])
    with pytest.raises(KitError, match="unknown view 'hflp'.*hflip"):
        tta_views(x, ["hflp"])


def test_every_listed_tta_view_is_accepted_and_named_in_errors():
    """TTA_VIEWS is what the error message offers: each name must work."""
    x = torch.rand(2, 3, 6, 6)
    for v in TTA_VIEWS:
        (out,) = tta_views(x, [v])
        assert out.shape == x.shape, v
    with pytest.raises(KitError) as e:
        tta_views(x, ["nope"])
    assert all(v in str(e.value) for v in TTA_VIEWS)


@pytest.mark.parametrize("name", ["BasicTransform", "DualTransform", "ImageOnlyTransform"])
def test_albumentations_base_classes_are_not_transforms(name):
    with pytest.raises(KitError, match=f"augment: unknown albumentations transform '{name}'"):
        build_one({"name": name})


def test_mix_batch():
    x = torch.rand(8, 3, 16, 16)
    y = torch.eye(4)[torch.arange(8) % 4]
    assert mix_batch(x, y)[0] is x  # no alphas: unchanged
    for kw in ({"mixup_alpha": 1.0}, {"cutmix_alpha": 1.0}):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        xm, ym = mix_batch(x, y, generator=g1, **kw)
        xm2, ym2 = mix_batch(x, y, generator=g2, **kw)
        assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
        assert xm.shape == x.shape and torch.allclose(ym.sum(1), torch.ones(8))
        assert not torch.equal(ym, y)
    xm, ym = mix_batch(x, y, mixup_alpha=1.0, prob=0.0)
    assert xm is x and ym is y


def test_oversampled_indices_counts():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 4)
    idx = oversampled_indices(labels, {1: 2.5, 2: 0.5}, np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [10, 25, 2]
    per_image = np.bincount(idx, minlength=len(labels))
    assert set(per_image[labels == 1]) == {2, 3} and set(per_image[labels == 0]) == {1}
    assert not np.array_equal(idx, np.sort(idx))  # shuffled
    again = oversampled_indices(labels, {1: 2.5, 2: 0.5}, np.random.default_rng(0))
    assert np.array_equal(idx, again)
    with pytest.raises(KitError, match="factor for class 1"):
        oversampled_indices(labels, {1: -1.0}, np.random.default_rng(0))


def test_dataset_fast_path_equals_slow_path():
    imgs, labels = _images(), np.arange(12) % 3
    ds = ImageDataset(imgs, labels)
    rows = [5, 0, 11, 3]
    fast = ds.__getitems__(rows)
    slow = collate_uint8([ds[i] for i in rows])
    assert isinstance(fast, Batch) and fast.x.dtype == torch.uint8 and fast.x.shape == (4, 3, 8, 8)
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fast.x[1], torch.from_numpy(imgs[0]).permute(2, 0, 1))
    assert fast.y.tolist() == [2, 0, 2, 0] and fast.idx.tolist() == rows
    unlabelled = ImageDataset(imgs)
    assert unlabelled[2][1] == -1 and unlabelled.__getitems__([1, 2]).y.tolist() == [-1, -1]


def test_dataset_with_dataloader():
    ds = ImageDataset(_images(), np.arange(12) % 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_uint8)
    batches = list(loader)
    assert [len(b.idx) for b in batches] == [5, 5, 2]
    assert torch.cat([b.idx for b in batches]).tolist() == list(range(12))


def test_class_transforms_touch_only_their_classes():
    imgs, labels = _images(), np.arange(12) % 3
    flip_all = build_class_transforms({1: [{"name": "HorizontalFlip", "p": 1.0}]})
    ds = ImageDataset(imgs, labels, class_transforms=flip_all)
    b = ds.__getitems__(list(range(12)))
    for i in range(12):
        expect = imgs[i][:, ::-1] if labels[i] == 1 else imgs[i]
        assert torch.equal(b.x[i], torch.from_numpy(expect.copy()).permute(2, 0, 1)), i
        assert torch.equal(ds[i][0], b.x[i])
    assert build_class_transforms({2: []}) == {}


def test_common_then_class_transform_and_shape_guard():
    imgs, labels = _images(), np.arange(12) % 3
    common = build_transform([{"name": "VerticalFlip", "p": 1.0}])
    extra = build_class_transforms({0: [{"name": "HorizontalFlip", "p": 1.0}]})
    ds = ImageDataset(imgs, labels, transform=common, class_transforms=extra)
    b = ds.__getitems__([0, 1])
    assert torch.equal(b.x[0], torch.from_numpy(imgs[0][::-1, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(b.x[1], torch.from_numpy(imgs[1][::-1].copy()).permute(2, 0, 1))
    bad = ImageDataset(imgs, labels, transform=build_transform([{"name": "Resize", "height": 4,
                                                                 "width": 4}]))
    with pytest.raises(KitError, match="keep size and dtype"):
        bad[0]


def _flip_pattern(batch, imgs):
    return tuple(not torch.equal(batch.x[j], torch.from_numpy(imgs[int(i)]).permute(2, 0, 1))
                 for j, i in enumerate(batch.idx))


def test_loader_workers_get_distinct_reproducible_streams():
    imgs = _images(32)
    ds = ImageDataset(imgs, np.zeros(32, np.int64),
                      transform=build_transform([{"name": "HorizontalFlip", "p": 0.5}], seed=0))

    def patterns():
        loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2,
                                             collate_fn=collate_uint8,
                                             generator=torch.Generator().manual_seed(5))
        return [_flip_pattern(b, imgs) for b in loader]  # batch 0 from worker 0, 1 from worker 1

    first = patterns()
    assert first[0] != first[1]  # each worker reseeded (1 / 2**16 chance of a clash)
    assert patterns() == first  # same loader seed -> same augmentation
