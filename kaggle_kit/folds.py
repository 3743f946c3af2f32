"""folds.csv (Id,label,fold), made once per competition and seed (docs/design.md sec. 1).

Single-label: StratifiedKFold on the label, or StratifiedGroupKFold with the group column that
`kit fetch --group-col` named (state-farm's driver), so no group is split between training and
OOF. Images of a class with fewer images than folds get fold -1: they train in every fold and are
never OOF-scored. Multilabel: stratified on each image's rarest label (a small, well-known
approximation of iterative stratification that needs only scikit-learn).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.metrics import set_sep, split_set
from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv


def make_folds(labels: pd.DataFrame, n_folds: int, seed: int, multilabel: bool = False,
               groups: pd.Series | None = None,
               classes: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """labels (Id, label in CSV order) -> (Id, label, fold), warnings. Shuffled with `seed`.
    `classes`: the competition's (multilabel sets are split as metrics.set_sep says)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    sep = set_sep(classes or [])
    key = _rarest_label(labels["label"], n_folds, sep) if multilabel else labels["label"]
    counts = key.value_counts()
    rare = key.isin(counts.index[counts < n_folds]) if not multilabel else key.map(lambda _: False)
    fold = np.full(len(labels), -1, dtype=int)
    use = np.flatnonzero(~rare.to_numpy())
    warnings = []
    if rare.any():
        n_cls = int((counts < n_folds).sum())
        warnings.append(f"{int(rare.sum())} images of {n_cls} classes with fewer than {n_folds} "
                        "images get fold -1: they train in every fold and are never OOF-scored")
    if len(use) < n_folds or key.iloc[use].nunique() < 1:
        raise KitError(f"only {len(use)} images in classes with >= {n_folds} images; pass a "
                       "smaller --folds")
    if groups is not None:
        n_groups = groups.iloc[use].nunique()
        if n_groups < n_folds:
            raise KitError(f"--group-col: only {n_groups} groups, fewer than --folds {n_folds}; "
                           f"pass --folds {max(2, n_groups)}")
        split = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(use)), key.iloc[use], groups.iloc[use])
    else:
        split = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(use)), key.iloc[use])
    for k, (_, val) in enumerate(split):
        fold[use[val]] = k
    return pd.DataFrame({"Id": labels["Id"].values, "label": labels["label"].values,
                         "fold": fold}), warnings


def _rarest_label(labels: pd.Series, n_folds: int, sep: str = " ") -> pd.Series:
    """Each multilabel row's rarest label (by how many rows carry it); strata smaller than the
    fold count are pooled so StratifiedKFold can split them."""
    sets = labels.map(lambda v: split_set(v, sep))
    freq = pd.Series([t for s in sets for t in s]).value_counts()
    key = sets.map(lambda s: min(s, key=lambda t: (freq[t], t)) if s else "")
    small = key.map(key.value_counts()) < n_folds
    return key.mask(small, "__pooled__")


def write_folds(comp: CompetitionDir, n_folds: int, seed: int,
                meta: dict | None = None) -> tuple[dict, list[str]]:
    """Write folds.csv for `comp`; return its record {"k", "seed", "sha256"} and warnings.
    `meta`: competition.json as the caller holds it (not read a second time)."""
    meta = comp.meta() if meta is None else meta
    index = comp.train_index()
    group = meta.get("group_col")
    folds, warnings = make_folds(index[["Id", "label"]], n_folds, seed,
                                 multilabel=meta.get("task") == "multilabel",
                                 groups=index["group"] if group else None,
                                 classes=meta.get("classes"))
    write_csv(comp.folds_path, folds)
    return {"k": n_folds, "seed": seed, "sha256": sha256_file(comp.folds_path)}, warnings
