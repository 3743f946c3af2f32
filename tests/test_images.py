"""Decoding (16-bit, grayscale, palette, alpha, sizes), the decode cache (parallel = serial bytes,
interrupted build resumed, corruption detected) and streamed training = device-resident training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_kit import KitError, cache, images, train_setup
from kaggle_kit.decode import decode_image
from kaggle_kit.fetch import fetch
from kaggle_kit.workspace import CompetitionDir

RNG = np.random.default_rng(0)


def noise_comp(root: Path, n_train: int = 24, n_test: int = 6, sizes=((12, 10),)) -> Path:
    """A competition folder of random-noise PNGs (two classes); image i has sizes[i % len]."""
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / split / f"{i}.png")
    pd.DataFrame({"Id": range(n_train), "Category": ["a", "b"] * (n_train // 2)}).to_csv(
        root / "train.csv", index=False)
    pd.DataFrame({"Id": range(n_test), "Category": "a"}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


@pytest.fixture()
def comp(tmp_path: Path) -> CompetitionDir:
    fetch("noise", data_dir=tmp_path / "data", source=noise_comp(tmp_path / "src"), n_folds=2)
    return CompetitionDir.open(tmp_path / "data", "noise")


def _files(comp: CompetitionDir, split: str = "train", key: str = "native") -> tuple[Path, Path]:
    return comp.cache_dir / f"{split}_{key}.npy", comp.cache_dir / f"{split}_{key}.ids.txt"


# ----------------------------------------------------------------------------- decoding


def test_16bit_png_and_tiff_keep_their_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit in 16 bits
    for ext in (".png", ".tif"):
        Image.fromarray(ramp).save(tmp_path / f"r{ext}")
        out = decode_image(tmp_path / f"r{ext}")
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256  # not 0/255
        assert np.array_equal(out[..., 0], np.rint(ramp / 4095 * 255).astype(np.uint8))


def test_gray_palette_and_alpha(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(decode_image(tmp_path / "g.png"), np.stack([gray] * 3, -1))

    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(8)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(decode_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")  # opaque: the RGB bytes unchanged
    assert np.array_equal(decode_image(tmp_path / "opaque.png"), rgb)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert (out[0, 0] == 255).all()  # transparent -> white background
    half = (rgb[0, 1].astype(int) * 128 + 255 * 127) / 255  # 50% over white
    assert np.abs(out[0, 1].astype(int) - half).max() <= 1
    assert np.array_equal(out[1:], rgb[1:])

    pal_t = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), mode="P")
    pal_t.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal_t.info["transparency"] = 0
    pal_t.save(tmp_path / "pt.png", transparency=0)
    out = decode_image(tmp_path / "pt.png")
    assert (out[0, 0] == 255).all() and list(out[0, 1]) == [200, 100, 50]


def test_non_square_stretch_or_centre_crop(tmp_path: Path) -> None:
    im = np.zeros((10, 20, 3), np.uint8)  # H=10, W=20: red outer quarters, green middle half
    im[:, :5, 0] = im[:, 15:, 0] = 255
    im[:, 5:15, 1] = 255
    Image.fromarray(im).save(tmp_path / "wide.png")
    crop = decode_image(tmp_path / "wide.png", (8, 8), "crop")
    stretch = decode_image(tmp_path / "wide.png", (8, 8), "stretch")
    assert crop.shape == stretch.shape == (8, 8, 3)
    assert (crop[:, 1:-1, 1] == 255).all() and (crop[:, 1:-1, 0] == 0).all()  # the centre kept
    assert crop[..., 1].min() > 200 and crop[..., 0].max() < 50  # (bilinear bleeds at the rim)
    assert (stretch[:, 0, 0] == 255).all() and (stretch[:, -1, 0] == 255).all()


# ----------------------------------------------------------------------------- the cache


def test_parallel_decode_equals_serial_and_the_np_save_format(comp, monkeypatch) -> None:
    arr_path, ids_path = _files(comp)
    paths = [comp.image_path("train", i) for i in comp.labels()["Id"]]
    expected = arr_path.with_name("expected.npy")
    np.save(expected, np.stack([decode_image(p) for p in paths]))  # what kit cached before
    assert arr_path.read_bytes() == expected.read_bytes()  # fetch's build (one chunk)
    monkeypatch.setattr(cache, "CHUNK_BYTES", 5 * 12 * 10 * 3)  # 5 rows a chunk: 5 tasks
    for workers in (1, 2):
        for p in (arr_path, ids_path, cache.record_path(arr_path)):
            p.unlink()
        info = cache.build_cache(comp, "train", progress=False, workers=workers)
        assert info["built"] and info["n"] == 24
        assert arr_path.read_bytes() == expected.read_bytes(), workers
        assert len(json.loads(cache.record_path(arr_path).read_text())["chunks"]) == 5
    ids, arr = images.open_cache(comp, "train")
    want = np.load(expected)
    assert ids == comp.labels()["Id"].tolist() and arr.shape == want.shape
    assert np.array_equal(arr[[5, 0, 23]], want[[5, 0, 23]]) and np.array_equal(arr[3], want[3])
    view = arr.view(np.array([7, 2, 9]))
    assert np.array_equal(view[1:], want[[2, 9]]) and np.array_equal(np.asarray(view), want[[7, 2, 9]])


def test_interrupted_build_is_resumed_not_restarted(comp, monkeypatch) -> None:
    arr_path, _ = _files(comp)
    monkeypatch.setattr(cache, "CHUNK_BYTES", 5 * 12 * 10 * 3)
    arr_path.unlink()
    cache.build_cache(comp, "train", progress=False, workers=1)  # uninterrupted, 5 chunks
    before, record = arr_path.read_bytes(), cache._record(arr_path)
    arr_path.unlink()
    real, calls = cache.decode_chunk, []

    def dies_on_third(task):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while decoding chunk 3 of 5
        calls.append(task[0])
        return real(task)

    monkeypatch.setattr(cache, "decode_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(comp, "train", progress=False, workers=1)
    assert not arr_path.exists()  # nothing half-written under the final name
    assert cache.check_cache(arr_path, comp.labels()["Id"].tolist()) == "missing"
    monkeypatch.setattr(cache, "decode_chunk", lambda t: calls.append(t[0]) or real(t))
    cache.build_cache(comp, "train", progress=False, workers=1)
    assert calls == [0, 1, 2, 3, 4]  # chunks 0 and 1 were not decoded again
    assert arr_path.read_bytes() == before
    after = cache._record(arr_path)  # chunk hashes and the pixel histogram: the resumed chunks'
    assert (after["chunks"], after["histogram"]) == (record["chunks"], record["histogram"])
    assert len(after["chunks"]) == 5 and sum(after["histogram"][0]) == after["shape"][0] * 12 * 10
    assert sorted(p.name for p in comp.cache_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("damage", ["zero_rows", "truncate", "swap_ids", "no_record"])
def test_corrupt_cache_is_detected_and_rebuilt(comp, damage: str, capsys) -> None:
    arr_path, ids_path = _files(comp)
    before, ids = arr_path.read_bytes(), comp.labels()["Id"].tolist()
    if damage == "zero_rows":  # same size, rows 3..4 zeroed in place
        with open(arr_path, "r+b") as f:
            f.seek(len(before) - 21 * 360)
            f.write(bytes(2 * 360))
    elif damage == "truncate":
        arr_path.write_bytes(before[:-1000])
    elif damage == "swap_ids":
        lines = ids_path.read_text().splitlines()
        lines[0], lines[1] = lines[1], lines[0]
        ids_path.write_text("\n".join(lines) + "\n")
    else:
        cache.record_path(arr_path).unlink()
    problem = cache.check_cache(arr_path, ids, full=False)
    assert problem and problem != "missing"
    out = fetch("noise", data_dir=comp.root.parent, source=Path("/nonexistent.zip"), n_folds=2)
    assert out["status"].startswith("files verified; rebuilt missing or corrupt cache")
    assert f"{problem}; rebuilding" in capsys.readouterr().err
    assert arr_path.read_bytes() == before and cache.check_cache(arr_path, ids) is None
    again = fetch("noise", data_dir=comp.root.parent, source=Path("/nonexistent.zip"), n_folds=2)
    assert again["status"].startswith("no-op: already fetched and verified")


def test_big_cache_checks_are_cheap_but_catch_a_write(comp, monkeypatch) -> None:
    arr_path, _ = _files(comp)
    ids = comp.labels()["Id"].tolist()
    monkeypatch.setattr(cache, "FULL_CHECK_BYTES", 0)  # treat it as a big cache
    st = arr_path.stat()
    with open(arr_path, "r+b") as f:  # zero the last row, keep size
        f.seek(st.st_size - 360)
        f.write(bytes(360))
    assert "differ" in cache.check_cache(arr_path, ids, full=False)  # mtime moved: every chunk
    os.utime(arr_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the write: sampled chunks
    assert "differ" in cache.check_cache(arr_path, ids, full=False)  # last chunk is sampled


def test_refuses_a_cache_the_disk_cannot_hold(comp, monkeypatch) -> None:
    arr_path, _ = _files(comp)
    arr_path.unlink()
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("U", (), {"free": 10_000})())
    with pytest.raises(KitError, match=r"needs 0\.00 GB .*only 0\.00 GB are free") as e:
        cache.build_cache(comp, "train", progress=False)
    assert "\n" not in str(e.value) and not arr_path.exists()


# ----------------------------------------------------------------------------- training


def test_streamed_training_equals_device_training(train_tiny, capsys) -> None:
    train_tiny("demo", "data.load=device", "train.epochs=1", name="dev")
    assert "kept on " in capsys.readouterr().out
    train_tiny("demo", "data.load=stream", "train.epochs=1", name="str")
    assert "streamed from" in capsys.readouterr().out
    runs = train_tiny.runs_dir
    assert (runs / "dev" / "oof.csv").read_bytes() == (runs / "str" / "oof.csv").read_bytes()
    assert (runs / "dev" / "test.csv").read_bytes() == (runs / "str" / "test.csv").read_bytes()


def test_auto_placement_by_size() -> None:
    import torch

    cpu = torch.device("cpu")
    assert train_setup.placement("auto", 10 << 20, cpu)[0] == "device"
    assert train_setup.placement("auto", 2 << 30, cpu)[0] == "stream"
    assert train_setup.placement("stream", 10, cpu) == ("stream", "data.load=stream")


def test_mixed_sizes_train_at_the_recipe_size(tmp_path: Path, capsys) -> None:
    from kaggle_kit.train import run

    src = noise_comp(tmp_path / "src", 8, 2, sizes=((12, 10), (9, 14)))
    fetch("mixed", data_dir=tmp_path / "data", source=src, n_folds=2)
    over = ["competition=mixed", "train.epochs=1", "train.batch_size=2", "train.num_workers=0",
            "train.warmup_epochs=0", "model.name=kit_baseline_cnn"]
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    kw = dict(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    with pytest.raises(KitError, match=r"mixed sizes .*set data\.image_size"):
        run(recipe, [*over, "data.image_size=null"], name="a", **kw)
    capsys.readouterr()
    run(recipe, [*over, "data.image_size=16", "data.fit=crop"], name="b", **kw)
    out = capsys.readouterr().out
    assert out.count("resizing 10 images (12x10, 9x14) to 16x16") == 1 and "data.fit=crop" in out
    comp = CompetitionDir.open(tmp_path / "data", "mixed")
    assert np.load(comp.cache_dir / "train_16x16_crop.npy").shape == (8, 16, 16, 3)
