"""Models: `timm.create_model` plus our small-image nets (nets.py) registered in timm's registry.

After `import kaggle_kit.models`, `timm.create_model("kit_resnet9", num_classes=15)` works and
`timm.list_models("kit_*")` lists our nets, so the recipe's `model.name` takes any timm name or ours.

Our nets (kit_resnet9 / _s, kit_vgg16 / 19, kit_baseline_cnn) and what each is for: nets.py.

This module never imports cli/recipe/kaggle_io: it takes flat arguments.
"""

from __future__ import annotations

import difflib
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from kaggle_kit import KitError
from kaggle_kit.nets import VGG_BASES  # importing nets registers the kit_* nets in timm


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
    # BatchNorm's step counters are bookkeeping, not weights: many weight files leave them out
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
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
    total = sum(not k.endswith("num_batches_tracked") for k in model.state_dict())
    line = f"model.pretrained_file: loaded {len(loaded)} of {total} tensors of {name} from {path.name}"
    new_head = total - len(loaded) - len(missing)
    if new_head:
        line += f"; classifier new ({new_head} tensors)"
    if missing:
        line += f"; {len(missing)} trunk tensors start random, e.g. {', '.join(missing[:2])}"
    return line


def _check_weights_reachable(name: str, cfg) -> None:
    """Fail fast (instead of timm's ~45 s of retries) when weights are neither cached nor online."""
    if name in VGG_BASES:
        name = VGG_BASES[name]
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
