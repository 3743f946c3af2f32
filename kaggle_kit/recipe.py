"""Recipes: standalone YAML files validated strictly into a typed `Recipe` before torch is imported.

    recipe = load("recipes/resnet_fast.yaml", ["train.epochs=2", "model.name=resnet18"])

Every section forbids unknown keys (with a "did you mean ..." hint) and rejects wrong types, so a
typo fails in milliseconds instead of after an hour of training. Overrides are dotted
`key=value` pairs whose values are parsed as YAML (`train.lr=0.1`, `cv.folds=[0,1]`).
This module imports no torch/timm: `kit recipes` and recipe errors stay instant.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kaggle_kit import KitError


class _Strict(BaseModel):
    # frozen: the recipe a run writes to recipe.yaml is the one it trains with (copies, not edits)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)


class Data(_Strict):
    image_size: int | None = Field(None, ge=8)  # pixels (square) the net sees; None = as shipped
    # decode: resize once into the uint8 cache (bilinear, PIL); device: cache as shipped and
    # upsample each batch on the device (bilinear) -- cheaper memory for big transfer-learning inputs
    resize: Literal["decode", "device"] = "decode"
    # non-square / mixed sizes -> the image_size square: stretch (aspect not kept) or crop (scale
    # the short side, centre-crop). Each (size, fit) has its own decode cache.
    fit: Literal["stretch", "crop"] = "stretch"
    # where training reads images: device = the whole uint8 cache on the GPU (or in RAM on CPU),
    # stream = batches read from the cache file (pinned, non_blocking); auto picks by size, printed
    load: Literal["auto", "device", "stream"] = "auto"
    normalize: Literal["dataset", "model"] = "dataset"  # per-channel stats of train images / timm's
    limit: int | None = Field(None, ge=1)  # debugging: use only ~N train and N test images


class Model(_Strict):
    name: str  # any timm name, or kit_resnet9 / kit_baseline_cnn (registered by kaggle_kit.models)
    pretrained: bool = False  # ImageNet weights from the hub (needs internet or the HF cache)
    pretrained_file: str | None = None  # weights file (.pth/.safetensors) or a kit run of another competition
    drop_rate: float = Field(0.0, ge=0, lt=1)  # dropout before the classifier
    drop_path_rate: float | None = Field(None, ge=0, lt=1)  # stochastic depth (nets that have it)


class Train(_Strict):
    epochs: int = Field(ge=1)  # passes over the training images, per model (fold or refit)
    batch_size: int = Field(128, ge=1)  # images per optimizer micro-step, summed over processes
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD (nesterov by default) or AdamW
    lr: float = Field(gt=0)  # peak learning rate per 256 images: scaled by batch_size*grad_accum/256
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd momentum / adamw beta1
    nesterov: bool = True  # sgd only
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"  # per optimizer step
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup from 0 (onecycle: the rising part)
    step_epochs: int = Field(10, ge=1)  # schedule=step: multiply lr by step_gamma every N epochs
    step_gamma: float = Field(0.5, gt=0, le=1)  # schedule=step: the lr factor
    weight_decay: float = Field(5e-4, ge=0)  # on weights only (not norms, biases, pos_embed,
    # cls_token: timm.optim.create_optimizer_v2 + the net's no_weight_decay()); sgd: L2
    layer_decay: float | None = Field(None, gt=0, le=1)  # ViT-style layer-wise lr decay (timm nets
    # with group_matcher): lr * layer_decay^(depth - layer); None = off
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy label smoothing
    mixup: float = Field(0.0, ge=0)  # Beta(alpha, alpha) mixup; 0 = off
    cutmix: float = Field(0.0, ge=0)  # Beta(alpha, alpha) cutmix; 0 = off
    mix_prob: float = Field(1.0, ge=0, le=1)  # fraction of batches mixed when mixup/cutmix on
    ema: float | None = Field(None, gt=0, lt=1)  # EMA decay per optimizer step, e.g. 0.999,
    # reached after a warmup (timm ModelEmaV3: decay_t = min(ema, 1 - (1 + t)^-2/3))
    # auto: accelerate's launch flag / config if it set fp16/bf16, else bf16 on GPUs of compute
    # capability >= 8.0, fp16 on older GPUs (T4, P100), none on CPU. An explicit value wins.
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    channels_last: bool = True  # faster on this CPU (+10-25%) and on tensor-core GPUs
    compile: bool = False  # torch.compile the model after accelerate wraps it (slow first epoch)
    sync_bn: bool = False  # SyncBatchNorm across GPU processes (small per-GPU batches); not on CPU
    log_with: Literal["tensorboard", "wandb", "mlflow"] | None = None  # accelerate tracker: metrics
    # per epoch (tensorboard: runs/<run>/kit-<competition>-<run>/); needs that package installed
    max_minutes: float | None = Field(None, gt=0)  # wall-time budget, split evenly over models
    checkpoint: Literal["last", "best"] = "last"  # best = lowest validation loss
    num_workers: int = Field(2, ge=0)  # only used when per-image albumentations are needed
    threads: int | None = Field(None, ge=1)  # CPU threads for torch; None = torch's default (all
    # cores). On a shared / oversubscribed CPU, 1 is often faster

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as false


class Targeted(_Strict):
    classes: list[str] | None = None  # classes to oversample + augment more ...
    auto: int | None = Field(None, ge=1)  # ... or the K classes with lowest OOF accuracy of from_run
    from_run: str | None = None  # run name (under the runs dir) or path, for auto
    factor: float = Field(2.0, ge=1)  # each targeted image appears ~factor times per epoch
    transforms: list[dict[str, Any]] = []  # extra albumentations, only for targeted classes

    @model_validator(mode="after")
    def _one_source(self) -> Targeted:
        if (self.classes is None) == (self.auto is None):
            raise ValueError("give exactly one of `classes: [..]` or `auto: K` (+ from_run)")
        if self.auto is not None and not self.from_run:
            raise ValueError("`auto: K` needs `from_run: <earlier run>`")
        return self


class Augment(_Strict):
    flip: bool = False  # random horizontal flip on the batch tensor (fast path)
    pad_crop: int = Field(0, ge=0)  # pixels: reflect-pad then random crop, on the batch tensor
    transforms: list[dict[str, Any]] = []  # albumentations specs, per image (slower path)
    targeted: Targeted | None = None


MAX_REFIT = 100  # refit models (seeds) of one run


class CV(_Strict):
    folds: list[int] | None = None  # which folds of folds.csv to run; None = all
    refit: bool | int = False  # also train on all train images: False, True (=1) or N seeds
    test_from: Literal["folds", "refit", "both"] = "folds"  # which models test.csv averages

    @model_validator(mode="after")
    def _refit_for_test(self) -> CV:
        if not isinstance(self.refit, bool) and not 0 <= self.refit <= MAX_REFIT:
            raise ValueError(f"refit: {self.refit} must be true/false or a number of refit "
                             f"models from 0 to {MAX_REFIT}")
        if self.folds is not None and any(k < 0 for k in self.folds):
            raise ValueError(f"folds: {self.folds} must be fold numbers >= 0 (or null = all)")
        if self.test_from != "folds" and not self.refit:
            raise ValueError(f"test_from: {self.test_from} needs refit: true (or a number)")
        if self.folds == [] and self.test_from != "refit":
            raise ValueError("folds: [] trains no fold model; a refit-only run needs refit: true "
                             "and test_from: refit (it has no CV estimate)")
        return self

    @property
    def n_refit(self) -> int:
        return int(self.refit)


class TTA(_Strict):
    views: list[str] = ["orig"]  # e.g. [orig, hflip]: predictions averaged over these views


class Recipe(_Strict):
    competition: str  # folder under data/ (`kit fetch <competition>` makes it)
    data: Data = Data()
    model: Model
    train: Train
    augment: Augment = Augment()
    cv: CV = CV()
    tta: TTA = TTA()
    # weights, batch order and augmentation; the fold split is fetch's --seed. numpy / torch
    # seeds are non-negative; 32-bit keeps seed + refit index in range everywhere
    seed: int = Field(0, ge=0, le=2**31 - 1)


# ----------------------------------------------------------------------------- loading


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply dotted `key=value` overrides (values parsed as YAML), validate.

    Raises KitError (one line) for a missing file, bad YAML, an unknown key (with the closest
    valid names) or a wrong type."""
    path = Path(path)
    if not path.exists():
        raise KitError(f"{path}: recipe not found; `kit recipes` lists the shipped ones")
    if not path.is_file():
        raise KitError(f"{path}: is a folder, not a recipe file; give a .yaml file "
                       "(`kit recipes` lists the shipped ones)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: cannot read the recipe ({e})") from e
    except yaml.YAMLError as e:
        raise KitError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise KitError(f"{path}: a recipe is a mapping of sections (competition, model, train...)")
    for item in overrides or []:
        _apply_override(raw, item, path)
    return validate(raw, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the last
    one silently, so a pasted second `augment:` block would drop the recipe's own augment keys."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {seen[key]} and {line}); "
                "merge the two blocks into one", key_node.start_mark)
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def validate(raw: dict, where: str = "recipe") -> Recipe:
    """Validate a recipe dict; KitError naming the first bad key with a suggestion."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        errs = e.errors()  # an unknown key usually explains a missing one: report it first
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise KitError(f"{where}: unknown key '{loc}'{_suggest(err['loc'])}") from None
        got = repr(err.get("input"))
        got = got if len(got) < 80 else got[:77] + "..."
        raise KitError(f"{where}: {loc or 'recipe'}: {err['msg']} (got {got})") from None


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML (all defaults filled in), as saved in runs/<run>/recipe.yaml."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def list_recipes(folder: str | Path) -> list[tuple[Path, str]]:
    """(path, description) of every *.yaml in `folder`; description = first header comment line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: no such recipe folder")
    out = []
    for p in sorted(folder.glob("*.yaml")):
        desc = ""
        for line in p.read_text().splitlines():
            if not line.startswith("#"):
                break
            if text := line.lstrip("#").strip():
                desc = text
                break
        out.append((p, desc))
    return out


def _apply_override(raw: dict, item: str, where: Path) -> None:
    if "=" not in item:
        raise KitError(f"override '{item}': expected key=value, e.g. train.epochs=2")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        raise KitError(f"override '{item}': value is not valid YAML ({e})") from e
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            node[part] = nxt = {}
        if not isinstance(nxt, dict):
            raise KitError(f"override '{item}': '{'.'.join(parts[:i + 1])}' is not a section")
        node = nxt
    node[parts[-1]] = parsed


def _suggest(loc: tuple) -> str:
    """' (did you mean 'x'?)' for the closest valid key at that location, or ''."""
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        sub = _model_of(field.annotation) if field else None
        if sub is None:
            return ""
        model = sub
    names = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), names, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f" (valid keys: {', '.join(names)})"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (m := _model_of(arg)) is not None:
            return m
    return None
