"""`kit`: Typer app. Each command parses options, calls one function, prints the result. No logic.

Heavy libraries (torch, timm, kaggle) are imported inside the commands, so `kit --help` is instant
and works with no Kaggle credentials and no network.
"""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from kaggle_kit import KitError, show

app = typer.Typer(
    name="kit",
    help="Kaggle image-classification toolkit: fetch -> train -> blend -> submit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print locals: they can hold the Kaggle key
    add_completion=False,
    rich_markup_mode=None,  # plain click help: no `<bool>` / `<str>` type column on every option
)

DataDir = Annotated[Path, typer.Option("--data-dir", metavar="DIR", help="Where competitions live.")]
RunsDir = Annotated[Path, typer.Option("--runs-dir", metavar="DIR", help="Where runs live.")]
SubsDir = Annotated[Path, typer.Option("--submissions-dir", metavar="DIR", help="Submissions + ledger.csv.")]
RecipeArg = Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML, e.g. recipes/resnet_fast.yaml.")]
Overrides = Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Dotted overrides: train.epochs=2 model.name=resnet18")]


def kit_errors(fn):
    """Turn a KitError into a one-line red message and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KitError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # a full disk in a command that has no message of its own
            if e.errno != errno.ENOSPC:
                raise
            typer.secho(f"error: disk full{f' writing {e.filename}' if e.filename else ''}; free "
                        "some space and rerun", fg="red", err=True)
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


@app.command()
@kit_errors
def fetch(
    competition: Annotated[str, typer.Argument(metavar="COMPETITION", help="Kaggle competition slug, or 'demo'.")],
    source: Annotated[Path | None, typer.Option("--from", metavar="ZIP_OR_DIR", help="Import a zip/folder on disk instead of downloading.")] = None,
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="Re-download / re-import even if verified.")] = False,
    folds: Annotated[int, typer.Option(metavar="K", help="Number of stratified folds.")] = 4,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the fold split.")] = 42,
    refold: Annotated[bool, typer.Option("--refold", help="Remake folds.csv with another --folds/--seed.")] = False,
    id_col: Annotated[str | None, typer.Option(metavar="COL", help="Id column of the label CSV.")] = None,
    label_col: Annotated[str | None, typer.Option(metavar="COL", help="Label column of the label CSV.")] = None,
    train_dir: Annotated[str | None, typer.Option(metavar="DIR", help="Folder of training images.")] = None,
    test_dir: Annotated[str | None, typer.Option(metavar="DIR", help="Folder of test images.")] = None,
    group_col: Annotated[str | None, typer.Option(metavar="COL", help="Label-CSV column of groups (e.g. state-farm's subject): group-aware folds.")] = None,
    metric: Annotated[str | None, typer.Option(metavar="NAME", help="Competition metric, if not the detected one (accuracy, log_loss, roc_auc, map@5, ...).")] = None,
    positive: Annotated[str | None, typer.Option(metavar="CLASS", help="The class a one-column probability submission is P() of.")] = None,
) -> None:
    """Download (or import) a competition, unzip safely, detect its layout, verify it, make folds
    and the decoded-image cache: data/<competition>/."""
    from kaggle_kit.fetch import fetch as do_fetch

    r = do_fetch(competition, data_dir=data_dir, source=source, force=force, n_folds=folds,
                 seed=seed, refold=refold, id_col=id_col, label_col=label_col,
                 train_dir=train_dir, test_dir=test_dir, group_col=group_col, metric=metric,
                 positive=positive)
    _print(show.fetch_lines(r) or None)


@app.command()
@kit_errors
def train(
    recipe: RecipeArg,
    overrides: Overrides = None,
    name: Annotated[str | None, typer.Option("--name", metavar="RUN", help="Run name (default: recipe file stem).")] = None,
    runs_dir: RunsDir = Path("runs"),
    data_dir: DataDir = Path("data"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run where it stopped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a run folder made by another recipe.")] = False,
) -> None:
    """Train a recipe: stratified k-fold OOF + test predictions in runs/<name>/."""
    from kaggle_kit.honest import find_estimates
    from kaggle_kit.train import is_main_process, run

    summary = run(recipe, overrides or [], name=name, runs_dir=runs_dir, data_dir=data_dir,
                  resume=resume, force=force)
    if is_main_process():  # one summary, not one per process
        estimates = find_estimates(runs_dir / summary["run"], runs_dir)
        _print(show.run_lines(summary, runs_dir, estimates))


@app.command()
@kit_errors
def estimate(
    recipe: RecipeArg,
    overrides: Overrides = None,
    holdout_fold: Annotated[int | None, typer.Option("--holdout-fold", metavar="K", help="Fold held out as the test set (default: the last).")] = None,
    name: Annotated[str | None, typer.Option("--name", metavar="RUN", help="Run name; the estimate run is <RUN>-ho<K>.")] = None,
    runs_dir: RunsDir = Path("runs"),
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an earlier estimate run of another recipe.")] = False,
) -> None:
    """Score exactly what the recipe's test.csv holds: hold one fold out as a labelled test set,
    run the same recipe on the rest, score its test.csv there (costs one more run)."""
    from kaggle_kit.estimate import estimate as do_estimate

    r = do_estimate(recipe, overrides or [], holdout_fold=holdout_fold, name=name,
                    runs_dir=runs_dir, data_dir=data_dir, force=force)
    typer.echo(show.estimate_lines(r, runs_dir))


@app.command()
@kit_errors
def recipes(
    folder: Annotated[Path, typer.Option(metavar="DIR", help="Folder of recipes.")] = Path("recipes"),
) -> None:
    """List the shipped recipes with their one-line descriptions."""
    from kaggle_kit.recipe import list_recipes

    found = list_recipes(folder)
    width = max((len(str(p)) for p, _ in found), default=0)
    for path, desc in found:
        typer.echo(f"{str(path):{width}s}  {desc}")


@app.command()
@kit_errors
def report(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder, e.g. runs/resnet_fast.")],
    against: Annotated[Path | None, typer.Option(metavar="RUN", help="Another run: per-class accuracy side by side.")] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Per-class accuracy, most-confused pairs, and the targeted-augmentation block to try next."""
    from kaggle_kit.report import report as do_report

    _print(do_report(run, against=against, data_dir=data_dir))


@app.command()
@kit_errors
def blend(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run folders to blend.")],
    method: Annotated[str, typer.Option(metavar="METHOD", help="mean | weighted | greedy | stack | best")] = "best",
    name: Annotated[str | None, typer.Option("--name", metavar="RUN", help="Blend run name.")] = None,
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
    target: Annotated[Path, typer.Argument(metavar="RUN_OR_CSV", help="A run folder (uses its test.csv) or a submission CSV.")],
    message: Annotated[str | None, typer.Option("-m", "--message", metavar="TEXT", help="Submission message.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and write the file; upload nothing.")] = False,
    competition: Annotated[str | None, typer.Option(metavar="SLUG", help="Competition (default: the run's).")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait for Kaggle's score.")] = 300.0,
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
    refresh: Annotated[bool, typer.Option("--refresh", help="Ask Kaggle for the status of pending rows.")] = False,
    submissions_dir: SubsDir = Path("submissions"),
) -> None:
    """The submission ledger, newest first, CV next to public score."""
    from kaggle_kit.submit import show_ledger

    _print(show_ledger(submissions_dir, refresh=refresh))


@app.command()
@kit_errors
def demo(
    workdir: Annotated[Path, typer.Option(metavar="DIR", help="Where data/, runs/ and submissions/ go.")] = Path("."),
    epochs: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Epochs per member (default: the recipe's); 1 checks the pipeline in ~1 min.")] = None,
) -> None:
    """The whole pipeline offline in minutes: fetch demo -> train 2 recipes -> blend -> submit --dry-run."""
    from kaggle_kit.demo import run_demo

    _print(run_demo(workdir, epochs=epochs))


@app.command()
@kit_errors
def predict(
    source: Annotated[Path, typer.Argument(metavar="RUN_OR_EXPORT", help="A run folder (runs/x, train or blend) or a kit export folder.")],
    images: Annotated[Path, typer.Argument(metavar="IMAGES", help="A folder of images, a CSV of Ids (e.g. sample_submission.csv), or a fetched competition (its test split).")],
    out: Annotated[Path, typer.Option("--out", metavar="CSV", help="The submission CSV to write.")] = Path("submission.csv"),
    probs: Annotated[Path | None, typer.Option("--probs", metavar="CSV", help="Also write the probabilities (test.csv format).")] = None,
    image_dir: Annotated[Path | None, typer.Option("--image-dir", metavar="DIR", help="Folder of the CSV's images (default: the competition's test folder next to the CSV).")] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images decoded and predicted at a time.")] = 256,
    data_dir: DataDir = Path("data"),
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Predict new images with a run's models exactly as its test.csv was made (preprocessing,
    TTA views, folds/refit, blend weights) and write a validated submission."""
    from kaggle_kit.predict import predict as do_predict

    r = do_predict(source, images, out=out, probs_out=probs, image_dir=image_dir,
                   batch_size=batch_size, data_dir=data_dir, runs_dir=runs_dir)
    typer.echo(f"{r['n_images']} images predicted: submission {r['out']}"
               + (f", probabilities {r['probs_out']}" if r["probs_out"] else ""))


@app.command()
@kit_errors
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder (train or blend).")],
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Export folder (default: exports/<run>).")] = None,
    data_dir: DataDir = Path("data"),
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """A self-contained folder to upload as a Kaggle dataset: safetensors weights, recipes,
    classes, submission format, blend weights, kit's wheel, manifest and notebook cells."""
    from kaggle_kit.export import export as do_export

    r = do_export(run, out, data_dir=data_dir, runs_dir=runs_dir)
    typer.echo(f"export {r['out']}: {r['files']} files, {r['bytes'] / 1e6:.1f} MB in "
               f"{r['seconds']} s; notebook cells: {r['out'] / 'README.md'}")


def _version(value: bool) -> None:
    if value:
        from kaggle_kit import __version__

        typer.echo(f"kit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print kit's version and exit.")] = False,
) -> None:
    """Kaggle image-classification toolkit: fetch -> train -> blend -> submit."""


class _Command(typer.core.TyperCommand):
    """Usage lines as `kit train [OPTIONS] RECIPE [KEY=VALUE]...`: typer writes a required
    argument as `{recipe}`, which reads like a placeholder to fill in literally."""

    def collect_usage_pieces(self, ctx):
        return [p.replace("{", "").replace("}", "") for p in super().collect_usage_pieces(ctx)]


for _info in app.registered_commands:  # every command, including ones added above later
    if _info.cls in (None, typer.core.TyperCommand):
        _info.cls = _Command


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="kit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
