"""Tiny copies of real Kaggle image-classification competitions, one function per competition.

Each writes `<folder>/<slug>.zip` as `kaggle competitions download -c <slug>` gives it: the real
file names, CSV headers, nesting and formats from the competition's public data page (train.zip /
*.csv.zip inside the download where Kaggle ships those), with a few tiny generated images. Each
image is one flat colour derived from its class, so a net can learn it in an epoch. Returns the
zip's path. `COMPS` maps slug -> writer.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

RNG_SEED = 0


def _img(value: int, size=(8, 8), fmt="PNG", mode="RGB") -> bytes:
    arr = np.full((*size, 3), value % 256, np.uint8)
    arr[0, 0] = (value * 7) % 256  # a little texture: not every image the same file
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _inner(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _hex(rng, n=9) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), n))


def plant_seedlings(folder: Path, per_class=4, n_test=4) -> Path:
    """plant-seedlings-classification: train/<species>/<hash>.png (names with spaces), flat
    test/, sample_submission.csv `file,species`."""
    rng = np.random.default_rng(RNG_SEED)
    classes = ["Black-grass", "Common Chickweed", "Loose Silky-bent", "Small-flowered Cranesbill"]
    e = {}
    for k, c in enumerate(classes):
        for _ in range(per_class):
            e[f"train/{c}/{_hex(rng)}.png"] = _img(40 + 50 * k, (10, 10))
    test = [f"{_hex(rng)}.png" for _ in range(n_test)]
    for i, f in enumerate(test):
        e[f"test/{f}"] = _img(40 + 50 * (i % 4), (10, 10))
    e["sample_submission.csv"] = _csv(pd.DataFrame({"file": test, "species": "Black-grass"}))
    return _zip(folder / "plant-seedlings-classification.zip", e)


def state_farm(folder: Path, drivers=("p002", "p012", "p014", "p015", "p016"), n_test=5) -> Path:
    """state-farm-distracted-driver-detection: imgs/train/c0..c9/img_<n>.jpg, imgs/test/,
    driver_imgs_list.csv `subject,classname,img`, sample `img,c0..c9` (probabilities)."""
    classes = [f"c{k}" for k in range(10)]
    e, rows, n = {}, [], 0
    for d in drivers:
        for k, c in enumerate(classes):
            n += 1
            e[f"imgs/train/{c}/img_{n}.jpg"] = _img(20 + 23 * k, (12, 16), "JPEG")
            rows.append((d, c, f"img_{n}.jpg"))
    test = [f"img_{100000 + i}.jpg" for i in range(n_test)]
    for i, f in enumerate(test):
        e[f"imgs/test/{f}"] = _img(20 + 23 * i, (12, 16), "JPEG")
    e["driver_imgs_list.csv"] = _csv(pd.DataFrame(rows, columns=["subject", "classname", "img"]))
    sub = pd.DataFrame({"img": test, **{c: 0.1 for c in classes}})
    e["sample_submission.csv"] = _csv(sub)
    return _zip(folder / "state-farm-distracted-driver-detection.zip", e)


def dogs_vs_cats(folder: Path, per_class=6, n_test=5) -> Path:
    """dogs-vs-cats-redux-kernels-edition: train.zip (train/cat.0.jpg, train/dog.0.jpg ...),
    test.zip (test/1.jpg ...), sample_submission.csv `id,label` = P(dog) 0.5."""
    train = {f"train/{c}.{i}.jpg": _img(60 + 120 * k, (8, 8), "JPEG")
             for k, c in enumerate(["cat", "dog"]) for i in range(per_class)}
    test = {f"test/{i}.jpg": _img(60 + 120 * (i % 2), (8, 8), "JPEG") for i in range(1, n_test + 1)}
    sub = pd.DataFrame({"id": range(1, n_test + 1), "label": 0.5})
    return _zip(folder / "dogs-vs-cats-redux-kernels-edition.zip",
                {"sample_submission.csv": _csv(sub), "test.zip": _inner(test),
                 "train.zip": _inner(train)})


def leaf(folder: Path, per_class=4, n_test=4) -> Path:
    """leaf-classification: images.zip (images/<id>.jpg for train AND test), train.csv.zip
    (`id,species,margin1..64,shape1..64,texture1..64`), test.csv.zip (the same without species),
    sample_submission.csv.zip (`id,<99 species>`; here 3)."""
    rng = np.random.default_rng(RNG_SEED)
    classes = ["Acer_Capillipes", "Acer_Circinatum", "Quercus_Rubra"]
    feats = [f"{k}{i}" for k in ("margin", "shape", "texture") for i in range(1, 65)]
    ids = rng.permutation(np.arange(1, per_class * 3 + n_test + 1))
    train_ids, test_ids = sorted(ids[: per_class * 3]), sorted(ids[per_class * 3:])
    species = [classes[i % 3] for i in range(len(train_ids))]
    train = pd.DataFrame({"id": train_ids, "species": species})
    train = pd.concat([train, pd.DataFrame(rng.random((len(train), 192)).round(6),
                                           columns=feats)], axis=1)
    test = pd.concat([pd.DataFrame({"id": test_ids}),
                      pd.DataFrame(rng.random((n_test, 192)).round(6), columns=feats)], axis=1)
    sub = pd.DataFrame({"id": test_ids, **{c: 1 / 3 for c in classes}})
    images = {f"images/{i}.jpg": _img(50 + 70 * classes.index(s), (9, 9), "JPEG", "L")
              for i, s in zip(train_ids, species, strict=True)}
    images |= {f"images/{i}.jpg": _img(50 + 70 * (j % 3), (9, 9), "JPEG", "L")
               for j, i in enumerate(test_ids)}
    return _zip(folder / "leaf-classification.zip", {
        "images.zip": _inner(images), "sample_submission.csv.zip":
        _inner({"sample_submission.csv": _csv(sub)}), "test.csv.zip": _inner({"test.csv": _csv(test)}),
        "train.csv.zip": _inner({"train.csv": _csv(train)})})


def digit_recognizer(folder: Path, n_train=40, n_test=6) -> Path:
    """digit-recognizer: train.csv `label,pixel0..pixel783` (28x28 grayscale 0..255), test.csv
    pixels only, sample_submission.csv `ImageId,Label` with ImageId 1..N."""
    rng = np.random.default_rng(RNG_SEED)
    labels = np.arange(n_train) % 4
    px = lambda ys: np.stack([np.full(784, 30 + 60 * y) for y in ys]) + rng.integers(0, 5, (len(ys), 784))  # noqa
    cols = [f"pixel{i}" for i in range(784)]
    train = pd.concat([pd.DataFrame({"label": labels}), pd.DataFrame(px(labels), columns=cols)],
                      axis=1)
    test = pd.DataFrame(px(np.arange(n_test) % 4), columns=cols)
    sub = pd.DataFrame({"ImageId": range(1, n_test + 1), "Label": 0})
    return _zip(folder / "digit-recognizer.zip", {"sample_submission.csv": _csv(sub),
                                                  "test.csv": _csv(test), "train.csv": _csv(train)})


def cassava(folder: Path, per_class=4, n_test=3, label_map: dict | None = None) -> Path:
    """cassava-leaf-disease-classification: train.csv `image_id,label` (image_id = `<n>.jpg`,
    label 0-4), train_images/, test_images/, label_num_to_disease_map.json, sample `image_id,label`."""
    names = {"0": "Cassava Bacterial Blight (CBB)", "1": "Cassava Brown Streak Disease (CBSD)",
             "2": "Cassava Green Mottle (CGM)", "3": "Cassava Mosaic Disease (CMD)", "4": "Healthy"}
    rng = np.random.default_rng(RNG_SEED)
    ids = [f"{n}.jpg" for n in rng.choice(10**9, per_class * 5 + n_test, replace=False) + 10**9]
    labels = [i % 5 for i in range(per_class * 5)]
    e = {f"train_images/{i}": _img(20 + 45 * y, (10, 8), "JPEG") for i, y in zip(ids, labels, strict=False)}
    test = ids[per_class * 5:]
    e |= {f"test_images/{i}": _img(20 + 45 * (j % 5), (10, 8), "JPEG") for j, i in enumerate(test)}
    e["train.csv"] = _csv(pd.DataFrame({"image_id": ids[: per_class * 5], "label": labels}))
    e["label_num_to_disease_map.json"] = json.dumps(names if label_map is None else label_map).encode()
    e["sample_submission.csv"] = _csv(pd.DataFrame({"image_id": test, "label": 4}))
    return _zip(folder / "cassava-leaf-disease-classification.zip", e)


def plant_pathology(folder: Path, n_train=16, n_test=4) -> Path:
    """plant-pathology-2020-fgvc7: images/Train_<n>.jpg and images/Test_<n>.jpg in ONE folder,
    train.csv `image_id,healthy,multiple_diseases,rust,scab` (one-hot, image_id without .jpg),
    test.csv `image_id`, sample_submission.csv with the four probability columns."""
    cols = ["healthy", "multiple_diseases", "rust", "scab"]
    y = np.arange(n_train) % 4
    train = pd.DataFrame({"image_id": [f"Train_{i}" for i in range(n_train)]})
    for k, c in enumerate(cols):
        train[c] = (y == k).astype(int)
    e = {f"images/Train_{i}.jpg": _img(30 + 60 * y[i], (8, 12), "JPEG") for i in range(n_train)}
    e |= {f"images/Test_{i}.jpg": _img(30 + 60 * (i % 4), (8, 12), "JPEG") for i in range(n_test)}
    test = pd.DataFrame({"image_id": [f"Test_{i}" for i in range(n_test)]})
    e["train.csv"], e["test.csv"] = _csv(train), _csv(test)
    e["sample_submission.csv"] = _csv(test.assign(**{c: 0.25 for c in cols}))
    return _zip(folder / "plant-pathology-2020-fgvc7.zip", e)


def imet(folder: Path, n_train=24, n_test=4) -> Path:
    """imet-2019-fgvc6: train/<id>.png, test/<id>.png (id = hex, no extension in the CSV),
    train.csv `id,attribute_ids` ("13 405 896"), labels.csv `attribute_id,attribute_name`,
    sample_submission.csv `id,attribute_ids`."""
    rng = np.random.default_rng(RNG_SEED)
    attrs = {"13": "culture::american", "405": "tag::dogs", "896": "tag::women", "1020": "tag::men"}
    keys = list(attrs)
    sets = [sorted({keys[i % 4], keys[(i // 4) % 4]}, key=int) for i in range(n_train)]
    ids = [_hex(rng, 16) for _ in range(n_train + n_test)]
    e = {f"train/{i}.png": _img(20 + 50 * keys.index(s[0]), (8, 8)) for i, s in zip(ids, sets, strict=False)}
    e |= {f"test/{i}.png": _img(20 + 50 * j, (8, 8)) for j, i in enumerate(ids[n_train:])}
    e["train.csv"] = _csv(pd.DataFrame({"id": ids[:n_train], "attribute_ids": [" ".join(s) for s in sets]}))
    e["labels.csv"] = _csv(pd.DataFrame({"attribute_id": keys, "attribute_name": attrs.values()}))
    e["sample_submission.csv"] = _csv(pd.DataFrame({"id": ids[n_train:], "attribute_ids": "13 405"}))
    return _zip(folder / "imet-2019-fgvc6.zip", e)


def humpback(folder: Path, n_test=4) -> Path:
    """humpback-whale-identification: train/<hash>.jpg, test/, train.csv `Image,Id` (one whale
    Id per image, `new_whale` for unknowns, many whales with one image), sample_submission.csv
    `Image,Id` = five space-separated whale Ids (MAP@5)."""
    rng = np.random.default_rng(RNG_SEED)
    whales = ["new_whale"] * 8 + ["w_23a388d"] * 4 + ["w_9b5109b"] * 4 + ["w_0369a5c", "w_9c506f6"]
    imgs = [f"{_hex(rng)}.jpg" for _ in range(len(whales) + n_test)]
    shade = {w: 30 + 50 * k for k, w in enumerate(dict.fromkeys(whales))}
    e = {f"train/{f}": _img(shade[w], (8, 16), "JPEG") for f, w in zip(imgs, whales, strict=False)}
    e |= {f"test/{f}": _img(30 + 50 * j, (8, 16), "JPEG") for j, f in enumerate(imgs[len(whales):])}
    e["train.csv"] = _csv(pd.DataFrame({"Image": imgs[: len(whales)], "Id": whales}))
    e["sample_submission.csv"] = _csv(pd.DataFrame({
        "Image": imgs[len(whales):], "Id": "new_whale w_23a388d w_9b5109b w_9c506f6 w_0369a5c"}))
    return _zip(folder / "humpback-whale-identification.zip", e)


def histopathology(folder: Path, n_train=16, n_test=4, sample_value="0") -> Path:
    """histopathologic-cancer-detection: train/<id>.tif, test/<id>.tif (96x96 RGB TIFF; here
    8x8), train_labels.csv `id,label` 0/1 (id = hex, no extension), sample `id,label` (0)."""
    rng = np.random.default_rng(RNG_SEED)
    ids = [_hex(rng, 40) for _ in range(n_train + n_test)]
    y = np.arange(n_train) % 2
    e = {f"train/{i}.tif": _img(60 + 120 * t, (8, 8), "TIFF") for i, t in zip(ids, y, strict=False)}
    e |= {f"test/{i}.tif": _img(60 + 120 * (j % 2), (8, 8), "TIFF") for j, i in enumerate(ids[n_train:])}
    e["train_labels.csv"] = _csv(pd.DataFrame({"id": ids[:n_train], "label": y}))
    e["sample_submission.csv"] = _csv(pd.DataFrame({"id": ids[n_train:], "label": sample_value}))
    return _zip(folder / "histopathologic-cancer-detection.zip", e)


def siim_isic(folder: Path, n_train=24, n_test=4) -> Path:
    """siim-isic-melanoma-classification (2020): jpeg/train/ISIC_<n>.jpg, jpeg/test/, the same
    images as DICOM in train/ and test/ (*.dcm) and as tfrecords/*.tfrec (not images kit reads);
    train.csv `image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,
    benign_malignant,target` (target 0/1, blanks in the feature columns, several images per
    patient), test.csv (features, no target), sample `image_name,target` (0: labels or P(malignant)?
    kit asks for --metric)."""
    rng = np.random.default_rng(RNG_SEED)
    names = [f"ISIC_{n}" for n in rng.choice(10**7 - 10**6, n_train + n_test, replace=False) + 10**6]
    y = (np.arange(n_train) % 3 == 0).astype(int)
    e = {f"jpeg/train/{n}.jpg": _img(50 + 150 * t, (12, 16), "JPEG") for n, t in zip(names, y, strict=False)}
    e |= {f"jpeg/test/{n}.jpg": _img(50 + 150 * (j % 2), (12, 16), "JPEG")
          for j, n in enumerate(names[n_train:])}
    e |= {f"{'train' if j < n_train else 'test'}/{n}.dcm": b"DICM" + bytes(60) for j, n in enumerate(names)}
    e["tfrecords/train00-2182.tfrec"] = bytes(64)
    patients = [f"IP_{1000000 + j // 3}" for j in range(n_train)]
    e["train.csv"] = _csv(pd.DataFrame({
        "image_name": names[:n_train], "patient_id": patients,
        "sex": ["male", "female", ""] * (n_train // 3), "age_approx": ["45.0", "", "60.0"] * (n_train // 3),
        "anatom_site_general_challenge": ["torso", "head/neck", ""] * (n_train // 3),
        "diagnosis": np.where(y == 1, "melanoma", "unknown"),
        "benign_malignant": np.where(y == 1, "malignant", "benign"), "target": y}))
    e["test.csv"] = _csv(pd.DataFrame({"image_name": names[n_train:], "patient_id": "IP_9000000",
                                       "sex": "male", "age_approx": "50.0",
                                       "anatom_site_general_challenge": "torso"}))
    e["sample_submission.csv"] = _csv(pd.DataFrame({"image_name": names[n_train:], "target": 0}))
    return _zip(folder / "siim-isic-melanoma-classification.zip", e)


def aptos(folder: Path, n_train=20, n_test=4) -> Path:
    """aptos2019-blindness-detection: train_images/<id_code>.png, test_images/ (fundus photos of
    many sizes), train.csv `id_code,diagnosis` (0-4 severity, quadratic weighted kappa), test.csv
    `id_code`, sample `id_code,diagnosis` (0)."""
    rng = np.random.default_rng(RNG_SEED)
    ids = [_hex(rng, 12) for _ in range(n_train + n_test)]
    y = np.arange(n_train) % 5
    e = {f"train_images/{i}.png": _img(40 * t + 20, (10 + j % 3, 12)) for j, (i, t) in enumerate(zip(ids, y, strict=False))}
    e |= {f"test_images/{i}.png": _img(100, (9, 11 + j)) for j, i in enumerate(ids[n_train:])}
    e["train.csv"] = _csv(pd.DataFrame({"id_code": ids[:n_train], "diagnosis": y}))
    e["test.csv"] = _csv(pd.DataFrame({"id_code": ids[n_train:]}))
    e["sample_submission.csv"] = _csv(pd.DataFrame({"id_code": ids[n_train:], "diagnosis": 0}))
    return _zip(folder / "aptos2019-blindness-detection.zip", e)


RANZCR = ["ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "CVC - Normal",
          "Swan Ganz Catheter Present"]


def ranzcr(folder: Path, n_train=24, n_test=4) -> Path:
    """ranzcr-clip-catheter-line-classification: train/<StudyInstanceUID>.jpg (dotted UIDs),
    test/, train.csv `StudyInstanceUID,<11 one-hot columns whose names hold spaces: 'ETT -
    Abnormal' ...>,PatientID`, train_annotations.csv `StudyInstanceUID,label,data` (line
    coordinates for a few images: the same Id column), sample `StudyInstanceUID,<the columns>` (0)."""
    rng = np.random.default_rng(RNG_SEED)
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in rng.choice(10**10, n_train + n_test, replace=False) + 10**10]
    onehot = np.array([[int((i + j) % 4 == 0) for j in range(len(RANZCR))] for i in range(n_train)])
    e = {f"train/{u}.jpg": _img(40 + 30 * int(np.argmax(r)), (8, 8), "JPEG") for u, r in zip(uids, onehot, strict=False)}
    e |= {f"test/{u}.jpg": _img(40 + 30 * j, (8, 8), "JPEG") for j, u in enumerate(uids[n_train:])}
    train = pd.DataFrame(onehot, columns=RANZCR)
    train.insert(0, "StudyInstanceUID", uids[:n_train])
    train["PatientID"] = [f"ec{i // 3:07d}" for i in range(n_train)]
    e["train.csv"] = _csv(train)
    e["train_annotations.csv"] = _csv(pd.DataFrame({"StudyInstanceUID": uids[:2], "label": ["ETT - Normal"] * 2,
                                                    "data": ["[[1, 2], [3, 4]]"] * 2}))
    sample = pd.DataFrame(0, index=range(n_test), columns=RANZCR)
    sample.insert(0, "StudyInstanceUID", uids[n_train:])
    e["sample_submission.csv"] = _csv(sample)
    return _zip(folder / "ranzcr-clip-catheter-line-classification.zip", e)


COMPS = {"plant-seedlings-classification": plant_seedlings,
         "state-farm-distracted-driver-detection": state_farm,
         "dogs-vs-cats-redux-kernels-edition": dogs_vs_cats, "leaf-classification": leaf,
         "digit-recognizer": digit_recognizer, "cassava-leaf-disease-classification": cassava,
         "plant-pathology-2020-fgvc7": plant_pathology, "imet-2019-fgvc6": imet,
         "humpback-whale-identification": humpback,
         "histopathologic-cancer-detection": histopathology,
         "siim-isic-melanoma-classification": siim_isic, "aptos2019-blindness-detection": aptos,
         "ranzcr-clip-catheter-line-classification": ranzcr}
