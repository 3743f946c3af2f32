"""What the training loop does differently per target kind (competition.json "task"):
single-label ("multiclass", "binary": a C-way softmax net, binary = 2 classes) or "multilabel"
(C independent sigmoid outputs). Label -> tensor, the loss, the output activation, train
accuracy, and the recipe features that need care. train.py calls these; scoring is metrics.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kaggle_kit import KitError, metrics


def encode(folds: pd.DataFrame, classes: list[str], task: str, source: str) -> np.ndarray:
    """Targets of folds.csv rows (Id, label): (N,) int64 class indices, or (N, C) float32 0/1
    for multilabel (label = a set of class values, metrics.set_sep)."""
    y = metrics.encode_targets(folds.set_index("Id")["label"], pd.Index(folds["Id"]), classes,
                               task, source)
    return y.astype(np.float32) if task == "multilabel" else y.astype(np.int64)


def check_recipe(rec, meta: dict, targeted: dict | None) -> None:
    """Refuse a competition.json task / metric kit does not know, and recipe features that make
    no sense for the task (one-line errors)."""
    task, _ = metrics.competition_target(meta)
    if task == "multilabel" and targeted:
        raise KitError("augment.targeted: oversamples images by their one class, but the task is "
                       "multilabel; remove augment.targeted from the recipe")


def criterion(task: str, label_smoothing: float = 0.0):
    """loss(logits (B, C), target) -> scalar.

    Single-label: cross-entropy on class indices (B,) or soft targets (B, C) (mixup / cutmix),
    with torch's label smoothing. Multilabel: binary cross-entropy with logits on (B, C) 0/1 or
    mixed targets; label smoothing moves each target towards 0.5 by `label_smoothing` / 2."""
    import torch

    if task != "multilabel":
        return torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    bce = torch.nn.BCEWithLogitsLoss()

    def loss(logits, target):
        return bce(logits, target * (1 - label_smoothing) + 0.5 * label_smoothing)
    return loss


def soft_targets(yb, n_classes: int, task: str):
    """(B, C) float targets to mix (mixup / cutmix): one-hot of indices, or the 0/1 rows."""
    import torch

    return yb.float() if task == "multilabel" else \
        torch.nn.functional.one_hot(yb, n_classes).float()


def probabilities(logits, task: str):
    """(B, C) probabilities: softmax over classes, or independent sigmoids for multilabel."""
    import torch

    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def n_correct(logits, yb, task: str):
    """Images whose decision is exactly right (argmax; multilabel: the whole set at
    metrics.THRESHOLD, at least the top class) -- a 0-dim tensor."""
    import torch

    if task != "multilabel":
        return (logits.argmax(1) == yb).sum()
    pred = torch.sigmoid(logits) >= metrics.THRESHOLD
    pred[torch.arange(len(pred), device=pred.device), logits.argmax(1)] = True
    return (pred == (yb > 0.5)).all(dim=1).sum()


def val_scores(p: np.ndarray, y: np.ndarray, task: str, metric: str,
               classes: list[str]) -> dict:
    """{"val_loss", "val_acc"} (+ "val_metric" when the competition metric is another) of one
    validation pass: (n, C) probabilities against targets y (n,) or (n, C)."""
    out = {"val_loss": metrics.score("log_loss", y, p, task),
           "val_acc": metrics.score("accuracy", y, p, task)}
    if metric not in ("accuracy", "log_loss"):
        out["val_metric"] = metrics.score(metric, y, p, task, classes)
    return out


def checkpoint_score(row: dict, metric: str) -> float:
    """What `checkpoint: best` minimises: the competition metric (negated when higher is better),
    or the validation log loss when that is what kit optimises for it (metrics.optimised)."""
    goal = metrics.optimised(metric)
    if goal == "log_loss":
        return row["val_loss"]
    value = row["val_acc"] if goal == "accuracy" else row["val_metric"]
    if value is None or np.isnan(value):  # e.g. AUC of a validation fold with one class
        return float("inf")
    return -value if metrics.higher_is_better(goal) else value
