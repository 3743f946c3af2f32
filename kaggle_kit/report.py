"""`kit report RUN [--against OTHER]`: the competition metric, the per-class table, the most-confused
pairs and a suggested `augment.targeted` block (or, with `against`, two runs side by side), as
plain text. Scores come from metrics.py, plots from plots.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kaggle_kit import KitError, blenders, metrics
from kaggle_kit.metrics import confusion
from kaggle_kit.plots import run_competition
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir

# ----------------------------------------------------------------------------- loading


def load_run(path: Path, data_dir: Path | None) -> tuple[RunDir, CompetitionDir, pd.DataFrame,
                                                          np.ndarray, str, str]:
    """(run, competition, oof in class order, y targets, task, metric) of a finished run."""
    run = RunDir(Path(path))
    if not run.summary_path.exists():
        raise KitError(f"{run.summary_path}: not found; is {path} a finished run?")
    comp = run_competition(run, data_dir)
    if comp is None:
        raise KitError(f"{run.summary_path}: no 'competition' key, or its data is not in "
                       f"{data_dir}; pass --data-dir")
    task, metric = metrics.competition_target(comp.meta(), str(comp.meta_path))
    classes = comp.classes
    oof = run.read_oof(classes)
    labels = comp.folds().set_index("Id")["label"]
    y = metrics.encode_targets(labels, oof.index, classes, task, str(run.oof_path))
    return run, comp, oof, y, task, metric


def headline(name: str, y: np.ndarray, p: np.ndarray, task: str, metric: str,
             classes: list[str]) -> str:
    """`<run>: OOF <metric> x (accuracy a, log loss l) on n images`."""
    vals = blenders.scores(metric, y, p, task, classes)
    rest = ", ".join(f"{m.replace('_', ' ')} {v:.4f}" for m, v in vals.items() if m != metric)
    return f"{name}: OOF {metric} {vals[metric]:.4f}" + (f" ({rest})" if rest else "") + \
        f" on {len(y)} images"


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
    """A recipe `augment.targeted` block for `classes`, ready to paste into a recipe YAML.

    A class value YAML would read as something else (cassava's "0", "yes", "null", "1e3") is
    quoted, so the pasted list holds the strings the recipe expects."""
    names = ", ".join(c if _plain_yaml(c) else json.dumps(c) for c in classes)
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


def _plain_yaml(value: str) -> bool:
    """True if `value` written unquoted in a YAML flow list reads back as the same string."""
    try:
        return yaml.safe_load(f"[{value}]") == [value]
    except yaml.YAMLError:
        return False


def single_report(path: Path, data_dir: Path, k_worst: int = 4) -> str:
    """The metric, per-class table (worst first), most-confused pairs, suggested targeted block
    (multilabel: a per-class table of recall, F1 and AUC; no pairs, no targeted block)."""
    run, comp, oof, y, task, metric = load_run(path, data_dir)
    classes = comp.classes
    p = oof[classes].to_numpy(dtype=float)
    head = headline(run.name, y, p, task, metric, classes)
    if task == "multilabel":
        parts = [multilabel_table(head, y, p, classes)]
    else:
        cm = confusion(p, y, len(classes))
        rows = class_rows(cm, classes)
        t1 = _table(f"{head}, per class (worst first)",
                    ["class", "n", "accuracy", "most often predicted as", "count"],
                    [[r["class"], str(r["n"]), f"{r['accuracy']:.3f}", r["wrong"],
                      str(r["wrong_n"])] for r in rows])
        pairs = confused_pairs(cm, classes)
        t2 = _table("most-confused pairs", ["pair", "total", "a->b", "b->a"],
                    [[f"{a} <-> {b}", str(x + z), str(x), str(z)] for a, b, x, z in pairs])
        worst = [r["class"] for r in rows[:k_worst]]
        parts = [t1, t2, f"suggested targeted augmentation ({k_worst} worst classes; `targeted:` goes "
                 "under the recipe's own `augment:` section, beside its keys):",
                 targeted_block(worst, run_name=run.name)]
    summary = run.summary()
    if summary.get("kind") == "blend" and summary.get("leaderboard"):
        from kaggle_kit.blend import leaderboard_text

        parts.insert(0, f"blend ({summary.get('method')}) leaderboard:\n"
                     + leaderboard_text(summary["leaderboard"], summary.get("method"),
                                        summary.get("metric") or "accuracy"))
    return "\n\n".join(parts)


def multilabel_table(head: str, y: np.ndarray, p: np.ndarray, classes: list[str]) -> str:
    """Per class of a multilabel run: positives, recall / F1 at the decision threshold, AUC;
    worst F1 first."""
    from sklearn.metrics import f1_score

    pred = metrics.decide("accuracy", p, "multilabel")
    rows = []
    for i, c in enumerate(classes):
        n = int(y[:, i].sum())
        auc = metrics.score("roc_auc", y[:, i], np.stack([1 - p[:, i], p[:, i]], 1), "binary")
        rows.append((float(f1_score(y[:, i], pred[:, i], zero_division=0)), c, n,
                     pred[y[:, i] == 1, i].mean() if n else float("nan"), auc))
    rows.sort(key=lambda r: (r[0], r[1]))
    return _table(f"{head}, per class (worst F1 first; threshold {metrics.THRESHOLD})",
                  ["class", "positives", "recall", "F1", "AUC"],
                  [[c, str(n), f"{r:.3f}", f"{f:.3f}", f"{a:.3f}"] for f, c, n, r, a in rows])


def targeted_classes(summary: dict) -> set[str]:
    """Targeted classes of a run: summary.json "targeted" is None, a list of classes, or
    {"classes", "factor", "transforms", "source"} as kit train writes it."""
    t = summary.get("targeted") or []
    return set(t.get("classes") or []) if isinstance(t, dict) else set(t)


def against_report(path: Path, other: Path, data_dir: Path) -> str:
    """Per-class OOF recall of two runs side by side with the change; targeted classes marked;
    OVERALL is the competition metric."""
    run_a, comp_a, oof_a, y_a, task, metric = load_run(path, data_dir)
    run_b, comp_b, oof_b, y_b, _, _ = load_run(other, data_dir)
    if comp_a.name != comp_b.name:
        raise KitError(f"{other}: run of competition '{comp_b.name}', but {path} is of "
                       f"'{comp_a.name}'; compare runs of one competition")
    classes = comp_a.classes
    p_a, p_b = oof_a[classes].to_numpy(dtype=float), oof_b[classes].to_numpy(dtype=float)
    tg_a, tg_b = targeted_classes(run_a.summary()), targeted_classes(run_b.summary())
    rec_a = metrics.per_class_recall(y_a, p_a, classes, task)
    rec_b = metrics.per_class_recall(y_b, p_b, classes, task)
    acc_a = np.array([np.nan if rec_a[c] is None else rec_a[c] for c in classes])
    acc_b = np.array([np.nan if rec_b[c] is None else rec_b[c] for c in classes])
    order = np.argsort(np.nan_to_num(acc_b - acc_a), kind="stable")  # biggest gain first
    rows = [[classes[i] + (" *" if classes[i] in tg_a | tg_b else ""), f"{acc_b[i]:.3f}",
             f"{acc_a[i]:.3f}", f"{acc_a[i] - acc_b[i]:+.3f}"] for i in order]
    tot_a = metrics.score(metric, y_a, p_a, task, classes)
    tot_b = metrics.score(metric, y_b, p_b, task, classes)
    rows.append([f"OVERALL {metric}", f"{tot_b:.4f}", f"{tot_a:.4f}", f"{tot_a - tot_b:+.4f}"])
    t = _table(f"per-class OOF recall: {run_a.name} vs {run_b.name} (change = "
               f"{run_a.name} - {run_b.name}, biggest gain first)",
               ["class", run_b.name, run_a.name, "change"], rows)
    notes = [f"targeted classes (*): {run_b.name}: {sorted(tg_b) or 'none'}; "
             f"{run_a.name}: {sorted(tg_a) or 'none'}"]
    if not metrics.higher_is_better(metric):
        notes.append(f"{metric}: lower is better")
    if set(oof_a.index) != set(oof_b.index):
        notes.append(f"note: the runs cover different Ids ({len(oof_a)} vs {len(oof_b)} OOF rows)")
    return "\n".join([t, *notes])


def report(run: Path, *, against: Path | None = None, data_dir: Path = Path("data")) -> str:
    """`kit report RUN [--against OTHER]` as text.

    Alone: the competition metric (summary line), per-class OOF accuracy (worst first, with n and the most common wrong class), the most
    confused class pairs, and an `augment.targeted` block for the 4 worst classes.
    With `against`: per-class OOF accuracy of OTHER and RUN side by side with the change (RUN -
    OTHER), overall accuracy, and the targeted classes of each (summary.json "targeted").
    """
    if against is not None:
        return against_report(Path(run), Path(against), Path(data_dir))
    return single_report(Path(run), Path(data_dir))
