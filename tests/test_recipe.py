"""Recipe schema: shipped recipes validate, strictness (unknown keys, types), overrides, listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaggle_kit import KitError
from kaggle_kit.recipe import dump, list_recipes, load

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipe_validates_and_has_header(path: Path) -> None:
    rec = load(path)
    head = path.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in head), f"{path}: needs a 3-line header comment"
    assert "Run:" in head[1] and "CV" in head[2]
    assert rec.competition == ("demo" if path.stem == "demo" else "animals15")


def test_expected_recipes_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"demo", "baseline_cnn", "resnet_fast", "resnet_fast_targeted", "vgg16", "vgg19",
            "xception"} <= names
    assert load(RECIPES / "resnet_fast.yaml").augment.targeted is None
    t = load(RECIPES / "resnet_fast_targeted.yaml").augment.targeted
    assert t.classes == ["leopard", "squirrel", "shark", "dolphin"]


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


BASE = {"competition": "demo", "model": {"name": "kit_resnet9"}, "train": {"epochs": 1, "lr": 0.1}}


@pytest.mark.parametrize("raw, match", [
    ({**BASE, "train": {"epochs": 1, "lr": 0.1, "batchsize": 8}},
     r"unknown key 'train\.batchsize' \(did you mean 'batch_size'\?\)"),
    ({**BASE, "modle": {"name": "x"}}, r"unknown key 'modle' \(did you mean 'model'"),
    ({**BASE, "augment": {"targeted": {"clases": ["a"]}}}, r"augment\.targeted\.clases.*'classes'"),
    ({**BASE, "train": {"epochs": "many", "lr": 0.1}}, r"train\.epochs: .*integer"),
    ({**BASE, "train": {"epochs": 1, "lr": 0.1, "optimizer": "adam"}}, r"train\.optimizer"),
    ({**BASE, "train": {"epochs": 1, "lr": 0.1, "mixed_precision": "fp8"}}, r"mixed_precision"),
    ({**BASE, "cv": {"test_from": "refit"}}, r"needs refit"),
    ({**BASE, "augment": {"targeted": {"auto": 3}}}, r"from_run"),
    ({**BASE, "augment": {"targeted": {"classes": ["a"], "auto": 3, "from_run": "x"}}}, r"exactly one"),
])
def test_bad_recipes_fail_with_one_line(tmp_path: Path, raw: dict, match: str) -> None:
    with pytest.raises(KitError, match=match) as e:
        load(_write(tmp_path, raw))
    assert "\n" not in str(e.value)


def test_overrides_are_dotted_and_yaml_typed() -> None:
    rec = load(RECIPES / "resnet_fast.yaml",
               ["train.epochs=2", "model.name=resnet18", "cv.folds=[0, 2]", "train.ema=0.99",
                "data.limit=64", "augment.flip=false", "tta.views=[orig]", "seed=7",
                "train.mixed_precision=no", "train.threads=1"])
    assert rec.train.mixed_precision == "no"  # YAML's bare `no` (false) means "no"
    assert (rec.train.epochs, rec.model.name, rec.cv.folds, rec.train.ema) == (2, "resnet18", [0, 2], 0.99)
    assert (rec.data.limit, rec.augment.flip, rec.tta.views, rec.seed) == (64, False, ["orig"], 7)
    assert load(RECIPES / "resnet_fast.yaml").train.epochs != 2  # the file is untouched


@pytest.mark.parametrize("item, match", [
    ("train.epochz=2", r"did you mean 'epochs'"),
    ("train.epochs", r"expected key=value"),
    ("train.epochs=two", r"train\.epochs"),
    ("seed.x=1", r"'seed' is not a section"),
])
def test_bad_overrides(item: str, match: str) -> None:
    with pytest.raises(KitError, match=match):
        load(RECIPES / "demo.yaml", [item])


def test_dump_round_trips(tmp_path: Path) -> None:
    rec = load(RECIPES / "resnet_fast_targeted.yaml", ["train.epochs=3"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump(rec))
    assert load(p) == rec


def test_a_minimal_recipe_round_trips_with_every_default(tmp_path: Path) -> None:
    """Every default is itself valid: a run's recipe.yaml (all defaults written out) loads back."""
    p = tmp_path / "minimal.yaml"
    p.write_text("competition: demo\nmodel: {name: kit_resnet9_s}\ntrain: {epochs: 1, lr: 0.1}\n")
    rec = load(p)
    p.write_text(dump(rec))
    assert load(p) == rec


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="not found"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(KitError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
    with pytest.raises(KitError, match="is a folder"):
        load(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xd0\xff")
    with pytest.raises(KitError, match="cannot read the recipe"):
        load(tmp_path / "bin.yaml")


def test_key_given_twice_is_refused(tmp_path: Path) -> None:
    """A second `augment:` block pasted below the recipe's own would silently replace it (PyYAML
    keeps the last key): refused, naming both lines."""
    text = (RECIPES / "resnet_fast.yaml").read_text() + "augment:\n  flip: false\n"
    (tmp_path / "twice.yaml").write_text(text)
    n = len(text.splitlines())
    with pytest.raises(KitError, match=rf"key 'augment' appears twice \(lines \d+ and {n - 1}\)"):
        load(tmp_path / "twice.yaml")


def test_list_recipes_descriptions() -> None:
    listed = dict(list_recipes(RECIPES))
    assert listed[RECIPES / "demo.yaml"].startswith("demo:")
    assert len(listed) == len(SHIPPED)
    with pytest.raises(KitError):
        list_recipes(RECIPES / "nope")


def test_validation_does_not_import_torch() -> None:
    code = ("import sys; from kaggle_kit.recipe import load; "
            f"load({str(RECIPES / 'resnet_fast.yaml')!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# The documented range of every bounded key: (key, lowest valid, just below it, highest valid,
# just above it); None = no bound on that side. Written out (not read from the schema) so that a
# changed bound shows.
BOUNDS = [
    ("data.image_size", 8, 7, None, None), ("data.limit", 1, 0, None, None),
    ("model.drop_rate", 0.0, -0.01, 0.99, 1.0), ("model.drop_path_rate", 0.0, -0.01, 0.99, 1.0),
    ("train.epochs", 1, 0, None, None), ("train.batch_size", 1, 0, None, None),
    ("train.lr", 1e-9, 0.0, None, None), ("train.momentum", 0.0, -0.01, 0.99, 1.0),
    ("train.warmup_epochs", 0.0, -0.01, None, None), ("train.step_epochs", 1, 0, None, None),
    ("train.step_gamma", 0.01, 0.0, 1.0, 1.01), ("train.weight_decay", 0.0, -0.01, None, None),
    ("train.layer_decay", 0.01, 0.0, 1.0, 1.01), ("train.label_smoothing", 0.0, -0.01, 0.99, 1.0),
    ("train.mixup", 0.0, -0.01, None, None), ("train.cutmix", 0.0, -0.01, None, None),
    ("train.mix_prob", 0.0, -0.01, 1.0, 1.01), ("train.ema", 0.01, 0.0, 0.999, 1.0),
    ("train.grad_accum", 1, 0, None, None), ("train.max_minutes", 0.01, 0.0, None, None),
    ("train.num_workers", 0, -1, None, None), ("train.threads", 1, 0, None, None),
    ("augment.pad_crop", 0, -1, None, None),
]
CHOICES = {
    "data.resize": ["decode", "device"], "data.fit": ["stretch", "crop"],
    "data.load": ["auto", "device", "stream"], "data.normalize": ["dataset", "model"],
    "train.optimizer": ["sgd", "adamw"], "train.schedule": ["onecycle", "cosine", "step", "constant"],
    "train.mixed_precision": ["auto", "no", "fp16", "bf16"], "train.checkpoint": ["last", "best"],
    "train.log_with": ["tensorboard", "wandb", "mlflow"],
}


@pytest.mark.parametrize("key, low, below, high, above", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_bounds_of_each_key(key, low, below, high, above):
    demo = RECIPES / "demo.yaml"
    for value in (low, high):
        if value is not None:
            assert load(demo, [f"{key}={value}"])  # the edge itself is valid
    for value in (below, above):
        if value is not None:
            with pytest.raises(KitError, match=key.split(".")[-1]):
                load(demo, [f"{key}={value}"])


@pytest.mark.parametrize("key", CHOICES)
def test_choices_of_each_key(key):
    for value in CHOICES[key]:
        rec = load(RECIPES / "demo.yaml", [f"{key}={value}"])
        section, name = key.split(".")
        assert getattr(getattr(rec, section), name) == value  # "no": YAML false, read back
    with pytest.raises(KitError, match=key.split(".")[-1]):
        load(RECIPES / "demo.yaml", [f"{key}=nonsense"])


def test_targeted_bounds():
    demo = RECIPES / "demo.yaml"
    ok = load(demo, ["augment.targeted.classes=[three]", "augment.targeted.factor=1"])
    assert ok.augment.targeted.factor == 1
    for bad in (["augment.targeted.classes=[three]", "augment.targeted.factor=0.99"],
                ["augment.targeted.auto=0", "augment.targeted.from_run=r"]):
        with pytest.raises(KitError):
            load(demo, bad)
