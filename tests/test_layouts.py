"""kit fetch on the layouts real Kaggle image competitions ship (tiny copies from fx_comps.py):
what is detected, the flag that settles each ambiguity, bad input, and fetch -> train -> submit."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaggle_kit import KitError, targets
from kaggle_kit.cli import app
from kaggle_kit.fetch import fetch
from kaggle_kit.images import load_cache
from kaggle_kit.workspace import CompetitionDir
from tests import fx_comps


def _fetch(tmp_path: Path, writer, slug: str, **kw) -> CompetitionDir:
    zip_path = writer(tmp_path / "zips")
    fetch(slug, data_dir=tmp_path / "data", source=zip_path, n_folds=kw.pop("n_folds", 2), **kw)
    return CompetitionDir.open(tmp_path / "data", slug)


def _error(tmp_path: Path, zip_path: Path, **kw) -> str:
    """Fetch expecting a KitError; nothing may be left in the data dir."""
    with pytest.raises(KitError) as e:
        fetch("x", data_dir=tmp_path / "data", source=zip_path, n_folds=2, **kw)
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []
    assert "\n" not in str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------- detection


def test_plant_seedlings_folder_per_class_with_spaces(tmp_path):
    comp = _fetch(tmp_path, fx_comps.plant_seedlings, "plant-seedlings-classification")
    m = comp.meta()
    assert m["layout"] == "folders" and m["classes"][1] == "Common Chickweed"
    assert (m["task"], m["metric"], m["submission"]["kind"]) == ("multiclass", "accuracy", "label")
    idx = comp.train_index()
    assert all(p == f"train/{lab}/{i}" for i, lab, p in idx[["Id", "label", "path"]].values)
    sample = comp.sample_submission()
    assert comp.test_ids() == sample["file"].tolist() and m["id_col"] == "file"
    ids, arr = load_cache(comp, "train")
    assert arr.shape == (16, 10, 10, 3) and ids == idx["Id"].tolist()


def test_state_farm_nested_class_folders_and_group_folds(tmp_path):
    comp = _fetch(tmp_path, fx_comps.state_farm, "state-farm-distracted-driver-detection",
                  group_col="subject", n_folds=3)
    m = comp.meta()
    assert (m["labels_csv"], m["label_col"], m["train_dir"], m["test_dir"]) == (
        "driver_imgs_list.csv", "classname", "imgs/train", "imgs/test")
    assert (m["metric"], m["submission"]["kind"], m["group_col"]) == ("log_loss", "prob", "subject")
    idx, folds = comp.train_index(), comp.folds()
    assert (idx["group"].groupby(folds["fold"]).nunique().sum()) == 5  # no driver in two folds
    assert comp.image_path("train", "img_3.jpg") == comp.source_root / "imgs/train/c2/img_3.jpg"
    with pytest.raises(KitError, match="--group-col drvr: no such column in driver_imgs_list.csv"):
        _fetch(tmp_path / "b", fx_comps.state_farm, "sf", group_col="drvr")


def test_dogs_vs_cats_label_in_file_name_zips_inside_and_positive(tmp_path):
    zip_path = fx_comps.dogs_vs_cats(tmp_path / "zips")
    msg = _error(tmp_path, zip_path)
    assert "which one? pass --positive cat or --positive dog" in msg
    comp = _fetch(tmp_path, fx_comps.dogs_vs_cats, "dogs-vs-cats-redux-kernels-edition",
                  positive="dog", metric="log_loss")
    m = comp.meta()
    assert (m["layout"], m["task"], m["metric"]) == ("label_in_file_name", "binary", "log_loss")
    assert m["submission"] == {"id_col": "id", "columns": ["id", "label"], "kind": "prob_positive",
                               "positive": "dog"}
    assert comp.labels().set_index("Id")["label"]["cat.3"] == "cat"
    assert comp.image_path("test", "2") == comp.source_root / "test" / "2.jpg"
    assert not any(f.endswith(".zip") for f in comp.shipped_stamps())  # train.zip, test.zip unpacked


def test_zip_inside_the_download_keeps_zip_slip_rules(tmp_path):
    inner = fx_comps._inner({"../../evil.jpg": b"x"})
    zip_path = fx_comps._zip(tmp_path / "z.zip", {"train.zip": inner, "sample_submission.csv": b"id,label\n1,a\n"})
    assert "entry '../../evil.jpg' would be written outside" in _error(tmp_path, zip_path)
    assert not list(tmp_path.rglob("evil.jpg"))


def test_leaf_shared_images_folder_and_label_column_among_features(tmp_path):
    comp = _fetch(tmp_path, fx_comps.leaf, "leaf-classification")
    m = comp.meta()
    assert (m["label_col"], m["train_dir"], m["test_dir"]) == ("species", "images", "images")
    assert (m["task"], m["metric"], m["submission"]["kind"]) == ("multiclass", "log_loss", "prob")
    assert set(comp.train_index()["Id"]).isdisjoint(comp.test_ids())
    assert load_cache(comp, "test")[1].shape == (4, 9, 9, 3)


def test_digit_recognizer_pixels_become_lossless_pngs(tmp_path):
    comp = _fetch(tmp_path, fx_comps.digit_recognizer, "digit-recognizer")
    m = comp.meta()
    assert (m["layout"], m["image_root"], m["classes"]) == ("pixels", "kit", ["0", "1", "2", "3"])
    assert comp.test_ids() == ["1", "2", "3", "4", "5", "6"]
    with zipfile.ZipFile(tmp_path / "zips" / "digit-recognizer.zip") as zf:
        test = pd.read_csv(zf.open("test.csv"))
    _, arr = load_cache(comp, "test")
    assert (arr[4, :, :, 0].ravel() == test.iloc[4].to_numpy()).all()  # ImageId 5 = row 5
    assert comp.image_path("train", "0") == comp.root / "pixels" / "train" / "0.png"


def test_cassava_integer_labels_and_label_map(tmp_path):
    comp = _fetch(tmp_path, fx_comps.cassava, "cassava-leaf-disease-classification")
    m = comp.meta()
    assert m["classes"] == ["0", "1", "2", "3", "4"] and m["class_names"]["4"] == "Healthy"
    assert m["label_map"] == "label_num_to_disease_map.json" and m["ext"] == ""
    assert comp.train_index()["Id"].str.endswith(".jpg").all()  # Id = file name, kept as text
    bad = fx_comps.cassava(tmp_path / "bad", label_map={"0": "a", "1": "b", "2": "c", "3": "d"})
    msg = _error(tmp_path / "e", bad)
    assert "label_num_to_disease_map.json: label map has no name for class(es) ['4']" in msg


def test_plant_pathology_one_hot_columns_are_multilabel(tmp_path):
    comp = _fetch(tmp_path, fx_comps.plant_pathology, "plant-pathology-2020-fgvc7")
    m = comp.meta()
    assert (m["layout"], m["task"], m["metric"]) == ("one_hot", "multilabel", "macro_auc")
    assert m["submission"]["kind"] == "prob" and m["train_dir"] == m["test_dir"] == "images"
    assert comp.labels()["label"].tolist()[:4] == ["healthy", "multiple_diseases", "rust", "scab"]


def test_imet_space_separated_lists_and_csv_label_map(tmp_path):
    comp = _fetch(tmp_path, fx_comps.imet, "imet-2019-fgvc6")
    m = comp.meta()
    assert (m["task"], m["metric"], m["submission"]["kind"]) == ("multilabel", "f2_samples", "labels")
    assert m["classes"] == ["1020", "13", "405", "896"] and m["class_names"]["405"] == "tag::dogs"
    assert "k" not in m["submission"] and comp.labels()["label"][1] == "13 405"
    folds = comp.folds()
    assert (folds["fold"] >= 0).all() and folds["fold"].value_counts().min() >= 10


def test_humpback_top5_and_single_image_whales_get_fold_minus_one(tmp_path):
    comp = _fetch(tmp_path, fx_comps.humpback, "humpback-whale-identification", n_folds=4)
    m = comp.meta()
    assert (m["metric"], m["submission"]["kind"], m["submission"]["k"]) == ("map@5", "labels", 5)
    folds = comp.folds()
    assert sorted(folds.loc[folds["fold"] == -1, "label"]) == ["w_0369a5c", "w_9c506f6"]
    assert set(folds.loc[folds["fold"] >= 0, "fold"]) == {0, 1, 2, 3}


def test_histopathology_tif_ids_without_extension(tmp_path):
    zip_path = fx_comps.histopathology(tmp_path / "zips")
    assert "pass --metric roc_auc (or log_loss) for probabilities" in _error(tmp_path, zip_path)
    comp = _fetch(tmp_path, fx_comps.histopathology, "histopathologic-cancer-detection",
                  metric="roc_auc")
    m = comp.meta()
    assert (m["task"], m["ext"], m["submission"]["kind"], m["submission"]["positive"]) == (
        "binary", ".tif", "prob_positive", "1")
    probs = fx_comps.histopathology(tmp_path / "p", sample_value="0.5")  # a probability sample
    fetch("h2", data_dir=tmp_path / "d2", source=probs, n_folds=2)
    assert CompetitionDir.open(tmp_path / "d2", "h2").meta()["metric"] == "roc_auc"


def test_siim_isic_target_among_features_dicom_ignored_patient_groups(tmp_path):
    zip_path = fx_comps.siim_isic(tmp_path / "zips")
    msg = _error(tmp_path, zip_path)  # sample's target is 0.0 everywhere: labels or P(positive)?
    assert "pass --metric roc_auc (or log_loss) for probabilities" in msg
    comp = _fetch(tmp_path, fx_comps.siim_isic, "siim-isic-melanoma-classification",
                  metric="roc_auc", group_col="patient_id", n_folds=3)
    m = comp.meta()
    assert (m["labels_csv"], m["label_col"], m["train_dir"], m["test_dir"]) == (
        "train.csv", "target", "jpeg/train", "jpeg/test")  # not benign_malignant, not train/*.dcm
    assert (m["task"], m["metric"], m["submission"]["kind"], m["submission"]["positive"]) == (
        "binary", "roc_auc", "prob_positive", "1")
    folds = comp.folds().merge(comp.train_index()[["Id", "group"]], on="Id")
    assert folds.groupby("group")["fold"].nunique().eq(1).all()  # a patient in one fold only
    assert m["image_sizes"] == {"12x16": 28}


def test_aptos_mixed_sizes_need_image_size_and_qwk(tmp_path):
    comp = _fetch(tmp_path, fx_comps.aptos, "aptos2019-blindness-detection", metric="qwk")
    m = comp.meta()
    assert (m["labels_csv"], m["label_col"], m["train_dir"], m["test_dir"]) == (
        "train.csv", "diagnosis", "train_images", "test_images")
    assert (m["metric"], m["classes"], m["submission"]["kind"]) == ("qwk", list("01234"), "label")
    assert len(m["image_sizes"]) > 1 and m["cache"] == {}  # no native cache: data.image_size


def test_ranzcr_one_hot_class_names_with_spaces_and_a_second_csv_with_the_ids(tmp_path):
    comp = _fetch(tmp_path, fx_comps.ranzcr, "ranzcr-clip-catheter-line-classification",
                  group_col="PatientID", n_folds=3)
    m = comp.meta()
    assert m["labels_csv"] == "train.csv"  # not train_annotations.csv, which has the Ids too
    assert (m["task"], m["metric"], m["submission"]["kind"]) == ("multilabel", "macro_auc", "prob")
    assert m["classes"] == sorted(fx_comps.RANZCR)  # whole names, not 'ETT', '-', 'Abnormal'
    folds = comp.folds()  # sets of names with spaces are '|'-joined
    assert folds.set_index("Id")["label"].iloc[0] == "CVC - Normal|ETT - Abnormal"
    y = targets.encode(folds, m["classes"], "multilabel", "folds.csv")
    assert y.shape == (24, 6) and y.sum() == 36


def test_one_hot_class_name_with_a_space_and_a_bar_is_refused(tmp_path):
    src = fx_comps.ranzcr(tmp_path / "zips")
    bad = _rewrite_csvs(src, tmp_path / "bad.zip",
                        lambda name, data: data.replace(b"ETT - Abnormal", b"ETT | Abnormal"))
    msg = _error(tmp_path, bad)
    assert "train.csv: class column 'ETT | Abnormal' holds both a space and '|'" in msg


def test_integer_ids_keep_leading_zeros(tmp_path):
    ids = ["007", "010", "0100", "100", "0042", "42"]
    e = {f"train/{i}.png": fx_comps._img(10 * k) for k, i in enumerate(ids)}
    e |= {"test/0001.png": fx_comps._img(5), "test/1.png": fx_comps._img(6)}
    e["train.csv"] = pd.DataFrame({"id": ids, "label": ["a", "b"] * 3}).to_csv(index=False).encode()
    e["sample_submission.csv"] = b"id,label\n0001,a\n1,a\n"
    fetch("z", data_dir=tmp_path / "data", source=fx_comps._zip(tmp_path / "z.zip", e), n_folds=2)
    comp = CompetitionDir.open(tmp_path / "data", "z")
    assert comp.labels()["Id"].tolist() == ids and comp.test_ids() == ["0001", "1"]
    assert comp.image_path("train", "0042").name == "0042.png"


# ----------------------------------------------------------------------------- bad input


def test_unknown_metric_is_one_line_listing_the_known(tmp_path):
    msg = _error(tmp_path, fx_comps.cassava(tmp_path / "z"), metric="f1_micro")
    assert msg.startswith("--metric f1_micro: unknown metric; known: ") and "roc_auc" in msg


def test_sample_contradicting_the_train_labels(tmp_path):
    zip_path = fx_comps.state_farm(tmp_path / "z")
    with zipfile.ZipFile(zip_path) as zf:
        e = {n: zf.read(n) for n in zf.namelist()}
    sub = pd.read_csv(zipfile.ZipFile(zip_path).open("sample_submission.csv")).rename(columns={"c9": "c10"})
    e["sample_submission.csv"] = sub.to_csv(index=False).encode()
    msg = _error(tmp_path, fx_comps._zip(tmp_path / "bad.zip", e))
    assert "sample_submission.csv: " in msg and "c10" in msg
    e["sample_submission.csv"] = b"image_id,label\nx.jpg,7\n"
    cassava = fx_comps.cassava(tmp_path / "c")
    with zipfile.ZipFile(cassava) as zf:
        c = {n: zf.read(n) for n in zf.namelist()}
    c["sample_submission.csv"] = c["sample_submission.csv"].replace(b",4\n", b",7\n")
    msg = _error(tmp_path, fx_comps._zip(tmp_path / "c7.zip", c))
    assert "sample_submission.csv: column label holds '7', which is no class" in msg


def test_probability_column_for_a_non_binary_target(tmp_path):
    with zipfile.ZipFile(fx_comps.cassava(tmp_path / "c")) as zf:
        c = {n: zf.read(n) for n in zf.namelist()}
    c["sample_submission.csv"] = c["sample_submission.csv"].replace(b",4\n", b",0.2\n")
    msg = _error(tmp_path, fx_comps._zip(tmp_path / "p.zip", c))
    assert "holds numbers (0.2) but the train labels have 5 classes" in msg


# ----------------------------------------------------------------------------- end to end


def _kit(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


MULTICLASS = {"plant-seedlings-classification": [], "digit-recognizer": [],
              "cassava-leaf-disease-classification": [], "leaf-classification": [],
              "state-farm-distracted-driver-detection": ["--group-col", "subject"]}
OTHERS = {"dogs-vs-cats-redux-kernels-edition": ["--positive", "dog", "--metric", "log_loss"],
          "histopathologic-cancer-detection": ["--metric", "roc_auc"],
          "plant-pathology-2020-fgvc7": [], "imet-2019-fgvc6": [],
          "humpback-whale-identification": [],
          "siim-isic-melanoma-classification": ["--metric", "roc_auc", "--group-col", "patient_id"],
          "aptos2019-blindness-detection": ["--metric", "qwk"],
          "ranzcr-clip-catheter-line-classification": ["--group-col", "PatientID"]}


@pytest.mark.slow  # ~5 s per competition: fetch, 1 epoch x 2 folds at 16 px, submit --dry-run
@pytest.mark.parametrize("slug", [*MULTICLASS, *OTHERS])
def test_fetch_train_submit_dry_run(tmp_path, monkeypatch, slug):
    monkeypatch.chdir(tmp_path)
    zip_path = fx_comps.COMPS[slug](tmp_path / "zips")
    _kit("fetch", slug, "--from", zip_path, "--folds", "2", *{**MULTICLASS, **OTHERS}[slug])
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    _kit("train", recipe, f"competition={slug}", "train.epochs=1", "data.image_size=16",
         "train.batch_size=4", "--name", "r")
    out = _kit("submit", "runs/r", "--dry-run")
    assert "nothing uploaded" in out
    sub = pd.read_csv(next(Path("submissions").glob("*-r.csv")), dtype=str, keep_default_na=False)
    comp = CompetitionDir.open("data", slug)
    sample = comp.sample_submission()
    assert list(sub.columns) == list(sample.columns)
    assert sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    kind = comp.meta()["submission"]["kind"]
    if kind == "label":
        assert sub.iloc[:, 1].isin(comp.classes).all()
    elif kind in ("prob", "prob_positive"):
        assert sub.iloc[:, 1:].astype(float).to_numpy().min() >= 0
    else:
        sets = sub.iloc[:, 1].str.split()
        assert sets.map(lambda s: set(s) <= set(comp.classes)).all()
        if "k" in comp.meta()["submission"]:
            assert sets.map(len).eq(comp.meta()["submission"]["k"]).all()
    assert json.loads(comp.meta_path.read_text())["metric"] == comp.meta()["metric"]


def _rewrite_csvs(src: Path, dst: Path, fn) -> Path:
    """A copy of zip `src` with every CSV's bytes passed through fn(name, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            data = zin.read(n)
            zout.writestr(n, fn(n, data) if n.endswith(".csv") else data)
    return dst


def _spaced(name: str, data: bytes) -> bytes:
    """train.csv as a spreadsheet might save it: `image_id, label` and `1000.jpg , 3 `."""
    if not name.endswith("train.csv"):
        return data
    return b"\n".join(b" , ".join(v.strip() + b" " for v in line.split(b","))
                      for line in data.splitlines()) + b"\n"


@pytest.mark.parametrize("edit", [
    lambda n, d: b"\xef\xbb\xbf" + d.replace(b"\n", b"\r\n"),  # BOM + CRLF, every CSV
    _spaced,  # spaces around the label CSV's names and values
], ids=["bom-crlf", "spaces"])
def test_label_csv_with_bom_crlf_or_spaces_reads_as_shipped_clean(tmp_path, edit):
    """The same competition as clean CSVs: same Ids, labels and classes; no '1000.jpg ' Id that
    names no image (it was "cannot tell the train image folder"), no class '3 '."""
    clean = _fetch(tmp_path / "a", fx_comps.cassava, "cassava-leaf-disease-classification")
    zip_path = _rewrite_csvs(fx_comps.cassava(tmp_path / "z"), tmp_path / "edited.zip", edit)
    fetch("c2", data_dir=tmp_path / "data", source=zip_path, n_folds=2)
    comp = CompetitionDir.open(tmp_path / "data", "c2")
    assert comp.classes == clean.classes == ["0", "1", "2", "3", "4"]
    pd.testing.assert_frame_equal(comp.labels(), clean.labels())
    assert comp.test_ids() == clean.test_ids() and comp.meta()["id_col"] == "image_id"
