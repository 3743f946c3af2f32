"""Refit vs fold bag: which models should `test.csv` come from?

A Kaggle test set's labels are withheld, so this holds one fold of a fetched competition out as
a labelled stand-in test set:

1. `<comp>-ho<k>/` is written in Kaggle's layout from `data/<comp>/`: train = the other folds,
   test = fold k (its labels kept aside in solution.csv), and imported with `kit fetch --from`,
   which makes its own 4 stratified folds of the remaining images.
2. `kit train RECIPE competition=<comp>-ho<k> cv.refit=true cv.test_from=both` trains the
   4 fold models and one refit model on all remaining images.
3. The held-out labels score: the fold bag (mean of fold*/test.csv), the refit model
   (refit0/test.csv), both averaged, and the OOF accuracy that CV reports, with each one's
   training seconds.

    python benchmarks/refit_vs_bag.py recipes/resnet_fast.yaml model.name=kit_resnet9_s
    python benchmarks/refit_vs_bag.py recipes/demo.yaml --competition demo --holdout-fold 0

Everything runs through the `kit` CLI, so what is measured is what a user gets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def make_holdout(data_dir: Path, comp: str, fold: int, out: Path) -> pd.Series:
    """Write a Kaggle-layout folder with fold `fold` as the test set (the one `kit estimate`
    writes); return its labels by Id."""
    from kaggle_kit.estimate import write_holdout_source
    from kaggle_kit.workspace import CompetitionDir

    src = CompetitionDir.open(data_dir, comp)
    folds = src.folds()
    write_holdout_source(src, src.meta(), folds, fold, out)
    return folds[folds["fold"] == fold].set_index("Id")["label"]


def kit(*args: str) -> None:
    print("$ kit " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "kaggle_kit.cli", *args], check=True)


def accuracy(probs: pd.DataFrame, truth: pd.Series) -> float:
    pred = probs.idxmax(axis=1)
    return float((pred.loc[truth.index] == truth).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--competition", default="animals15")
    ap.add_argument("--holdout-fold", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--name", default=None, help="run name (default: <comp>-ho<k>-refit)")
    args = ap.parse_args()

    ho = f"{args.competition}-ho{args.holdout_fold}"
    src_dir = args.data_dir / f"_{ho}_src"
    truth = make_holdout(args.data_dir, args.competition, args.holdout_fold, src_dir)
    kit("fetch", ho, "--from", str(src_dir), "--data-dir", str(args.data_dir), "--force")
    name = args.name or f"{ho}-refit"
    kit("train", args.recipe, f"competition={ho}", "cv.refit=true", "cv.test_from=both",
        *args.overrides, "--name", name, "--runs-dir", str(args.runs_dir),
        "--data-dir", str(args.data_dir), "--force")

    run = args.runs_dir / name
    summary = json.loads((run / "summary.json").read_text())
    secs = {m: s["train_s"] for m, s in summary["timings"]["models"].items()}
    tests = {m: pd.read_csv(run / m / "test.csv", index_col="Id") for m in secs}
    folds = [m for m in tests if m.startswith("fold")]
    refits = [m for m in tests if m.startswith("refit")]
    bag = sum(tests[m] for m in folds) / len(folds)
    refit = sum(tests[m] for m in refits) / len(refits)
    rows = [("OOF (CV estimate of one fold model)", summary["cv"]["accuracy"], np.nan),
            ("one fold model (mean over folds)",
             float(np.mean([accuracy(tests[m], truth) for m in folds])),
             float(np.mean([secs[m] for m in folds]))),
            (f"fold bag ({len(folds)} models)", accuracy(bag, truth), sum(secs[m] for m in folds)),
            ("refit on all train images", accuracy(refit, truth), sum(secs[m] for m in refits)),
            ("bag + refit (test_from: both)", accuracy((bag * len(folds) + refit * len(refits))
                                                       / (len(folds) + len(refits)), truth),
             sum(secs.values()))]
    print(f"\n{args.competition}: fold {args.holdout_fold} held out as a labelled test set "
          f"({len(truth)} images); recipe {args.recipe} {' '.join(args.overrides)}")
    print(f"{'test predictions from':40s} {'accuracy':>9s} {'train s':>9s}")
    for label, acc, s in rows:
        print(f"{label:40s} {acc:9.4f} {s:9.1f}")


if __name__ == "__main__":
    main()
