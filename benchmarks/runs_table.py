"""Print a markdown table of finished runs (train or blend): the accuracy-vs-time rows of benchmarks/BENCHMARKS.md.

    python benchmarks/runs_table.py runs/resnet_fast runs/rfs runs/rfs_targeted \
        --classes leopard squirrel shark dolphin

Reads only the run folders' summary.json / recipe.yaml (nothing is re-scored or typed in by hand).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def row(run: Path, classes: list[str]) -> str:
    s = json.loads((run / "summary.json").read_text())
    cv = s["cv"]
    folds = " / ".join(f"{f['accuracy']:.3f}" for f in s.get("per_fold", []))
    minutes = s.get("timings", {}).get("total_s")
    ips = s.get("images_per_s")
    model = epochs = "-"
    if (run / "recipe.yaml").exists() and s.get("kind", "train") == "train":
        rec = yaml.safe_load((run / "recipe.yaml").read_text())
        model, epochs = rec["model"]["name"], rec["train"]["epochs"]
    elif s.get("kind") == "blend":
        model = f"blend:{s.get('method')}"
    per_class = " ".join(f"{s['per_class'].get(c, float('nan')):.3f}" for c in classes)
    return (f"| {s.get('competition')} | {run.name} | {model} | {epochs} | {cv['accuracy']:.4f} | "
            f"{cv['log_loss']:.4f} | {folds} | {per_class} | "
            f"{'-' if minutes is None else f'{minutes / 60:.1f}'} | {ips or '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--classes", nargs="*", default=[], help="per-class OOF accuracy columns")
    args = ap.parse_args()
    head = ("| competition | run | model | epochs | OOF acc | OOF log loss | per fold | "
            + " ".join(args.classes) + " | wall min | train img/s |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for run in args.runs:
        print(row(run, args.classes))


if __name__ == "__main__":
    main()
