"""kit fetch: layout detection, validation, folds, idempotency, safe unzip, the demo competition.

Real files everywhere: the shared Kaggle zips (session fixtures from fx_data.py) and tiny
synthetic competitions written as PNGs into tmp dirs."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_kit import KitError
from kaggle_kit.demo_data import CLASSES, build_demo_zip, demo_solution
from kaggle_kit.fetch import fetch
from kaggle_kit.images import load_cache
from kaggle_kit.runfiles import data_hashes
from kaggle_kit.unzip import safe_unzip
from kaggle_kit.workspace import CompetitionDir, sha256_file
from tests.conftest import requires_shared

# ----------------------------------------------------------------------------- helpers


def _pixel(image_id: str) -> int:
    """Each synthetic image is one flat grey level derived from its Id, so rows can be checked."""
    return (int(image_id) * 37) % 251


def make_comp(root: Path, classes=("cat", "dog"), per_class=4, n_test=3, size=(8, 8),
              train_dir="train", test_dir="test", ext=".png") -> Path:
    """A tiny competition folder in Kaggle's layout; Ids 1..N are not zero-padded."""
    ids = [str(i) for i in range(1, per_class * len(classes) + 1)]
    labels = [classes[i % len(classes)] for i in range(len(ids))]
    for folder, split_ids in ((train_dir, ids), (test_dir, [str(i) for i in range(1, n_test + 1)])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in split_ids:
            write_image(root / folder / f"{i}{ext}", _pixel(i), size)
    pd.DataFrame({"Id": ids, "Category": labels}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"Id": range(1, n_test + 1), "Category": classes[0]}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


def write_image(path: Path, value: int, size=(8, 8)) -> None:
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def zip_dir(src: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return zip_path


def fetch_error(src: Path, data: Path, **kw) -> str:
    """Fetch `src` expecting a KitError; check nothing was left behind; return the message."""
    with pytest.raises(KitError) as e:
        fetch("toy", data_dir=data, source=src, **kw)
    assert not data.exists() or list(data.iterdir()) == []  # no partial folder, no zip left
    return str(e.value)


# ----------------------------------------------------------------------------- shared competitions


def _check_shared(data_dir: Path, name: str, n_classes: int, layout: tuple) -> None:
    comp = CompetitionDir.open(data_dir, name)
    m = comp.meta()
    assert (m["labels_csv"], m["id_col"], m["label_col"], m["train_dir"], m["test_dir"],
            m["ext"], m["sample_submission"]) == layout
    assert len(m["classes"]) == n_classes and m["classes"] == sorted(m["classes"])
    assert (m["n_train"], m["n_test"]) == (7200, 1800)
    assert m["image_sizes"] == {"32x32": 9000}
    files = comp.shipped_stamps()
    assert len(files) == 9002 and sha256_file(comp.source_root / "train.csv") == files["train.csv"]
    assert "files" not in m and m["shipped_files"]["n"] == 9002  # competition.json stays small
    folds = comp.folds()
    assert sha256_file(comp.folds_path) == m["folds"]["sha256"]
    assert m["folds"]["k"] == 4 and folds["fold"].value_counts().tolist() == [1800] * 4
    per_class = pd.crosstab(folds["label"], folds["fold"])  # every class spread evenly
    assert (per_class.values == 7200 // n_classes // 4).all()
    assert folds["Id"].tolist() == comp.labels()["Id"].tolist()
    ids, arr = load_cache(comp, "train")
    assert arr.shape == (7200, 32, 32, 3) and ids == comp.labels()["Id"].tolist()
    row = ids.index("10")  # joined by name: row of Id 10 is the decoded 10.png
    assert np.array_equal(arr[row], np.asarray(Image.open(comp.image_path("train", "10"))))
    assert load_cache(comp, "test")[0] == comp.test_ids()


@requires_shared
def test_animals15_detected_with_no_flags(animals15_data_dir):
    _check_shared(animals15_data_dir, "animals15", 15, (
        "train.csv", "Id", "Category", "train_images", "test_images", ".png",
        "sample_submission.csv"))


@requires_shared
def test_cifar10_mini_detected_with_no_flags(cifar10_mini_data_dir):
    _check_shared(cifar10_mini_data_dir, "cifar10-mini", 10, (
        "train.csv", "Id", "Category", "train", "test", ".jpg", "sample_submission.csv"))


@requires_shared
def test_rerun_is_a_verified_noop_that_decodes_nothing(animals15_data_dir, capsys):
    comp = CompetitionDir.open(animals15_data_dir, "animals15")
    before = {p: p.stat().st_mtime_ns for p in [comp.meta_path, comp.folds_path,
                                                *comp.cache_dir.iterdir()]}
    out = fetch("animals15", data_dir=animals15_data_dir, source=Path("/nonexistent.zip"))
    assert out["status"].startswith("no-op") and out["decode_s"] == 0.0
    assert out["n_train"] == 7200 and out["cache_mb"] > 27
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "no-op" in capsys.readouterr().err


# ----------------------------------------------------------------------------- synthetic layouts


def test_ids_joined_to_files_by_name_and_folder_import(tmp_path):
    src = make_comp(tmp_path / "src", per_class=6)  # Ids 1..12: "10" lists before "2"
    out = fetch("toy", data_dir=tmp_path / "data", source=src, n_folds=3)
    assert out["status"] == "fetched" and (out["n_train"], out["n_test"], out["classes"]) == (12, 3, 2)
    comp = CompetitionDir.open(tmp_path / "data", "toy")
    ids, arr = load_cache(comp, "train")
    assert ids == [str(i) for i in range(1, 13)]
    assert [int(a[0, 0, 0]) for a in arr] == [_pixel(i) for i in ids]
    assert comp.test_ids() == ["1", "2", "3"]
    assert set(comp.shipped_stamps()) == {"train.csv", "sample_submission.csv",
                                         *(f"train/{i}.png" for i in ids),
                                         *(f"test/{i}.png" for i in range(1, 4))}


def test_nested_top_folder_and_zips_inside_the_zip(tmp_path):
    src = make_comp(tmp_path / "src", train_dir="imgs_train", test_dir="imgs_test")
    outer = tmp_path / "stage" / "toy"
    outer.mkdir(parents=True)
    zip_dir(src / "imgs_train", outer / "imgs_train.zip")  # images at the top of train.zip
    zip_dir(src / "imgs_test", outer / "imgs_test.zip", prefix="imgs_test/")  # a folder inside
    for csv in ("train.csv", "sample_submission.csv"):
        (outer / csv).write_bytes((src / csv).read_bytes())
    zip_path = zip_dir(tmp_path / "stage", tmp_path / "toy.zip")  # everything under toy/
    fetch("toy", data_dir=tmp_path / "data", source=zip_path, n_folds=2)
    comp = CompetitionDir.open(tmp_path / "data", "toy")
    m = comp.meta()
    assert (m["train_dir"], m["test_dir"], m["n_train"], m["n_test"]) == ("imgs_train", "imgs_test", 8, 3)
    assert not any(k.endswith(".zip") for k in comp.shipped_stamps())


def test_ambiguous_layout_names_the_flag_to_pass(tmp_path):
    src = make_comp(tmp_path / "src", train_dir="a", test_dir="b", n_test=8)
    df = pd.read_csv(src / "train.csv")
    df["source"] = "web"  # a second candidate label column
    df.to_csv(src / "train.csv", index=False)
    sub = pd.read_csv(src / "sample_submission.csv").rename(columns={"Category": "Expected"})
    sub.to_csv(src / "sample_submission.csv", index=False)
    data = tmp_path / "data"
    assert "--label-col" in fetch_error(src, data, n_folds=2)
    # folders a and b both hold every test Id and neither is named train/test
    assert "--train-dir" in fetch_error(src, data, n_folds=2, label_col="Category")
    out = fetch("toy", data_dir=data, source=src, n_folds=2, label_col="Category",
                train_dir="a", test_dir="b")
    assert out["classes"] == 2
    m = CompetitionDir.open(data, "toy").meta()
    assert (m["label_col"], m["train_dir"], m["test_dir"]) == ("Category", "a", "b")


def test_ids_with_extension_and_an_extra_test_csv(tmp_path):
    src = make_comp(tmp_path / "src", train_dir="images", test_dir="test_images", ext=".jpg")
    df = pd.read_csv(src / "train.csv", dtype=str).rename(columns={"Id": "image_id"})
    df["image_id"] += ".jpg"  # the CSV names files, not Ids
    df.to_csv(src / "train.csv", index=False)
    sub = pd.read_csv(src / "sample_submission.csv", dtype=str).rename(columns={"Id": "image_id"})
    sub["image_id"] += ".jpg"
    sub.to_csv(src / "sample_submission.csv", index=False)
    sub[["image_id"]].to_csv(src / "test.csv", index=False)  # Kaggle often ships this too
    fetch("toy", data_dir=tmp_path / "data", source=src, n_folds=2)
    comp = CompetitionDir.open(tmp_path / "data", "toy")
    m = comp.meta()
    assert (m["labels_csv"], m["id_col"], m["ext"], m["train_dir"], m["test_dir"]) == (
        "train.csv", "image_id", "", "images", "test_images")
    ids, arr = load_cache(comp, "train")
    assert ids[0] == "1.jpg" and abs(int(arr[0].mean()) - _pixel("1")) <= 2  # JPEG is lossy


# ----------------------------------------------------------------------------- validation


def test_missing_image_for_an_id(tmp_path):
    src = make_comp(tmp_path / "src")
    (src / "train" / "3.png").unlink()
    msg = fetch_error(src, tmp_path / "data", n_folds=2)
    assert "train.csv line 4: no image train/3.png for Id 3" in msg and "remove the row" in msg


def test_missing_test_image(tmp_path):
    src = make_comp(tmp_path / "src")
    (src / "test" / "2.png").unlink()
    assert "sample_submission.csv line 3: no image test/2.png" in fetch_error(src, tmp_path / "d")


def test_image_with_no_id_is_a_warning(tmp_path, capsys):
    src = make_comp(tmp_path / "src")
    write_image(src / "train" / "99.png", 5)
    out = fetch("toy", data_dir=tmp_path / "data", source=src, n_folds=2)
    assert out["n_train"] == 8 and len(out["warnings"]) == 1
    assert "train/99.png: image with no row in train.csv" in out["warnings"][0]
    assert "train/99.png" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_unreadable_or_truncated_image(tmp_path, damage):
    src = make_comp(tmp_path / "src", size=(32, 32))
    path = src / "train" / "5.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello")
    msg = fetch_error(src, tmp_path / "data", n_folds=2)
    assert "train/5.png: unreadable" in msg and "--force" in msg and str(src) in msg


def test_duplicate_ids(tmp_path):
    src = make_comp(tmp_path / "src")
    df = pd.read_csv(src / "train.csv", dtype=str)
    pd.concat([df, df.iloc[[2]]]).to_csv(src / "train.csv", index=False)
    msg = fetch_error(src, tmp_path / "data", n_folds=2)
    assert "train.csv line 10: Id 3 appears again (first on line 4" in msg


def test_duplicate_test_ids(tmp_path):
    src = make_comp(tmp_path / "src")
    (src / "sample_submission.csv").write_text("Id,Category\n1,cat\n2,cat\n1,cat\n")
    assert "sample_submission.csv line 4: Id 1 appears again" in fetch_error(src, tmp_path / "d")


def test_empty_label(tmp_path):
    src = make_comp(tmp_path / "src")
    df = pd.read_csv(src / "train.csv", dtype=str)
    df.loc[4, "Category"] = ""
    df.to_csv(src / "train.csv", index=False)
    msg = fetch_error(src, tmp_path / "data", n_folds=2)
    assert "train.csv line 6: Id 5 has an empty Category" in msg and "fill it in" in msg


def test_empty_label_csv(tmp_path):
    src = make_comp(tmp_path / "src")
    (src / "train.csv").write_text("Id,Category\n")
    assert "train.csv: no rows" in fetch_error(src, tmp_path / "data")


def test_mixed_sizes_warn_with_histogram_and_skip_the_native_cache(tmp_path):
    src = make_comp(tmp_path / "src", size=(8, 8))
    write_image(src / "train" / "2.png", 9, (16, 12))
    out = fetch("toy", data_dir=tmp_path / "data", source=src, n_folds=2)
    assert out["image_sizes"] == {"8x8": 10, "16x12": 1}
    assert "mixed sizes {'8x8': 10, '16x12': 1}" in out["warnings"][0]
    assert "image_size" in out["warnings"][0]
    comp = CompetitionDir.open(tmp_path / "data", "toy")
    assert comp.meta()["cache"] == {} and not comp.cache_dir.exists()
    assert fetch("toy", data_dir=tmp_path / "data", n_folds=2)["status"].startswith("no-op")
    path = src / "train" / "3.png"  # without a cache, truncation is still found by decoding
    path.write_bytes(path.read_bytes()[:45])  # signature + IHDR + a piece of IDAT
    assert "train/3.png: unreadable or truncated" in fetch_error(src, tmp_path / "d2", n_folds=2)


def test_class_with_fewer_images_than_folds_gets_fold_minus_one(tmp_path):
    src = make_comp(tmp_path / "src", classes=("cat", "dog", "fox"), per_class=4)
    df = pd.read_csv(src / "train.csv", dtype=str)
    fox = df.index[df["Category"] == "fox"]
    df.drop(index=fox[1:]).to_csv(src / "train.csv", index=False)  # fox: 1 image
    out = fetch("toy", data_dir=tmp_path / "data", source=src, n_folds=4)
    assert "1 images of 1 classes with fewer than 4 images get fold -1" in out["warnings"][-1]
    folds = CompetitionDir.open(tmp_path / "data", "toy").folds()
    assert folds.loc[folds["label"] == "fox", "fold"].tolist() == [-1]
    assert sorted(folds.loc[folds["label"] != "fox", "fold"]) == [0, 0, 1, 1, 2, 2, 3, 3]


# ----------------------------------------------------------------------------- idempotency + folds


def test_refold_rules_and_force(tmp_path):
    src = zip_dir(make_comp(tmp_path / "src", per_class=6), tmp_path / "toy.zip")
    data = tmp_path / "data"
    fetch("toy", data_dir=data, source=src, n_folds=3, seed=1)
    comp = CompetitionDir.open(data, "toy")
    folds_before = comp.folds_path.read_bytes()
    for kw in ({"n_folds": 2, "seed": 1}, {"n_folds": 3, "seed": 2}):
        with pytest.raises(KitError, match="made with --folds 3 --seed 1; pass --refold"):
            fetch("toy", data_dir=data, **kw)
    assert comp.folds_path.read_bytes() == folds_before
    out = fetch("toy", data_dir=data, n_folds=2, seed=5, refold=True)
    assert out["status"].startswith("refolded") and out["decode_s"] == 0.0
    f = comp.meta()["folds"]
    assert (f["k"], f["seed"], f["sha256"]) == (2, 5, sha256_file(comp.folds_path))
    assert sorted(comp.folds()["fold"].unique()) == [0, 1]
    assert fetch("toy", data_dir=data, n_folds=2, seed=5)["status"].startswith("no-op")
    (comp.root / "files" / "train" / "4.png").unlink()  # damage -> verify fails, --force refetches
    with pytest.raises(KitError, match="train/4.png: missing or changed since fetch.*--force"):
        fetch("toy", data_dir=data, n_folds=2, seed=5)
    with pytest.raises(KitError, match="made with --folds 2 --seed 5; pass those again, or --refold"):
        fetch("toy", data_dir=data, source=src, force=True)  # --force alone keeps the folds
    out = fetch("toy", data_dir=data, source=src, n_folds=2, seed=5, force=True)
    assert out["status"] == "fetched" and (comp.source_root / "train" / "4.png").exists()
    assert sorted(p.name for p in data.iterdir()) == ["toy"]


def test_shipped_file_stamps_live_apart_and_are_verified(tmp_path):
    """Stamps of the shipped files are in shipped_files.json (competition.json, read by every
    command, stays small); its recorded sha256 is the data hash runs record; an edited or missing
    stamp file is refused; a competition.json of an older kit (stamps inline) still verifies."""
    data = tmp_path / "data"
    fetch("toy", data_dir=data, source=make_comp(tmp_path / "src"), n_folds=2)
    comp = CompetitionDir.open(data, "toy")
    m, stamps = comp.meta(), comp.shipped_stamps()
    assert "files" not in m and m["shipped_files"]["n"] == len(stamps) == 13
    assert comp.shipped_sha256() == sha256_file(comp.shipped_path) == data_hashes(comp)["files_sha256"]
    good = comp.shipped_path.read_bytes()
    comp.shipped_path.write_bytes(good.replace(b'"train.csv": "', b'"train.csv": "0'))
    with pytest.raises(KitError, match="shipped_files.json: missing or changed since fetch; rerun `kit fetch toy --force`"):
        fetch("toy", data_dir=data, n_folds=2)
    comp.shipped_path.unlink()
    with pytest.raises(KitError, match="shipped_files.json: missing or changed since fetch"):
        fetch("toy", data_dir=data, n_folds=2)
    old = {k: v for k, v in m.items() if k != "shipped_files"} | {"files": stamps}
    comp.write_meta(old)  # as an older kit wrote it: same verification, same data hash
    assert fetch("toy", data_dir=data, n_folds=2)["status"].startswith("no-op")
    assert data_hashes(comp)["files_sha256"] == hashlib.sha256(good).hexdigest()
    (comp.source_root / "train.csv").write_text("Id,label\n")
    with pytest.raises(KitError, match="train.csv: missing or changed since fetch"):
        fetch("toy", data_dir=data, n_folds=2)


def test_another_zip_without_force_is_an_error(tmp_path):
    first = zip_dir(make_comp(tmp_path / "a"), tmp_path / "a.zip")
    second = zip_dir(make_comp(tmp_path / "b", per_class=5), tmp_path / "b.zip")
    fetch("toy", data_dir=tmp_path / "data", source=first, n_folds=2)
    assert fetch("toy", data_dir=tmp_path / "data", source=first, n_folds=2)["status"].startswith("no-op")
    with pytest.raises(KitError, match="b.zip: differs from the archive toy was fetched from; pass --force"):
        fetch("toy", data_dir=tmp_path / "data", source=second, n_folds=2)
    assert fetch("toy", data_dir=tmp_path / "data", source=second, n_folds=2, force=True)["n_train"] == 10


def test_folder_without_competition_json_needs_force(tmp_path):
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "notes.txt").write_text("mine")
    with pytest.raises(KitError, match="no competition.json; pass --force"):
        fetch("toy", data_dir=tmp_path / "data", source=make_comp(tmp_path / "src"))


# ----------------------------------------------------------------------------- kit's files apart


def test_zip_shipping_kit_named_files_fetches_and_verifies_again(tmp_path):
    src = make_comp(tmp_path / "src")
    (src / "folds.csv").write_text("Id,label,fold\nshipped,by,kaggle\n")
    (src / "competition.json").write_text('{"shipped": true}')
    (src / "cache").mkdir()
    (src / "cache" / "notes.txt").write_text("shipped")
    zip_path = zip_dir(src, tmp_path / "toy.zip")
    data = tmp_path / "data"
    fetch("toy", data_dir=data, source=zip_path, n_folds=2)
    comp = CompetitionDir.open(data, "toy")
    assert (comp.source_root / "folds.csv").read_text() == (src / "folds.csv").read_text()
    assert comp.shipped_stamps()["folds.csv"] == sha256_file(src / "folds.csv")
    assert len(comp.folds()) == 8 and comp.meta()["source"] == "files"
    assert sorted(p.name for p in comp.root.iterdir()) == [
        "cache", "competition.json", "files", "folds.csv", "shipped_files.json", "test_index.csv",
        "train_index.csv"]
    assert fetch("toy", data_dir=data, source=zip_path, n_folds=2)["status"].startswith("no-op")


def test_read_only_folder_is_read_in_place(tmp_path):
    src = make_comp(tmp_path / "input" / "toy")  # /kaggle/input/<comp>/ nests the files once
    for p in [*tmp_path.joinpath("input").rglob("*"), tmp_path / "input"]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    data = tmp_path / "data"
    try:
        out = fetch("toy", data_dir=data, source=tmp_path / "input", n_folds=2)
        comp = CompetitionDir.open(data, "toy")
        m = comp.meta()
        assert out["source"] == str(src) and m["source"] == str(src) == str(comp.source_root)
        assert sorted(p.name for p in comp.root.iterdir()) == [  # nothing copied
            "cache", "competition.json", "folds.csv", "shipped_files.json", "test_index.csv",
            "train_index.csv"]
        st = (src / "train.csv").stat()
        assert m["file_check"] == "stat" and comp.shipped_stamps()["train.csv"] == f"{st.st_size}:{st.st_mtime_ns}"
        assert comp.image_path("train", "3") == src / "train" / "3.png"
        assert fetch("toy", data_dir=data, source=tmp_path / "input", n_folds=2)["status"].startswith("no-op")
        with pytest.raises(KitError, match="differs from the folder toy was fetched from"):
            fetch("toy", data_dir=data, source=make_comp(tmp_path / "other"), n_folds=2)
        (src / "train").chmod(0o755)
        (src / "train" / "3.png").chmod(0o644)
        write_image(src / "train" / "3.png", 200)  # the input changed under us: size/mtime differ
        with pytest.raises(KitError, match="train/3.png: missing or changed since fetch"):
            fetch("toy", data_dir=data, n_folds=2)
    finally:
        for p in tmp_path.joinpath("input").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_data_dir_of_the_old_layout_asks_for_force(tmp_path):
    data = tmp_path / "data"
    fetch("toy", data_dir=data, source=zip_dir(make_comp(tmp_path / "src"), tmp_path / "t.zip"),
          n_folds=2)
    comp = CompetitionDir.open(data, "toy")
    meta = comp.meta()
    del meta["source"], meta["index"]  # an older kit's: Kaggle's files beside competition.json
    comp.write_meta(meta)
    for call in (lambda: fetch("toy", data_dir=data, n_folds=2), lambda: comp.labels()):
        with pytest.raises(KitError, match="fetched by an older kit .*`kit fetch toy --force`"):
            call()
    out = fetch("toy", data_dir=data, source=tmp_path / "t.zip", n_folds=2, force=True)
    assert out["status"] == "fetched" and CompetitionDir(comp.root).meta()["source"] == "files"


# ----------------------------------------------------------------------------- safe unzip


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/abs_evil.txt", "train/../../evil.txt"])
def test_zip_slip_is_rejected_before_anything_is_written(tmp_path, evil):
    src = make_comp(tmp_path / "src")
    zip_path = zip_dir(src, tmp_path / "toy.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr(zipfile.ZipInfo(evil), b"pwned")
    msg = fetch_error(zip_path, tmp_path / "data")
    assert f"entry '{evil}' would be written outside the target folder" in msg
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs_evil.txt").exists()
    with pytest.raises(KitError):
        safe_unzip(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_symlink_entry_is_rejected(tmp_path):
    zip_path = zip_dir(make_comp(tmp_path / "src"), tmp_path / "toy.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        info = zipfile.ZipInfo("train/link.png")
        info.external_attr = 0o120777 << 16  # a symlink entry, pointing anywhere
        zf.writestr(info, "/etc/passwd")
    assert "'train/link.png' would be written outside" in fetch_error(zip_path, tmp_path / "data")


def test_leftovers_of_a_killed_fetch_are_removed(tmp_path):
    data = tmp_path / "data"
    dead = data / ".toy.partial-999999999-abc"  # no such pid
    (dead / "train").mkdir(parents=True)
    fetch("toy", data_dir=data, source=make_comp(tmp_path / "src"), n_folds=2)
    assert sorted(p.name for p in data.iterdir()) == ["toy"]


def test_truncated_zip_is_a_clear_error(tmp_path):
    zip_path = zip_dir(make_comp(tmp_path / "src"), tmp_path / "toy.zip")
    zip_path.write_bytes(zip_path.read_bytes()[:-300])
    assert "not a complete zip archive (an interrupted download?)" in fetch_error(
        zip_path, tmp_path / "data")


# ----------------------------------------------------------------------------- demo


def test_demo_zip_is_deterministic_and_kaggle_shaped(tmp_path):
    a = build_demo_zip(tmp_path / "a")
    b = build_demo_zip(tmp_path / "b")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        train = pd.read_csv(zf.open("train.csv"), dtype=str)
        sample = pd.read_csv(zf.open("sample_submission.csv"), dtype=str)
        im = Image.open(zf.open("test/0.png"))
        assert (im.size, im.mode) == ((32, 32), "RGB")
    assert {n.split("/")[0] for n in names} == {"train.csv", "sample_submission.csv", "train", "test"}
    assert len(train) + len(sample) == 1797 and list(train.columns) == ["Id", "Category"]
    assert set(train["Category"]) == set(CLASSES) and set(sample["Category"]) == {"zero"}
    solution = demo_solution()  # hidden labels: not in the zip, aligned with sample_submission
    assert solution["Id"].tolist() == sample["Id"].tolist() and set(solution["Category"]) == set(CLASSES)
    assert 0.18 < len(solution) / 1797 < 0.22


def test_demo_fixture_is_a_fetched_competition(demo_data_dir):
    comp = CompetitionDir.open(demo_data_dir, "demo")
    m = comp.meta()
    assert (m["n_train"], m["n_test"], len(m["classes"])) == (1438, 359, 10)
    assert json.loads(comp.meta_path.read_text())["folds"]["k"] == 4
    ids, arr = load_cache(comp, "test")
    assert arr.shape == (359, 32, 32, 3) and ids == demo_solution()["Id"].tolist()
    assert not (demo_data_dir / ".downloads").exists()
