"""Models: `timm.create_model` plus our small-image nets registered in timm's registry.

After `import kaggle_kit.models`, `timm.create_model("kit_resnet9", num_classes=15)` works and
`timm.list_models("kit_*")` lists our nets, so the recipe's `model.name` takes any timm name or ours.

- `kit_resnet9`: the recommended fast 32x32 net (ResNet-9 / airbench style: conv -> maxpool -> BN ->
  GELU groups with residual blocks, global max pool, scaled linear head): 190 MFLOPs/image forward
  (2 x multiply-adds) at 32x32, 1.65 M params. `kit_resnet9_s`: half width, 48 MFLOPs.
- `kit_vgg16` / `kit_vgg19`: timm's VGG trunk and ImageNet weights with a pooled linear head for
  small images (timm's own VGG also runs at >= 32x32, but its head is a 7x7 conv over a tiled map).
- `kit_baseline_cnn`: the student report's best model: four Conv-BN-ELU x2 blocks (32..256 channels)
  with maxpool and growing dropout 0.2/0.3/0.4/0.5, flatten of a 4x4 map -> linear; made for 64x64
  (422 MFLOPs/image there, 106 at 32x32).

This module never imports cli/recipe/kaggle_io: it takes flat arguments.
"""

from __future__ import annotations

import difflib
import socket
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn

from kaggle_kit import KitError

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 train set, RGB in [0, 1]
CIFAR_STD = (0.2673, 0.2564, 0.2762)


def _cfg(input_size: int, **kw) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, input_size, input_size),
            "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR_MEAN,
            "std": CIFAR_STD, "first_conv": "stem.conv", "classifier": "head", "license": "mit", **kw}


# read by timm.register_model: gives each net its pretrained_cfg (input size, mean/std, classifier)
default_cfgs = {"kit_resnet9": _cfg(32), "kit_resnet9_s": _cfg(32), "kit_baseline_cnn": _cfg(64)}
_VGG_BASES = {"kit_vgg16": "vgg16", "kit_vgg19": "vgg19"}  # kit name -> timm net whose weights load
for _k in _VGG_BASES:
    default_cfgs[_k] = _cfg(32, mean=timm.data.IMAGENET_DEFAULT_MEAN,
                            std=timm.data.IMAGENET_DEFAULT_STD, first_conv="features.0",
                            classifier="head.fc", license="bsd-3-clause")


class ConvBN(nn.Sequential):
    """conv3x3 (no bias) -> [maxpool 2] -> BN -> activation; (B,Cin,H,W) -> (B,Cout,H',W')."""

    def __init__(self, c_in: int, c_out: int, act: type[nn.Module], pool: bool = False):
        layers = [("conv", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))]
        layers += [("pool", nn.MaxPool2d(2))] if pool else []
        layers += [("bn", nn.BatchNorm2d(c_out)), ("act", act())]
        super().__init__(OrderedDict(layers))


class Residual(nn.Module):
    """x + drop_path(conv_bn(conv_bn(x))), shapes unchanged."""

    def __init__(self, c: int, act: type[nn.Module], drop_path: float):
        super().__init__()
        self.body = nn.Sequential(ConvBN(c, c, act), ConvBN(c, c, act))
        self.drop_path = timm.layers.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.body(x))


class KitNet(nn.Module):
    """Shared timm-style shell: stem -> stages -> head, with forward_features / forward_head,
    get_classifier / reset_classifier, so timm's pretrained loading and our train loop treat it
    like any timm model."""

    def _finish(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class KitResNet9(KitNet):
    """ResNet-9 / airbench-style net for small images (any size >= 8, made for 32x32).

    stem conv(c0) @HxW -> [conv(c1)+pool, residual] @H/2 -> [conv(c2)+pool, (residual)] @H/4
    -> [conv(c3)+pool, residual] @H/8 -> global max pool -> dropout -> linear * logit_scale.
    widths=(c0,c1,c2,c3), scaled by width_mult (rounded to multiples of 8).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3,
                 widths: tuple[int, ...] = (32, 64, 128, 256), width_mult: float = 1.0,
                 residual: tuple[bool, bool, bool] = (True, False, True), act: str = "gelu",
                 logit_scale: float = 0.125, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 img_size: int | None = None):
        super().__init__()
        c = [max(8, int(round(w * width_mult / 8)) * 8) for w in widths]
        act_layer = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}[act]
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, c[0], 3, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(c[0]))
        self.stem.add_module("act", act_layer())
        stages = []
        for i in range(3):
            stage = nn.Sequential(ConvBN(c[i], c[i + 1], act_layer, pool=True))
            if residual[i]:
                stage.append(Residual(c[i + 1], act_layer, drop_path_rate))
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.logit_scale = logit_scale  # airbench/Myrtle: a small fixed logit scale trains faster
        self._finish(c[3], num_classes, drop_rate)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.amax(x, dim=(2, 3))  # (B, C) global max pool
        x = self.head_drop(x)
        return x if pre_logits else self.head(x) * self.logit_scale


class KitBaselineCNN(KitNet):
    """The report's best model: blocks of [Conv-BN-ELU] x2 -> maxpool -> dropout, widths
    32/64/128/256 with dropout 0.2/0.3/0.4/0.5, then flatten of a 4x4 map -> linear.
    Made for 64x64 inputs (4x4 after four pools); other sizes are adaptively pooled to 4x4."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3,
                 widths: tuple[int, ...] = (32, 64, 128, 256),
                 dropouts: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5), flat_size: int = 4,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 img_size: int | None = None):
        super().__init__()
        if len(widths) != len(dropouts):
            raise ValueError("kit_baseline_cnn: widths and dropouts need the same length")
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(widths[0]))
        self.stem.add_module("act", nn.ELU())
        blocks, c_in = [], widths[0]
        for i, (w, p) in enumerate(zip(widths, dropouts, strict=True)):
            block = nn.Sequential() if i == 0 else nn.Sequential(ConvBN(c_in, w, nn.ELU))
            block.append(ConvBN(w, w, nn.ELU))
            block.append(nn.MaxPool2d(2))
            block.append(nn.Dropout(p))
            blocks.append(block)
            c_in = w
        self.stages = nn.Sequential(*blocks)
        self.flat_size = flat_size
        self._finish(c_in * flat_size * flat_size, num_classes, drop_rate)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.shape[-1] != self.flat_size or x.shape[-2] != self.flat_size:
            x = nn.functional.adaptive_avg_pool2d(x, self.flat_size)
        x = self.head_drop(torch.flatten(x, 1))  # (B, C*4*4)
        return x if pre_logits else self.head(x)


@register_model
def kit_resnet9(pretrained: bool = False, **kwargs) -> KitResNet9:
    """Fast small-image ResNet-9 (airbench style); kwargs: widths, width_mult, residual, act."""
    return build_model_with_cfg(KitResNet9, "kit_resnet9", pretrained, **kwargs)


@register_model
def kit_resnet9_s(pretrained: bool = False, **kwargs) -> KitResNet9:
    """kit_resnet9 at half width (~4x fewer FLOPs): quick looks, demos, tiny competitions."""
    kwargs.setdefault("width_mult", 0.5)
    return build_model_with_cfg(KitResNet9, "kit_resnet9_s", pretrained, **kwargs)


@register_model
def kit_baseline_cnn(pretrained: bool = False, **kwargs) -> KitBaselineCNN:
    """The report's Conv-BN-ELU CNN with growing dropout, for 64x64 inputs."""
    return build_model_with_cfg(KitBaselineCNN, "kit_baseline_cnn", pretrained, **kwargs)



def _small_vgg(variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm's VGG (with its ImageNet weights when pretrained / from a timm vgg weights file) whose
    4096-wide ConvMlp head -- at 32x32 a 7x7 conv over a 1x1 map tiled to 7x7, 120 M parameters --
    is replaced by global average pool -> dropout -> linear(512, num_classes), the usual
    small-image transfer head (Keras include_top=False + pooling + Dense)."""
    base = _VGG_BASES[variant]
    num_classes = kwargs.pop("num_classes", 1000)
    drop_rate = kwargs.pop("drop_rate", 0.0)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    for k in ("pretrained_cfg", "img_size"):
        kwargs.pop(k, None)
    file = overlay.get("file")
    own = bool(file) and "pre_logits.fc1.weight" not in _file_shapes(Path(file))  # a kit_vgg file
    model = timm.create_model(base, pretrained=pretrained and not own, num_classes=num_classes,
                              pretrained_cfg_overlay=overlay if not own else None, **kwargs)
    model.pre_logits = nn.Identity()
    model.head = timm.layers.ClassifierHead(512, num_classes, pool_type="avg", drop_rate=drop_rate)
    model.num_features = model.head_hidden_size = 512
    model.pretrained_cfg = {**model.pretrained_cfg, **default_cfgs[variant], "architecture": variant}
    if own:
        sd = timm.models.load_state_dict(file)
        strict = sd.get("head.fc.weight", torch.empty(0)).shape[:1] == (num_classes,)
        if not strict:
            sd = {k: v for k, v in sd.items() if not k.startswith("head.fc.")}
        model.load_state_dict(sd, strict=strict)
    return model


@register_model
def kit_vgg16(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm vgg16 (ImageNet weights) with a pooled linear head for small images."""
    return _small_vgg("kit_vgg16", pretrained, **kwargs)


@register_model
def kit_vgg19(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm vgg19 (ImageNet weights) with a pooled linear head for small images."""
    return _small_vgg("kit_vgg19", pretrained, **kwargs)


def create_model(name: str, num_classes: int, *, pretrained: bool = False,
                 pretrained_file: str | None = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, img_size: int | None = None) -> nn.Module:
    """`timm.create_model(name)` with a head of `num_classes` outputs.

    pretrained_file: offline weights (.pth/.bin/.safetensors; a bare state dict or a checkpoint
    dict with "model"/"state_dict"/"state_dict_ema"), loaded by timm's own pretrained mechanism,
    which drops the file's classifier when its class count differs from `num_classes`.
    pretrained=True without a file downloads through timm (needs network or a warm HF cache).
    img_size is passed only to nets that need it (fixed-input-size ones such as ViTs; ours).
    Raises KitError for an unknown name (with close timm names), a missing/mismatched file,
    unreachable weights, or kwargs the net does not take.
    """
    _check_name(name)
    kwargs: dict = {"num_classes": num_classes}
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    cfg = timm.models.get_pretrained_cfg(name)
    if img_size and (name.startswith("kit_") or (cfg is not None and cfg.fixed_input_size)):
        kwargs["img_size"] = img_size
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise KitError(f"model.pretrained_file: {path} not found; give the path of a "
                           ".pth/.bin/.safetensors weights file")
        shapes = _file_shapes(path)
        n_file = next((shapes[k][0] for k in _classifier_keys(cfg) if k in shapes), -1)
        kwargs |= {"pretrained": True,
                   "pretrained_cfg_overlay": {"file": str(path), "num_classes": n_file}}
    elif pretrained:
        _check_weights_reachable(name, cfg)
        kwargs["pretrained"] = True
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as e:
        extra = [k for k in ("drop_rate", "drop_path_rate", "img_size") if k in kwargs]
        raise KitError(f"model.name={name}: does not accept {extra} ({e}); "
                       "set those to 0 / leave them out") from e
    except (RuntimeError, KeyError) as e:
        if not (pretrained_file or pretrained):
            raise
        first = str(e).strip().splitlines()[0][:200]
        src = pretrained_file or "pretrained weights"
        raise KitError(f"model.pretrained_file: {src} does not fit {name} ({first}); "
                       "use weights saved from the same architecture") from e
    if pretrained_file:
        _check_file_fits(model, shapes, path, name, cfg)
    return model


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('pattern*')"
    raise KitError(f"model.name={name}: unknown model; {hint}")


def _file_shapes(path: Path) -> dict[str, tuple]:
    """{key: shape} of the tensors in a weights file (checkpoint wrappers and 'module.' removed),
    read lazily (safetensors header / mmap) so large files cost little."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise KitError(f"model.pretrained_file: {path} is not a readable weights file "
                       f"({str(e).splitlines()[0][:150]})") from e
    for k in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(k), dict):
            sd = sd[k]
            break
    if not isinstance(sd, dict):
        raise KitError(f"model.pretrained_file: {path} holds no state dict")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in sd.items()
            if isinstance(v, torch.Tensor)}


def _classifier_keys(cfg) -> list[str]:
    heads = (cfg.classifier if cfg else None) or ()
    return [h + ".weight" for h in ((heads,) if isinstance(heads, str) else heads)]


def _coverage(model: nn.Module, shapes: dict, cfg) -> tuple[list[str], list[str], list[str]]:
    """(loaded keys, trunk keys, missing trunk keys) of model.state_dict() against a file's
    {key: shape}: a key loads when the file has it with the same shape."""
    heads = tuple(k.removesuffix(".weight") for k in _classifier_keys(cfg))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    loaded = [k for k, shape in own.items() if shapes.get(k) == shape]
    trunk = [k for k in own if not (heads and k.startswith(heads))]
    return loaded, trunk, [k for k in trunk if shapes.get(k) != own[k]]


def _check_file_fits(model: nn.Module, shapes: dict, path: Path, name: str, cfg) -> None:
    """timm loads non-strictly when it swaps the head: refuse a file that holds under half of the
    model's trunk tensors (another architecture), which would otherwise load silently."""
    _, trunk, missing = _coverage(model, shapes, cfg)
    if trunk and len(missing) > len(trunk) / 2:
        raise KitError(f"model.pretrained_file: {path} does not fit {name} ({len(missing)} of "
                       f"{len(trunk)} trunk tensors missing, e.g. {missing[0]}); use weights "
                       "saved from the same architecture")


def load_report(model: nn.Module, pretrained_file: str | Path) -> str:
    """One line: how many of the model's tensors `pretrained_file` filled in, and which start
    random (e.g. resnet18 weights in a resnet34: 'loaded 120 of 216 tensors ... 96 random')."""
    path = Path(pretrained_file).expanduser()
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    loaded, trunk, missing = _coverage(model, _file_shapes(path), timm.models.get_pretrained_cfg(name))
    total = len(model.state_dict())
    line = f"model.pretrained_file: loaded {len(loaded)} of {total} tensors of {name} from {path.name}"
    new_head = total - len(loaded) - len(missing)
    if new_head:
        line += f"; classifier new ({new_head} tensors)"
    if missing:
        line += f"; {len(missing)} trunk tensors start random, e.g. {', '.join(missing[:2])}"
    return line


def _check_weights_reachable(name: str, cfg) -> None:
    """Fail fast (instead of timm's ~45 s of retries) when weights are neither cached nor online."""
    if name in _VGG_BASES:
        name = _VGG_BASES[name]
        cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise KitError(f"model.pretrained: timm has no pretrained weights for {name}; set "
                       "model.pretrained=false or give model.pretrained_file")
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, fname), str):
                return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        raise KitError(f"model.pretrained: cannot download {name} weights (no network: {e}); "
                       "download them elsewhere and set model.pretrained_file=<path>") from e


def check_input(model: nn.Module, img_size: int, in_chans: int = 3) -> None:
    """Dummy forward of a (2, in_chans, img_size, img_size) batch in eval mode; KitError
    "model X cannot take HxW inputs; set data.image_size >= N" if it fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            x = torch.zeros(2, in_chans, img_size, img_size,
                            device=p.device if p is not None else "cpu")
            model(x)
    except Exception as e:  # noqa: BLE001 - any failure means this size does not work
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        need = _min_size(model, in_chans, img_size)
        raise KitError(f"model {name} cannot take {img_size}x{img_size} inputs "
                       f"({str(e).splitlines()[0][:120]}); set data.image_size >= {need}") from e
    finally:
        model.train(was_training)


def _min_size(model: nn.Module, in_chans: int, failed: int) -> int:
    """Smallest power-of-two-ish size in (failed, 512] that runs, else the cfg input size."""
    p = next(model.parameters(), None)
    for s in (8, 16, 24, 32, 48, 64, 96, 128, 160, 224, 299, 384, 512):
        if s <= failed:
            continue
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_chans, s, s, device=p.device if p is not None else "cpu"))
            return s
        except Exception:  # noqa: BLE001, S112
            continue
    return int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])


def model_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, in [0, 1] units, from the model's pretrained_cfg (ImageNet
    defaults if it has none): the normalisation its pretrained weights expect."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    return mean, std
