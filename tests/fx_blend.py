"""Synthetic competitions and runs on disk (the workspace contract), for blend and report tests.

No images: blend and report only read competition.json, train.csv, folds.csv,
sample_submission.csv and a run's oof.csv / test.csv / summary.json / fold<k>/metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit.metrics import oof_scores
from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv, write_json

ANIMALS = ["bear", "dolphin", "eagle", "leopard", "shark"]


def make_comp(data_dir: Path, name: str = "toy", classes: list[str] = ANIMALS, n_train: int = 200,
              n_test: int = 50, k: int = 4, seed: int = 0) -> CompetitionDir:
    """A fetched-looking competition: labels balanced over `classes`, stratified `k` folds."""
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:05d}" for i in range(n_train)]  # leading zeros: Ids must stay str
    labels = [classes[i % len(classes)] for i in rng.permutation(n_train)]
    write_csv(root / "files" / "train.csv", pd.DataFrame({"id": ids, "label": labels}))
    fold = np.zeros(n_train, dtype=int)
    for c in classes:  # stratified: within each class, folds 0..k-1 in turn
        idx = [i for i, lab in enumerate(labels) if lab == c]
        fold[idx] = np.arange(len(idx)) % k
    write_csv(root / "folds.csv", pd.DataFrame({"Id": ids, "label": labels, "fold": fold}))
    test_ids = [f"t{i:04d}" for i in range(n_test)]
    write_csv(root / "files" / "sample_submission.csv",
              pd.DataFrame({"id": test_ids, "label": classes[0]}))
    comp = CompetitionDir(root)
    comp.write_meta({
        "name": name, "source": "files", "id_col": "id", "label_col": "label",
        "labels_csv": "train.csv",
        "train_dir": "train", "test_dir": "test", "ext": ".png",
        "sample_submission": "sample_submission.csv", "submission_columns": ["id", "label"],
        "classes": sorted(classes), "n_train": n_train, "n_test": n_test,
        "image_sizes": {"32x32": n_train + n_test},
        "folds": {"k": k, "seed": seed, "sha256": sha256_file(root / "folds.csv")},
        "files": {}, "cache": {},
    })
    return comp


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def member_probs(y: np.ndarray, n_classes: int, signal: float, seed: int) -> np.ndarray:
    """(n, C) probabilities: logits = signal * onehot(y) + N(0, 1); signal 0 = pure noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(y), n_classes))
    z[np.arange(len(y)), y] += signal
    return softmax(z)


def make_run(runs_dir: Path, name: str, comp: CompetitionDir, signal: float = 2.0, seed: int = 0,
             *, oof: np.ndarray | None = None, test: np.ndarray | None = None, epochs: int = 3,
             targeted: list[str] | None = None) -> RunDir:
    """A finished-looking train run of `comp`: oof.csv on comp's folds, test.csv on its test Ids,
    summary.json (oof_scores + folds_sha256), fold<k>/metrics.jsonl. Probabilities are
    `member_probs(signal, seed)` unless given as (n, C) arrays in folds.csv / test-Id order."""
    classes = comp.classes
    folds = comp.folds()
    y = folds["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    if oof is None:
        oof = member_probs(y, len(classes), signal, seed)
    if test is None:
        test = member_probs(np.arange(len(comp.test_ids())) % len(classes), len(classes), signal,
                            seed + 1000)
    run = RunDir(Path(runs_dir) / name)
    run.root.mkdir(parents=True, exist_ok=True)
    oof_df = pd.DataFrame(oof, columns=classes, index=pd.Index(folds["Id"], name="Id"))
    oof_df.insert(0, "fold", folds["fold"].to_numpy())
    run.write_oof(oof_df, classes)
    run.write_test(pd.DataFrame(test, columns=classes,
                                index=pd.Index(comp.test_ids(), name="Id")), classes)
    scores = oof_scores(oof_df, folds.set_index("Id")["label"], classes)
    run.write_summary({"run": name, "kind": "train", "competition": comp.name, "classes": classes,
                       "metric": "accuracy", **scores, "folds_sha256": sha256_file(comp.folds_path),
                       "test_from": "folds",
                       "targeted": targeted and {"classes": targeted, "factor": 2.0,
                                                 "transforms": [], "source": "recipe"}})
    for k in sorted(folds["fold"].unique()):
        lines = [json.dumps({"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 2.2 / (e + 1) + 0.05 * k,
                             "train_acc": 1 - 0.8 * np.exp(-e / 4), "val_acc": 0.9 - 0.7 * np.exp(-e / 3),
                             "lr": 0.1, "epoch_s": 1.0, "images_per_s": 100.0})
                 for e in range(epochs)]
        run.fold_dir(int(k)).mkdir(exist_ok=True)
        (run.fold_dir(int(k)) / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def write_json_key(path: Path, **updates) -> None:
    """Update keys of a JSON file in place (to corrupt a summary.json in refusal tests)."""
    obj = json.loads(Path(path).read_text())
    obj.update(updates)
    write_json(path, obj)
