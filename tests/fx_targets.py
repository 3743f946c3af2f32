"""Tiny generated competitions of any target kind, as `kit fetch` would leave them: images, a
label CSV, folds.csv, sample_submission.csv and competition.json with the task / metric /
submission keys (the shared contract). The class is visible in the pixels, so a net can learn it.

The Kaggle files sit in the competition folder itself and competition.json names it as its
`source` (the read-only `kit fetch --from <folder>` case), so the fixture is valid with and
without a separate `files/` folder for shipped files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv, write_json

# one colour per class (RGB 0..255); multilabel: class c lights up quadrant c % 4
COLOURS = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230],
                    [40, 230, 230], [140, 140, 140], [250, 250, 250], [20, 20, 20],
                    [120, 60, 10]])


def _image(rng: np.random.Generator, label: list[int], multilabel: bool, size: int) -> np.ndarray:
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.int64)
    h = size // 2
    for c in label:
        if multilabel:
            r, q = divmod(c % 4, 2)
            img[r * h:(r + 1) * h, q * h:(q + 1) * h] += COLOURS[c % len(COLOURS)] // 2
        else:
            img += COLOURS[c % len(COLOURS)] * 3 // 4
    return np.clip(img, 0, 255).astype(np.uint8)


def _sample(kind: str, id_col: str, test_ids: list[str], classes: list[str],
            prob_cols: list[str] | None) -> pd.DataFrame:
    df = pd.DataFrame({id_col: test_ids})
    if kind == "label":
        df["label"] = classes[0]
    elif kind == "labels":
        df["labels"] = " ".join(classes[:2])
    elif kind == "prob":
        for c in prob_cols or classes:
            df[c] = 1.0 / len(classes)
    else:  # prob_positive
        df["target"] = 0.5
    return df


def make_target_comp(data_dir: Path, name: str, *, task: str = "multiclass",
                     metric: str = "accuracy", classes: list[str] | None = None,
                     kind: str = "label", positive: str | None = None, k: int | None = None,
                     n_train: int = 64, n_test: int = 16, n_folds: int = 2, size: int = 16,
                     never_oof: int = 0, class_names: dict | None = None,
                     prob_cols: list[str] | None = None, seed: int = 0) -> CompetitionDir:
    """data_dir/<name>/ fetched-looking: `n_train` labelled images (multilabel: 1-2 classes
    each), `n_test` test images with zero-padded integer Ids in shuffled order, folds
    (i // C) % n_folds
    except the last `never_oof` images (fold -1), and competition.json with task, metric,
    classes, class_names and submission {id_col, columns, kind, positive, k}. `prob_cols`: the
    sample's probability column names (default: the class values)."""
    classes = sorted(classes or ["cat", "dog"])
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / name
    for d in ("train", "test"):
        (root / d).mkdir(parents=True, exist_ok=True)
    multilabel = task == "multilabel"
    sets = [sorted(rng.choice(len(classes), size=1 + (i % 3 == 0), replace=False).tolist())
            if multilabel else [i % len(classes)] for i in range(n_train)]
    labels = [" ".join(sorted(classes[c] for c in s)) for s in sets]
    ids = [f"img{i:03d}" for i in range(n_train)]
    for i, s in zip(ids, sets, strict=True):
        Image.fromarray(_image(rng, s, multilabel, size)).save(root / "train" / f"{i}.png")
    test_ids = [f"{i:04d}" for i in rng.permutation(n_test)]  # leading zeros, not sorted
    for i in test_ids:
        s = rng.choice(len(classes), size=1).tolist()
        Image.fromarray(_image(rng, s, multilabel, size)).save(root / "test" / f"{i}.png")
    write_csv(root / "train.csv", pd.DataFrame({"id": ids, "label": labels}))
    fold = (np.arange(n_train) // len(classes)) % n_folds  # every class in every fold
    fold[n_train - never_oof:] = -1
    write_csv(root / "folds.csv", pd.DataFrame({"Id": ids, "label": labels, "fold": fold}))
    sample = _sample(kind, "id", test_ids, classes, prob_cols)
    write_csv(root / "sample_submission.csv", sample)
    sub = {"id_col": "id", "columns": list(sample.columns), "kind": kind}
    sub.update({"positive": positive} if positive is not None else {})
    sub.update({"k": k} if k is not None else {})
    write_json(root / "competition.json", {
        "name": name, "source": str(root.resolve()), "id_col": "id", "label_col": "label",
        "labels_csv": "train.csv", "train_dir": "train", "test_dir": "test", "ext": ".png",
        "sample_submission": "sample_submission.csv", "submission_columns": list(sample.columns),
        "classes": classes, "n_train": n_train, "n_test": n_test,
        "image_sizes": {f"{size}x{size}": n_train + n_test},
        "folds": {"k": n_folds, "seed": seed, "sha256": sha256_file(root / "folds.csv")},
        "files": {}, "cache": {}, "task": task, "metric": metric,
        **({"class_names": class_names} if class_names else {}), "submission": sub,
    })
    return CompetitionDir(root)
