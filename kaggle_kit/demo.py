"""`kit demo`: the whole pipeline offline on the built-in digits competition, in minutes on a CPU.

fetch demo -> train two small recipes (4 folds each) -> blend -> submit --dry-run.
Each step is the same function the matching `kit` command calls; nothing here is demo-only logic.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from kaggle_kit import KitError

RECIPE_DIRS = (Path("recipes"), Path(__file__).resolve().parents[1] / "recipes")

# Two members that differ (seed, translation range, TTA views), so the blend has something to gain.
MEMBERS = {
    "demo-a": ["seed=0"],
    "demo-b": ["seed=1", "augment.pad_crop=2", "tta.views=[orig,shift]"],
}


def find_recipe(name: str) -> Path:
    """Path of a shipped recipe: ./recipes first, then the recipes next to this package."""
    for folder in RECIPE_DIRS:
        if (folder / name).exists():
            return folder / name
    raise KitError(f"recipe {name} not found in {', '.join(map(str, RECIPE_DIRS))}; "
                   "run kit from a clone of the kaggle_kit repository")


def run_demo(workdir: Path, epochs: int | None = None) -> str:
    """Run fetch -> train x2 -> blend -> submit --dry-run under `workdir`; return the summary.
    `epochs` overrides the recipe's train.epochs of both members (None: as the recipe says)."""
    from kaggle_kit.blend import blend
    from kaggle_kit.fetch import fetch
    from kaggle_kit.submit import submit
    from kaggle_kit.train import run as train

    console = Console()
    data_dir, runs_dir, subs_dir = workdir / "data", workdir / "runs", workdir / "submissions"
    t0 = time.perf_counter()
    console.rule("[bold]1/4 kit fetch demo")
    fetch("demo", data_dir=data_dir, source=None, force=False, n_folds=4, seed=42, refold=False,
          id_col=None, label_col=None, train_dir=None, test_dir=None)
    recipe = find_recipe("demo.yaml")
    shrink = [f"train.epochs={epochs}"] if epochs else []
    lines = []
    for i, (name, overrides) in enumerate(MEMBERS.items(), start=2):
        overrides = overrides + shrink
        console.rule(f"[bold]{i}/4 kit train {recipe} {' '.join(overrides)} --name {name}")
        summary = train(recipe, overrides, name=name, runs_dir=runs_dir, data_dir=data_dir,
                        resume=False, force=True)
        lines.append(f"{name:14s} CV accuracy {summary['cv']['accuracy']:.4f}  "
                     f"log loss {summary['cv']['log_loss']:.4f}")
    console.rule("[bold]3/4 kit blend")
    board = blend([runs_dir / n for n in MEMBERS], method="best", name="demo-blend",
                  runs_dir=runs_dir, data_dir=data_dir, submissions_dir=subs_dir)
    console.print(board)
    console.rule("[bold]4/4 kit submit --dry-run")
    result = submit(runs_dir / "demo-blend", message="kit demo", dry_run=True, competition=None,
                    timeout=0, data_dir=data_dir, runs_dir=runs_dir, submissions_dir=subs_dir)
    lines.append(f"submission: {result.get('file') if isinstance(result, dict) else result}")
    lines.append(f"total {time.perf_counter() - t0:.0f} s")
    return "\n".join(lines)
