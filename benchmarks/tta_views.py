"""TTA views: OOF accuracy of a finished run's saved fold models under other sets of views.

Each `runs/<run>/fold<k>/model.pt` holds the weights plus what the run used to feed them (image
size, mean/std, classes). This script predicts each model's held-out fold once per single view
and prints the OOF accuracy of several view sets (the probabilities of a set are the mean of its
views' probabilities, exactly as `kit train` averages them). The first row reproduces the run's
own oof.csv when the set equals the recipe's `tta.views` -- a check that nothing differs.

    python benchmarks/tta_views.py runs/rf30 --threads 2

To use a better set, put it in the recipe's `tta.views` and train: OOF and test always share it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SETS = {
    "orig": ["orig"],
    "orig+hflip": ["orig", "hflip"],
    "orig+hflip+2 shifts": ["orig", "hflip", "shift_dr", "hflip_shift_ul"],
    "orig+hflip+4 shifts": ["orig", "hflip", "shift_dr", "shift_ul", "hflip_shift_dr",
                            "hflip_shift_ul"],
}


def fold_probs(model_pt: Path, x: np.ndarray, views: list[str]) -> dict[str, np.ndarray]:
    """{view: (N, C) softmax probabilities} of the model in model_pt on uint8 images x (N,H,W,3)."""
    import timm

    import kaggle_kit.models  # noqa: F401  (registers kit_* nets in timm)
    from kaggle_kit import augment

    ck = torch.load(model_pt, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    m = cfg["model"]
    net = timm.create_model(m["name"], num_classes=len(cfg["classes"]),
                            **({"drop_rate": m["drop_rate"]} if m.get("drop_rate") else {}))
    net.load_state_dict(ck["model"])
    net.eval()
    xb = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    xb = (xb - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    if xb.shape[-1] != cfg["img_size"]:
        xb = torch.nn.functional.interpolate(xb, size=(cfg["img_size"],) * 2, mode="bilinear",
                                             align_corners=False)
    xb = xb.contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.no_grad():
        for v in views:
            out[v] = torch.cat([torch.softmax(net(augment.tta_views(c, [v])[0]), 1)
                                for c in xb.split(256)]).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kaggle_kit import images, recipe
    from kaggle_kit.workspace import CompetitionDir, RunDir

    run = RunDir(args.run)
    rec = recipe.load(args.run / "recipe.yaml", [])
    comp = CompetitionDir.open(args.data_dir, rec.competition)
    s = rec.data.image_size
    ids, x = images.load_cache(comp, "train", (s, s) if s and rec.data.resize == "decode" else None)
    pos = {i: k for k, i in enumerate(ids)}
    folds = pd.read_csv(comp.folds_path, dtype={"Id": str})
    classes = run.summary()["classes"]
    all_views = list(dict.fromkeys(v for vs in SETS.values() for v in vs))
    right = {name: [] for name in SETS}
    for fdir in sorted(args.run.glob("fold*")):
        k = int(fdir.name[4:])
        rows = folds[folds["fold"] == k]
        y = np.array([classes.index(label) for label in rows["label"]])
        probs = fold_probs(fdir / "model.pt", x[[pos[i] for i in rows["Id"]]], all_views)
        for name, vs in SETS.items():
            hit = np.mean([probs[v] for v in vs], axis=0).argmax(1) == y
            right[name].append(hit)
            print(f"fold {k}  {name:24s} {hit.mean():.4f}", flush=True)
    print(f"\n{args.run.name}: OOF accuracy by TTA view set (recipe's set: {rec.tta.views})")
    for name, hits in right.items():
        print(f"{name:24s} {np.concatenate(hits).mean():.4f}")


if __name__ == "__main__":
    main()
