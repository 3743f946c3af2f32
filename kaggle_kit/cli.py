"""`kit`: Typer app. Each command parses options, calls one function, prints the result. No logic.

Heavy libraries (torch, timm, kaggle) are imported inside the commands, so `kit --help` is instant
and works with no Kaggle credentials and no network.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from kaggle_kit import KitError

app = typer.Typer(
    name="kit",
    help="Kaggle image-classification toolkit: fetch -> train -> blend -> submit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print locals: they can hold the Kaggle key
    add_completion=False,
)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where competitions live.")]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where runs live.")]
SubsDir = Annotated[Path, typer.Option("--submissions-dir", help="Submissions + ledger.csv.")]


def kit_errors(fn):
    """Turn a KitError into a one-line red message and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KitError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _print(obj) -> None:
    """Print a command's result: strings as they are, dicts/lists as pretty JSON."""
    if obj is None:
        return
    if isinstance(obj, str):
        typer.echo(obj)
    else:
        import json

        from rich import print_json

        print_json(json.dumps(obj, default=str))


def _run_line(summary: dict, runs_dir: Path) -> str:
    """One readable paragraph for a finished run instead of its whole summary.json."""
    cv = summary.get("cv", {})
    folds = "  ".join(f"fold{f['fold']} {f['accuracy']:.4f}" for f in summary.get("per_fold", []))
    worst = sorted(summary.get("per_class", {}).items(), key=lambda kv: kv[1])[:4]
    total = summary.get("timings", {}).get("total_s")
    lines = [
        f"run {runs_dir / summary.get('run', '?')}: CV accuracy {cv.get('accuracy', float('nan')):.4f}"
        f" +- {cv.get('accuracy_std', float('nan')):.4f}  log loss {cv.get('log_loss', float('nan')):.4f}"
        + (f"  ({total / 60:.1f} min)" if total else ""),
        f"  per fold: {folds}",
        "  hardest classes: " + ", ".join(f"{c} {a:.3f}" for c, a in worst),
        f"  test predictions from: {summary.get('test_from', 'folds')}; next: kit report "
        f"{runs_dir / summary.get('run', '?')}",
    ]
    lines += [f"  warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


@app.command()
@kit_errors
def fetch(
    competition: Annotated[str, typer.Argument(help="Kaggle competition slug, or 'demo'.")],
    source: Annotated[Path | None, typer.Option("--from", help="Import a zip/folder on disk instead of downloading.")] = None,
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option(help="Re-download / re-import even if verified.")] = False,
    folds: Annotated[int, typer.Option(help="Number of stratified folds.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the fold split.")] = 42,
    refold: Annotated[bool, typer.Option(help="Remake folds.csv with another --folds/--seed.")] = False,
    id_col: Annotated[str | None, typer.Option(help="Id column of the label CSV.")] = None,
    label_col: Annotated[str | None, typer.Option(help="Label column of the label CSV.")] = None,
    train_dir: Annotated[str | None, typer.Option(help="Folder of training images.")] = None,
    test_dir: Annotated[str | None, typer.Option(help="Folder of test images.")] = None,
) -> None:
    """Download (or import) a competition, unzip safely, detect its layout, verify it, make folds
    and the decoded-image cache: data/<competition>/."""
    from kaggle_kit.fetch import fetch as do_fetch

    r = do_fetch(competition, data_dir=data_dir, source=source, force=force, n_folds=folds,
                 seed=seed, refold=refold, id_col=id_col, label_col=label_col,
                 train_dir=train_dir, test_dir=test_dir)
    sizes = ", ".join(f"{k}: {v}" for k, v in r.get("image_sizes", {}).items())
    typer.echo(f"  {r['classes']} classes, {r['n_train']} train, "
               f"{r['n_test']} test images ({sizes}); {r['folds']['k']} folds (seed "
               f"{r['folds']['seed']}); cache {r['cache_mb']} MB, decoded in {r['decode_s']} s")
    for w in r.get("warnings", []):
        typer.secho(f"  warning: {w}", fg="yellow")


@app.command()
@kit_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. recipes/resnet_fast.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: train.epochs=2 model.name=resnet18")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: recipe file stem).")] = None,
    runs_dir: RunsDir = Path("runs"),
    data_dir: DataDir = Path("data"),
    resume: Annotated[bool, typer.Option(help="Continue a killed run where it stopped.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite a run folder made by another recipe.")] = False,
) -> None:
    """Train a recipe: stratified k-fold OOF + test predictions in runs/<name>/."""
    from kaggle_kit.train import run

    summary = run(recipe, overrides or [], name=name, runs_dir=runs_dir, data_dir=data_dir,
                  resume=resume, force=force)
    if summary is not None:  # None on the other processes of a multi-process run
        _print(_run_line(summary, runs_dir))


@app.command()
@kit_errors
def recipes(
    folder: Annotated[Path, typer.Option(help="Folder of recipes.")] = Path("recipes"),
) -> None:
    """List the shipped recipes with their one-line descriptions."""
    from kaggle_kit.recipe import list_recipes

    for path, desc in list_recipes(folder):
        typer.echo(f"{str(path):32s} {desc}")


@app.command()
@kit_errors
def report(
    run: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/resnet_fast.")],
    against: Annotated[Path | None, typer.Option(help="Another run: per-class accuracy side by side.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Per-class accuracy, most-confused pairs, and the targeted-augmentation block to try next."""
    from kaggle_kit.report import report as do_report

    _print(do_report(run, against=against, data_dir=data_dir))


@app.command()
@kit_errors
def blend(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to blend.")],
    method: Annotated[str, typer.Option(help="mean | weighted | greedy | stack | best")] = "best",
    name: Annotated[str | None, typer.Option("--name", help="Blend run name.")] = None,
    runs_dir: RunsDir = Path("runs"),
    data_dir: DataDir = Path("data"),
    submissions_dir: SubsDir = Path("submissions"),
) -> None:
    """Blend runs (aligned by Id and class name), scored with honest nested CV."""
    from kaggle_kit.blend import blend as do_blend

    _print(do_blend(runs, method=method, name=name, runs_dir=runs_dir, data_dir=data_dir,
                    submissions_dir=submissions_dir))


@app.command()
@kit_errors
def submit(
    target: Annotated[Path, typer.Argument(help="A run folder (uses its test.csv) or a submission CSV.")],
    message: Annotated[str | None, typer.Option("-m", "--message", help="Submission message.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and write the file; upload nothing.")] = False,
    competition: Annotated[str | None, typer.Option(help="Competition (default: the run's).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kaggle's score.")] = 300.0,
    data_dir: DataDir = Path("data"),
    runs_dir: RunsDir = Path("runs"),
    submissions_dir: SubsDir = Path("submissions"),
) -> None:
    """Validate against sample_submission, upload with the official client, poll the score."""
    from kaggle_kit.submit import submit as do_submit

    _print(do_submit(target, message=message, dry_run=dry_run, competition=competition,
                     timeout=timeout, data_dir=data_dir, runs_dir=runs_dir,
                     submissions_dir=submissions_dir))


@app.command()
@kit_errors
def submissions(
    refresh: Annotated[bool, typer.Option(help="Ask Kaggle for the status of pending rows.")] = False,
    submissions_dir: SubsDir = Path("submissions"),
) -> None:
    """The submission ledger, newest first, CV next to public score."""
    from kaggle_kit.submit import show_ledger

    _print(show_ledger(submissions_dir, refresh=refresh))


@app.command()
@kit_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data/, runs/ and submissions/ go.")] = Path("."),
) -> None:
    """The whole pipeline offline in minutes: fetch demo -> train 2 recipes -> blend -> submit --dry-run."""
    from kaggle_kit.demo import run_demo

    _print(run_demo(workdir))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="kit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
