"""Run plots shared by `kit train`, `kit blend` and `kit report`: `confusion.png` (OOF confusion
matrix, single-label tasks) and `curves.png` (per-epoch loss / accuracy / competition metric from
fold*/metrics.jsonl). matplotlib Agg canvas (no pyplot), atomic writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import metrics, rundir
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, atomic_path

# ----------------------------------------------------------------------------- loading


def run_competition(run: RunDir, data_dir: Path | None) -> CompetitionDir | None:
    """The run's competition (summary.json "competition"), looked up in `data_dir`, else in the
    `data/` folder next to the runs folder, else `./data`; None if not found."""
    summary = run.summary() if run.summary_path.exists() else {}
    name = summary.get("competition")
    if not name:
        return None
    candidates = [data_dir] if data_dir is not None else [run.root.parent.parent / "data",
                                                         Path("data")]
    for d in candidates:
        if (Path(d) / name / "competition.json").exists():
            return CompetitionDir(Path(d) / name)
    if data_dir is not None:
        CompetitionDir.open(data_dir, name)  # raises the "not fetched" error
    return None


# ----------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix, colour = fraction of the true class, text = count."""
    from matplotlib.figure import Figure

    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(rows, 1)
    side = max(4.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 40:  # counts stay readable up to ~40 classes
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 12 else 10,
                    color="white" if frac[i, j] > 0.55 else "black")
    acc = np.diag(cm) / np.maximum(rows[:, 0], 1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), [f"{c} ({a:.2f})" for c, a in zip(classes, acc, strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (recall)")
    ax.set_title(title)
    _save(fig, path)


def read_metrics(run: RunDir) -> dict[str, pd.DataFrame]:
    """{fold dir name: metrics.jsonl as a DataFrame} for fold*/ and refit*/ folders of a run."""
    out = {}
    for d in rundir.model_dirs(run):
        rows = rundir.read_metrics(d)
        if rows:
            out[d.name] = pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce")
    return out


def plot_curves(curves: dict[str, pd.DataFrame], path: Path, title: str,
                metric: str = "accuracy") -> None:
    """Loss, accuracy (and the competition metric's validation value, `val_metric`, when it is
    another) per epoch: one colour per fold, train solid, validation dashed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "loss"), ("acc", "accuracy")]
    if metric not in ("accuracy", "log_loss"):
        panels.append(("metric", f"{metric} (validation)"))
    fig = Figure(figsize=(6 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels))
    for i, (name, df) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, panels, strict=True):
            for split, style in (("train", "-"), ("val", "--")):
                col = f"{split}_{key}"
                if col in df and df[col].notna().any():
                    ax.plot(df["epoch"], df[col], style, color=color, marker=".",
                            label=f"{name} {split}")
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2, loc="lower right")
    fig.suptitle(title)
    _save(fig, path)


def write_run_plots(run: RunDir, labels: pd.Series | None = None, *,
                    data_dir: Path | None = None, task: str = "multiclass",
                    metric: str = "accuracy") -> None:
    """Write `confusion.png` (from oof.csv + labels; single-label tasks only) and `curves.png`
    (from fold*/metrics.jsonl).

    labels: class values indexed by Id; if None they are read from the run's competition
    (summary.json "competition" in `data_dir`, else `data/` next to the runs folder). A plot
    whose inputs are missing (no labels found, no metrics.jsonl, e.g. a blend) is skipped.
    """
    if run.oof_path.exists() and task != "multilabel":
        if labels is None:
            comp = run_competition(run, data_dir)
            labels = comp.folds().set_index("Id")["label"] if comp is not None else None
        oof = run.read_oof()
        if labels is not None and len(oof):  # a refit-only run has no OOF rows
            classes = [c for c in oof.columns if c != "fold"]
            y = metrics.encode_targets(labels, oof.index, classes, task, str(run.oof_path))
            cm = metrics.confusion(oof[classes].to_numpy(dtype=float), y, len(classes))
            title = f"{run.name}: OOF accuracy {np.trace(cm) / cm.sum():.4f} (n={cm.sum()})"
            plot_confusion(cm, classes, run.confusion_png, title)
    curves = read_metrics(run)
    if curves:
        plot_curves(curves, run.curves_png,
                    f"{run.name}: learning curves (solid = train, dashed = validation)", metric)
