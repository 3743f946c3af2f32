"""`kit demo`: the whole pipeline offline on the built-in digits competition, in minutes on a CPU.

fetch demo -> train two small recipes (4 folds each) -> blend -> submit --dry-run.
Each step is the same function the matching `kit` command calls; nothing here is demo-only logic.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from kaggle_kit import KitError
from kaggle_kit.rundir import RunDir

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
    """Run fetch -> train x2 -> blend -> submit --dry-run under `workdir`; return the closing
    summary (each run's CV, the submission, what to try next). `epochs` overrides the recipe's
    train.epochs of both members (None: as the recipe says)."""
    from rich.markup import escape

    from kaggle_kit import show
    from kaggle_kit.blend import blend
    from kaggle_kit.fetch import fetch
    from kaggle_kit.submit import submit
    from kaggle_kit.train import run as train

    console = Console()
    data_dir, runs_dir, subs_dir = workdir / "data", workdir / "runs", workdir / "submissions"
    n_steps, t0 = len(MEMBERS) + 3, time.perf_counter()

    def step(i: int, title: str, command: str) -> None:  # escape: `tta.views=[orig,shift]` is not markup
        console.rule(f"[bold]{i}/{n_steps} {escape(title)}")
        console.print(f"$ {escape(command)}", soft_wrap=True)

    def say(text: str) -> None:
        if text:
            console.print(escape(text), soft_wrap=True)

    step(1, "fetch", "kit fetch demo")
    fetched = fetch("demo", data_dir=data_dir, source=None, force=False, n_folds=4, seed=42,
                    refold=False, id_col=None, label_col=None, train_dir=None, test_dir=None)
    say(show.fetch_lines(fetched))
    recipe = find_recipe("demo.yaml")
    shrink = [f"train.epochs={epochs}"] if epochs else []
    lines = []
    for i, (name, overrides) in enumerate(MEMBERS.items(), start=2):
        overrides = overrides + shrink
        step(i, f"train {name}", f"kit train {recipe} {' '.join(overrides)} --name {name}")
        summary = train(recipe, overrides, name=name, runs_dir=runs_dir, data_dir=data_dir,
                        resume=False, force=True)
        say(show.run_lines(summary, runs_dir))
        lines.append(f"{runs_dir / name}: CV accuracy {summary['cv']['accuracy']:.4f}  "
                     f"log loss {summary['cv']['log_loss']:.4f}")
    step(n_steps - 1, "blend", f"kit blend {' '.join(str(runs_dir / n) for n in MEMBERS)} "
         "--name demo-blend")
    board = blend([runs_dir / n for n in MEMBERS], method="best", name="demo-blend",
                  runs_dir=runs_dir, data_dir=data_dir, submissions_dir=subs_dir)
    say(board)
    step(n_steps, "submit (dry run)", f"kit submit {runs_dir / 'demo-blend'} --dry-run")
    result = submit(runs_dir / "demo-blend", message="kit demo", dry_run=True, competition=None,
                    timeout=0, data_dir=data_dir, runs_dir=runs_dir, submissions_dir=subs_dir)
    say(result)
    return _closing(workdir, runs_dir, lines, time.perf_counter() - t0)


def _closing(workdir: Path, runs_dir: Path, lines: list[str], seconds: float) -> str:
    """The demo's last words: each run's CV and the blend's, what it left where, what next."""
    blended = RunDir(runs_dir / "demo-blend").summary()["cv"]["accuracy"]
    return "\n".join([
        f"demo done in {seconds:.0f} s:", *lines,
        f"{runs_dir / 'demo-blend'}: CV accuracy {blended:.4f} (the blend, honest nested CV)",
        f"written under {workdir.resolve()}: data/demo/, runs/demo-a, runs/demo-b, "
        "runs/demo-blend, submissions/",
        f"next: kit report {runs_dir / 'demo-b'} --against {runs_dir / 'demo-a'}   "
        "(per class: what the second recipe changed)",
        "      kit fetch <competition>, then the README's 'Your own competition'"])
