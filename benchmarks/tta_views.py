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
import torch

SETS = {
    "orig": ["orig"],
    "orig+hflip": ["orig", "hflip"],
    "orig+hflip+2 shifts": ["orig", "hflip", "shift_dr", "hflip_shift_ul"],
    "orig+hflip+4 shifts": ["orig", "hflip", "shift_dr", "shift_ul", "hflip_shift_dr",
                            "hflip_shift_ul"],
}


def fold_probs(model_pt: Path, x: np.ndarray, views: list[str],
               channels_last: bool) -> dict[str, np.ndarray]:
    """{view: (N, C) softmax probabilities} of the model in model_pt on uint8 images x (N,H,W,3),
    preprocessed by the training loop's own `to_input`."""
    from kaggle_kit import augment, models
    from kaggle_kit.infer import to_input

    ck = torch.load(model_pt, map_location="cpu", weights_only=False)
    cfg, m = ck["config"], ck["config"]["model"]
    net = models.create_model(m["name"], len(cfg["classes"]), drop_rate=m["drop_rate"],
                              drop_path_rate=m["drop_path_rate"] or 0.0, img_size=cfg["img_size"])
    net.load_state_dict(ck["model"])
    net.eval()
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    xb = to_input(torch.from_numpy(np.ascontiguousarray(x)), mean, std, cfg["img_size"],
                  channels_last)
    with torch.no_grad():
        return {v: torch.cat([torch.softmax(net(augment.tta_views(c, [v])[0]), 1)
                              for c in xb.split(256)]).numpy() for v in views}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kaggle_kit import images, recipe
    from kaggle_kit.rundir import RunDir
    from kaggle_kit.workspace import CompetitionDir

    run = RunDir(args.run)
    rec = recipe.load(args.run / "recipe.yaml", [])
    comp = CompetitionDir.open(args.data_dir, rec.competition)
    s = rec.data.image_size
    ids, x = images.load_cache(comp, "train", (s, s) if s and rec.data.resize == "decode" else None)
    pos = {i: k for k, i in enumerate(ids)}
    folds = comp.folds()
    classes = run.summary()["classes"]
    class_index = {c: i for i, c in enumerate(classes)}
    all_views = list(dict.fromkeys(v for vs in SETS.values() for v in vs))
    right = {name: [] for name in SETS}
    for fdir in sorted(args.run.glob("fold*")):
        k = int(fdir.name[4:])
        rows = folds[folds["fold"] == k]
        y = rows["label"].map(class_index).to_numpy()
        probs = fold_probs(fdir / "model.pt", x[[pos[i] for i in rows["Id"]]], all_views,
                           rec.train.channels_last)
        for name, vs in SETS.items():
            hit = np.mean([probs[v] for v in vs], axis=0).argmax(1) == y
            right[name].append(hit)
            print(f"fold {k}  {name:24s} {hit.mean():.4f}", flush=True)
    print(f"\n{args.run.name}: OOF accuracy by TTA view set (recipe's set: {rec.tta.views})")
    for name, hits in right.items():
        print(f"{name:24s} {np.concatenate(hits).mean():.4f}")


if __name__ == "__main__":
    main()
