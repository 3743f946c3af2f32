"""What a finished run is, for `kit predict` and `kit export`: a tree read from a run folder or
from a `kit export` folder (which holds run folders of the same shape).

A train run is a leaf (its recipe + the models its test.csv averages: summary.json
`test_members`); a blend run is a node over its member runs with the blender it kept (weights, or
the stack's coefficients), rebuilt with blenders.py's own classes so a blend's probabilities are
computed exactly as its test.csv was. An export is checked first: its format, the kit version
that wrote it, and every file's sha256 against manifest.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, __version__
from kaggle_kit import recipe as recipes
from kaggle_kit.rundir import RunDir, has_weights, model_dirs
from kaggle_kit.workspace import CompetitionDir, read_json, sha256_file

EXPORT_FORMAT = 1  # manifest.json "format": bump when the export layout changes

# ----------------------------------------------------------------------------- the run tree


def load_tree(root: Path, resolve) -> dict:
    """The prediction tree of run folder `root` (a train or blend run, or one inside an export).

    Leaf: {"kind": "train", "name", "root", "classes", "task", "recipe": Recipe,
           "models": [model dir], "precision": provenance.json's mixed_precision or None}.
    Node: {"kind": "blend", "name", "root", "classes", "task", "summary", "members": [tree]}.
    `resolve(path_text, blend_root)` finds a blend member's folder."""
    run = RunDir(Path(root))
    s = run.summary()
    kind, classes = s.get("kind"), s.get("classes")
    if kind == "blend":
        members = [load_tree(resolve(m["path"], run.root), resolve) for m in s["members"]]
        return {"kind": "blend", "name": run.name, "root": run.root, "classes": classes,
                "task": s.get("task", "multiclass"), "summary": s, "members": members}
    if kind != "train" or not classes:
        raise KitError(f"{run.summary_path}: not a finished kit train or kit blend run "
                       f"(kind {kind!r}); give a run folder or a kit export")
    names = s.get("test_members") or _default_members(run, s.get("test_from", "folds"))
    models = [run.fold_dir(m) for m in names]
    for d in models:
        if not has_weights(d):
            raise KitError(f"{d / 'model.pt'}: missing weights of {d.name}, one of the models "
                           f"{run.test_path.name} averages; retrain it (kit train --resume) or "
                           "export the run again")
    prov = run.provenance() if run.provenance_path.is_file() else {}
    return {"kind": "train", "name": run.name, "root": run.root, "classes": classes,
            "task": s.get("task", "multiclass"), "recipe": recipes.load(run.recipe_path),
            "models": models, "precision": prov.get("mixed_precision")}


def _default_members(run: RunDir, test_from: str) -> list[str]:
    """Runs written before summary.json had `test_members`: the fold/refit dirs test_from names."""
    dirs = [p.name for p in model_dirs(run)]
    return [d for d in dirs if test_from == "both" or d.startswith(test_from[:4])]


def leaves(tree: dict) -> list[dict]:
    """The train runs of a tree, each once (by folder), in tree order."""
    if tree["kind"] == "train":
        return [tree]
    out, seen = [], set()
    for m in tree["members"]:
        for leaf in leaves(m):
            if leaf_key(leaf) not in seen:
                seen.add(leaf_key(leaf))
                out.append(leaf)
    return out


def open_source(path: Path, data_dir: Path, runs_dir: Path) -> dict:
    """{"tree", "meta": competition.json dict, "sample": sample_submission head, "comp":
    CompetitionDir or None, "export": root or None} of a run folder (or run name under runs_dir)
    or of a `kit export` folder (checked: format, kit version, every file's sha256)."""
    path = Path(path)
    if not path.exists() and (Path(runs_dir) / str(path)).exists():
        path = Path(runs_dir) / str(path)
    if (path / "manifest.json").is_file():
        return _open_export(path)
    if not RunDir(path).summary_path.is_file():
        raise KitError(f"{path}: neither a run folder (no summary.json) nor a kit export "
                       "(no manifest.json)")

    def resolve(text: str, blend_root: Path) -> Path:
        p = Path(text)
        for cand in (p, blend_root.parent / p.name, Path(runs_dir) / p.name):
            if RunDir(cand).summary_path.is_file():
                return cand
        raise KitError(f"{blend_root / 'summary.json'}: member run {text} not found (nor under "
                       f"{blend_root.parent}); run kit predict from where kit blend ran")

    tree = load_tree(path, resolve)
    comp = CompetitionDir.open(data_dir, RunDir(path).summary()["competition"])
    return {"tree": tree, "meta": comp.meta(), "sample": comp.sample_submission().head(5),
            "comp": comp, "export": None}


def _open_export(root: Path) -> dict:
    man = read_json(root / "manifest.json")
    if man.get("format") != EXPORT_FORMAT or man.get("kit_version") != __version__:
        raise KitError(f"{root / 'manifest.json'}: made by kit {man.get('kit_version')} (export "
                       f"format {man.get('format')}), this is kit {__version__} (format "
                       f"{EXPORT_FORMAT}); install the export's own wheel: pip install --no-index "
                       f"--find-links {root / 'wheels'} kaggle_kit=={man.get('kit_version')}")
    for rel, sha in man["files"].items():
        f = root / rel
        if not f.is_file():
            raise KitError(f"{f}: missing from the export (listed in manifest.json); upload the "
                           "whole folder that kit export wrote, or export again")
        if sha256_file(f) != sha:
            raise KitError(f"{f}: sha256 differs from manifest.json (corrupted or edited); "
                           "upload the folder kit export wrote again")
    tree = load_tree(root / man["run"], lambda text, _b: root / text)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    return {"tree": tree, "meta": read_json(root / "competition.json"), "sample": sample,
            "comp": None, "export": root}


def combine(tree: dict, probs: dict) -> np.ndarray:
    """The tree's (n, C) probabilities from its leaves' (keyed by leaf_key), blends recombined."""
    if tree["kind"] == "train":
        return probs[leaf_key(tree)]
    classes = tree["classes"]
    P = [pd.DataFrame(combine(m, probs), columns=m["classes"])[classes].to_numpy()
         for m in tree["members"]]
    return blender(tree).predict_proba(P)


def leaf_key(leaf: dict) -> str:
    """A leaf's identity: its resolved folder (one run used twice in a tree is predicted once)."""
    return str(Path(leaf["root"]).resolve())


def blender(node: dict):
    """The fitted blender a blend run kept, rebuilt from its summary.json (blenders.py's classes,
    so the probabilities are computed exactly as the blend's test.csv was)."""
    from kaggle_kit import blenders

    s, n_classes, task = node["summary"], len(node["classes"]), node["task"]
    names, where = [m["run"] for m in s["members"]], RunDir(node["root"]).summary_path
    if s.get("weights"):
        model = blenders.MeanBlender(task=task)
        model.weights_ = np.array([s["weights"][n] for n in names], dtype=float)
        return model
    c = s.get("coefficients")
    if not c:
        raise KitError(f"{where}: neither weights nor coefficients; blend the runs again")
    model = blenders.StackBlender(C=c["C"], task=task)
    model.n_classes_ = n_classes
    if task == "multilabel":  # one binary model per class on the members' logits
        if any(v is None for v in c["per_class"].values()):
            raise KitError(f"{where}: a class of the stack model was constant in the OOF rows "
                           "(its rate is not saved); blend with a method other than stack")
        model.models_ = [(_logistic(c["C"], [v["coef"]], [v["intercept"]], [0, 1]), 0.0)
                         for v in (c["per_class"][k] for k in node["classes"])]
        return model
    from sklearn.preprocessing import StandardScaler

    coef = np.asarray(c["coef"], dtype=float)  # (K, m*C); (1, m*C) for two known classes
    # the K classes the model knows (blends before "classes" was saved: all of them); a class
    # missing from the OOF rows (fold -1 images only) is not among them and gets probability 0
    known = [node["classes"].index(k) for k in c.get("classes", node["classes"])]
    if len(coef) != len(known) and not (len(coef) == 1 and len(known) == 2):
        raise KitError(f"{where}: the stack model knows {len(coef)} of {n_classes} classes; "
                       "blend the runs again")
    model.scaler_ = StandardScaler()
    model.scaler_.mean_ = np.asarray(c["feature_mean"], dtype=float)
    model.scaler_.scale_ = np.asarray(c["feature_scale"], dtype=float)
    model.scaler_.var_ = model.scaler_.scale_ ** 2
    model.scaler_.n_features_in_ = coef.shape[1]
    model.model_ = _logistic(c["C"], coef, c["intercept"], known)
    return model


def _logistic(C: float, coef, intercept, classes: list[int]):
    """A fitted sklearn LogisticRegression from saved coefficients predicting class indices
    `classes` (columns of the blend's probabilities)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C)
    model.coef_ = np.asarray(coef, dtype=float)
    model.intercept_ = np.asarray(intercept, dtype=float)
    model.classes_ = np.asarray(classes)
    model.n_features_in_ = model.coef_.shape[1]
    return model
