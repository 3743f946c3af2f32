"""What a person looks at first: OOF scores, confusion matrix, learning curves, per-class table.

`oof_scores` is the one place OOF accuracy / log loss are computed (train and blend call it).
`write_run_plots` draws `confusion.png` and `curves.png` of a run (matplotlib Agg canvas, no pyplot,
atomic writes). `report` renders the per-class table, the most-confused pairs and a suggested
`augment.targeted` block (or, with `against`, two runs side by side) as plain text.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.workspace import CompetitionDir, RunDir, atomic_path

EPS = 1e-15  # probability floor before log loss / renormalisation

# ----------------------------------------------------------------------------- scores


def encode_labels(labels: pd.Series, ids: pd.Index, classes: list[str], source: str = "oof"
                  ) -> np.ndarray:
    """Class indices (n,) of `ids` (joined by Id); error naming the first Id without a label."""
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    missing = ids.difference(labels.index)
    if len(missing):
        raise KitError(f"{source}: Id {missing[0]} has no training label ({len(missing)} Ids "
                       "unknown); is the run from this competition?")
    y = labels.reindex(ids).astype(str)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(y) - set(index))
    if unknown:
        raise KitError(f"{source}: labels {unknown[:5]} are not in the classes {classes}")
    return y.map(index).to_numpy(dtype=int)


def clean_probs(p: np.ndarray) -> np.ndarray:
    """(n, C) probabilities floored at EPS and renormalised so each row sums to 1."""
    p = np.clip(np.asarray(p, dtype=float), EPS, None)
    return p / p.sum(axis=1, keepdims=True)


def accuracy_logloss(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, log loss) of (n, C) probabilities against class indices y (n,)."""
    from sklearn.metrics import accuracy_score, log_loss

    p = clean_probs(p)
    acc = float(accuracy_score(y, p.argmax(axis=1)))
    return acc, float(log_loss(y, p, labels=np.arange(p.shape[1])))


def oof_scores(oof: pd.DataFrame, labels: pd.Series, classes: list[str]) -> dict:
    """Scores of out-of-fold probabilities.

    oof: indexed by Id (str), a `fold` column and one probability column per class.
    labels: class names indexed by Id; joined by Id (every OOF Id must have a label).
    Returns {"cv": {"accuracy", "log_loss", "accuracy_std"},       # std over folds (ddof=0)
             "per_fold": [{"fold", "accuracy", "log_loss"}],      # sorted by fold
             "per_class": {class: accuracy or None if absent}}    # recall of each class
    """
    missing = [c for c in ("fold", *classes) if c not in oof.columns]
    if missing:
        raise KitError(f"oof: columns {missing} missing; expected fold + {classes}")
    oof = oof.copy()
    oof.index = oof.index.astype(str)
    y = encode_labels(labels, oof.index, classes)
    p = oof[classes].to_numpy(dtype=float)
    folds = oof["fold"].to_numpy(dtype=int)
    acc, ll = accuracy_logloss(p, y)
    per_fold = []
    for k in sorted(set(folds.tolist())):
        m = folds == k
        fa, fl = accuracy_logloss(p[m], y[m])
        per_fold.append({"fold": int(k), "accuracy": fa, "log_loss": fl})
    pred = p.argmax(axis=1)
    per_class = {c: (float((pred[y == i] == i).mean()) if (y == i).any() else None)
                 for i, c in enumerate(classes)}
    std = float(np.std([f["accuracy"] for f in per_fold]))
    return {"cv": {"accuracy": acc, "log_loss": ll, "accuracy_std": std},
            "per_fold": per_fold, "per_class": per_class}


def confusion(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y, np.asarray(p).argmax(axis=1)), 1)
    return cm


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


def load_run(path: Path, data_dir: Path | None) -> tuple[RunDir, CompetitionDir, pd.DataFrame,
                                                          np.ndarray]:
    """(run, competition, oof in class order, y (n,) class indices) of a finished run."""
    run = RunDir(Path(path))
    if not run.summary_path.exists():
        raise KitError(f"{run.summary_path}: not found; is {path} a finished run?")
    comp = run_competition(run, data_dir)
    if comp is None:
        raise KitError(f"{run.summary_path}: no 'competition' key, or its data is not in "
                       f"{data_dir}; pass --data-dir")
    classes = comp.classes
    oof = run.read_oof(classes)
    labels = comp.labels().set_index("Id")["label"]
    return run, comp, oof, encode_labels(labels, oof.index, classes, str(run.oof_path))


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
    dirs = sorted(run.root.glob("fold*/metrics.jsonl")) + sorted(run.root.glob("refit*/metrics.jsonl"))
    for f in dirs:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[f.parent.name] = pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce")
    return out


def plot_curves(metrics: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    """Loss and accuracy per epoch: one colour per fold, train solid, validation dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for i, (name, df) in enumerate(metrics.items()):
        color = f"C{i % 10}"
        for ax, key in zip(axes, ("loss", "acc"), strict=True):
            for split, style in (("train", "-"), ("val", "--")):
                col = f"{split}_{key}"
                if col in df and df[col].notna().any():
                    ax.plot(df["epoch"], df[col], style, color=color, marker=".",
                            label=f"{name} {split}")
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel in zip(axes, ("loss", "accuracy"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2, loc="lower right")
    fig.suptitle(title)
    _save(fig, path)


def write_run_plots(run: RunDir, labels: pd.Series | None = None, *,
                    data_dir: Path | None = None) -> None:
    """Write `confusion.png` (from oof.csv + labels) and `curves.png` (from fold*/metrics.jsonl).

    labels: class names indexed by Id; if None they are read from the run's competition
    (summary.json "competition" in `data_dir`, else `data/` next to the runs folder). A plot
    whose inputs are missing (no labels found, no metrics.jsonl, e.g. a blend) is skipped.
    """
    if run.oof_path.exists():
        if labels is None:
            comp = run_competition(run, data_dir)
            labels = comp.labels().set_index("Id")["label"] if comp is not None else None
        oof = run.read_oof()
        if labels is not None and len(oof):  # a refit-only run has no OOF rows
            classes = [c for c in oof.columns if c != "fold"]
            y = encode_labels(labels, oof.index, classes, str(run.oof_path))
            p = oof[classes].to_numpy(dtype=float)
            cm = confusion(p, y, len(classes))
            title = f"{run.name}: OOF accuracy {np.trace(cm) / cm.sum():.4f} (n={cm.sum()})"
            plot_confusion(cm, classes, run.confusion_png, title)
    metrics = read_metrics(run)
    if metrics:
        plot_curves(metrics, run.curves_png,
                    f"{run.name}: learning curves (solid = train, dashed = validation)")


# ----------------------------------------------------------------------------- text report


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A rich table rendered to plain text (no colour codes)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD)
    for i, h in enumerate(header):  # text columns left, numbers right
        numeric = all(_is_number(r[i]) for r in rows)
        t.add_column(h, justify="right" if numeric and i else "left")
    for r in rows:
        t.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None, force_terminal=False).print(t)
    return title + "\n" + buf.getvalue().rstrip()


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def class_rows(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """Per class: n, accuracy (recall), most common wrong prediction; sorted worst first."""
    rows = []
    for i, c in enumerate(classes):
        n = int(cm[i].sum())
        wrong = cm[i].copy()
        wrong[i] = 0
        j = int(wrong.argmax())
        rows.append({"class": c, "n": n, "accuracy": cm[i, i] / n if n else float("nan"),
                     "wrong": classes[j] if wrong[j] else "-", "wrong_n": int(wrong[j])})
    return sorted(rows, key=lambda r: (np.nan_to_num(r["accuracy"], nan=2.0), r["class"]))


def confused_pairs(cm: np.ndarray, classes: list[str], top: int = 8) -> list[tuple]:
    """Unordered class pairs by total confusions: (a, b, a->b, b->a), most confused first."""
    pairs = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            if cm[i, j] + cm[j, i]:
                pairs.append((classes[i], classes[j], int(cm[i, j]), int(cm[j, i])))
    return sorted(pairs, key=lambda t: (-(t[2] + t[3]), t[0], t[1]))[:top]


def targeted_block(classes: list[str], factor: int = 2, run_name: str | None = None) -> str:
    """A recipe `augment.targeted` block for `classes`, ready to paste into a recipe YAML."""
    names = ", ".join(classes)
    auto = f"    # or, recomputed from this run: auto: {len(classes)}, from_run: {run_name}"
    return "\n".join([
        "augment:",
        "  targeted:",
        f"    classes: [{names}]",
        *([auto] if run_name else []),
        f"    factor: {factor}            # each image of these classes seen {factor}x per epoch",
        "    transforms:           # extra albumentations, only for these classes",
        "      - {name: Affine, scale: [0.85, 1.15], rotate: [-15, 15], p: 0.7}",
        "      - {name: ColorJitter, brightness: 0.3, contrast: 0.3, saturation: 0.3, p: 0.5}",
        "      - {name: CoarseDropout, num_holes_range: [1, 2], hole_height_range: [0.1, 0.25],"
        " hole_width_range: [0.1, 0.25], p: 0.5}",
    ])


def single_report(path: Path, data_dir: Path, k_worst: int = 4) -> str:
    """Per-class table (worst first), most-confused pairs, suggested targeted block."""
    run, comp, oof, y = load_run(path, data_dir)
    classes = comp.classes
    cm = confusion(oof[classes].to_numpy(dtype=float), y, len(classes))
    acc = np.trace(cm) / max(cm.sum(), 1)
    rows = class_rows(cm, classes)
    t1 = _table(f"{run.name}: OOF accuracy {acc:.4f} on {cm.sum()} images, per class (worst first)",
                ["class", "n", "accuracy", "most often predicted as", "count"],
                [[r["class"], str(r["n"]), f"{r['accuracy']:.3f}", r["wrong"], str(r["wrong_n"])]
                 for r in rows])
    pairs = confused_pairs(cm, classes)
    t2 = _table("most-confused pairs", ["pair", "total", "a->b", "b->a"],
                [[f"{a} <-> {b}", str(x + z), str(x), str(z)] for a, b, x, z in pairs])
    worst = [r["class"] for r in rows[:k_worst]]
    parts = [t1, t2, f"suggested targeted augmentation ({k_worst} worst classes):",
             targeted_block(worst, run_name=run.name)]
    summary = run.summary()
    if summary.get("kind") == "blend" and summary.get("leaderboard"):
        from kaggle_kit.blend import leaderboard_text

        parts.insert(0, f"blend ({summary.get('method')}) leaderboard:\n"
                     + leaderboard_text(summary["leaderboard"], summary.get("method")))
    return "\n\n".join(parts)


def targeted_classes(summary: dict) -> set[str]:
    """Targeted classes of a run: summary.json "targeted" is None, a list of classes, or
    {"classes", "factor", "transforms", "source"} as kit train writes it."""
    t = summary.get("targeted") or []
    return set(t.get("classes") or []) if isinstance(t, dict) else set(t)


def against_report(path: Path, other: Path, data_dir: Path) -> str:
    """Per-class OOF accuracy of two runs side by side with the change; targeted classes marked."""
    run_a, comp_a, oof_a, y_a = load_run(path, data_dir)
    run_b, comp_b, oof_b, y_b = load_run(other, data_dir)
    if comp_a.name != comp_b.name:
        raise KitError(f"{other}: run of competition '{comp_b.name}', but {path} is of "
                       f"'{comp_a.name}'; compare runs of one competition")
    classes = comp_a.classes
    cm_a = confusion(oof_a[classes].to_numpy(dtype=float), y_a, len(classes))
    cm_b = confusion(oof_b[classes].to_numpy(dtype=float), y_b, len(classes))
    tg_a, tg_b = targeted_classes(run_a.summary()), targeted_classes(run_b.summary())
    acc_a = np.diag(cm_a) / np.maximum(cm_a.sum(axis=1), 1)
    acc_b = np.diag(cm_b) / np.maximum(cm_b.sum(axis=1), 1)
    order = np.argsort(acc_b - acc_a, kind="stable")  # biggest gain (RUN - OTHER) first
    rows = [[classes[i] + (" *" if classes[i] in tg_a | tg_b else ""), f"{acc_b[i]:.3f}",
             f"{acc_a[i]:.3f}", f"{acc_a[i] - acc_b[i]:+.3f}"] for i in order]
    tot_a, tot_b = np.trace(cm_a) / cm_a.sum(), np.trace(cm_b) / cm_b.sum()
    rows.append(["OVERALL", f"{tot_b:.4f}", f"{tot_a:.4f}", f"{tot_a - tot_b:+.4f}"])
    t = _table(f"per-class OOF accuracy: {run_a.name} vs {run_b.name} (change = "
               f"{run_a.name} - {run_b.name}, biggest gain first)",
               ["class", run_b.name, run_a.name, "change"], rows)
    notes = [f"targeted classes (*): {run_b.name}: {sorted(tg_b) or 'none'}; "
             f"{run_a.name}: {sorted(tg_a) or 'none'}"]
    if set(oof_a.index) != set(oof_b.index):
        notes.append(f"note: the runs cover different Ids ({len(oof_a)} vs {len(oof_b)} OOF rows)")
    return "\n".join([t, *notes])


def report(run: Path, *, against: Path | None = None, data_dir: Path = Path("data")) -> str:
    """`kit report RUN [--against OTHER]` as text.

    Alone: per-class OOF accuracy (worst first, with n and the most common wrong class), the most
    confused class pairs, and an `augment.targeted` block for the 4 worst classes.
    With `against`: per-class OOF accuracy of OTHER and RUN side by side with the change (RUN -
    OTHER), overall accuracy, and the targeted classes of each (summary.json "targeted").
    """
    if against is not None:
        return against_report(Path(run), Path(against), Path(data_dir))
    return single_report(Path(run), Path(data_dir))
