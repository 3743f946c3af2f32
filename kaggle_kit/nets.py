"""Our small-image nets, registered in timm's registry (models.py imports this module, so after
`import kaggle_kit.models` `timm.create_model("kit_resnet9", num_classes=15)` works).

- `kit_resnet9`: the recommended fast 32x32 net (ResNet-9 / airbench style: conv -> maxpool -> BN ->
  GELU groups with residual blocks, global max pool, scaled linear head): 190 MFLOPs/image forward
  (2 x multiply-adds) at 32x32, 1.65 M params. `kit_resnet9_s`: half width, 48 MFLOPs.
- `kit_vgg16` / `kit_vgg19`: timm's VGG trunk and ImageNet weights with a pooled linear head for
  small images (timm's own VGG also runs at >= 32x32, but its head is a 7x7 conv over a tiled map).
- `kit_baseline_cnn`: the student report's best model: four Conv-BN-ELU x2 blocks (32..256 channels)
  with maxpool and growing dropout 0.2/0.3/0.4/0.5, flatten of a 4x4 map -> linear; made for 64x64
  (422 MFLOPs/image there, 106 at 32x32).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 train set, RGB in [0, 1]
CIFAR_STD = (0.2673, 0.2564, 0.2762)


def _cfg(input_size: int, **kw) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, input_size, input_size),
            "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR_MEAN,
            "std": CIFAR_STD, "first_conv": "stem.conv", "classifier": "head", "license": "mit", **kw}


# read by timm.register_model: gives each net its pretrained_cfg (input size, mean/std, classifier)
default_cfgs = {"kit_resnet9": _cfg(32), "kit_resnet9_s": _cfg(32), "kit_baseline_cnn": _cfg(64)}
VGG_BASES = {"kit_vgg16": "vgg16", "kit_vgg19": "vgg19"}  # kit name -> timm net whose weights load
for _k in VGG_BASES:
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
    base = VGG_BASES[variant]
    num_classes = kwargs.pop("num_classes", 1000)
    drop_rate = kwargs.pop("drop_rate", 0.0)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    for k in ("pretrained_cfg", "img_size"):
        kwargs.pop(k, None)
    from kaggle_kit.models import _file_shapes  # models imports this module: import on use

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
