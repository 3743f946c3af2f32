"""`kit blend`: mean / weighted / greedy (Caruana) / stacked ensembles of runs, honestly scored.

Blenders follow scikit-learn: `fit(P, y)` / `predict_proba(P)` where P is a list of (n, C)
probability arrays (one per member, same rows and class order) and y (n,) class indices; learned
state ends in `_`. Every method is scored twice on the members' OOF rows: in-sample (fitted and
scored on all rows) and honest (nested CV over the competition's folds: fitted on the other folds'
OOF rows, predicting the held-out fold). `best` picks by the honest score. The blend run's oof.csv
is the honest OOF, its test.csv the method fitted on all OOF rows applied to the members' test.csv,
so a blend has the shape of a train run and can itself be blended or submitted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.report import accuracy_logloss, clean_probs, oof_scores, write_run_plots
from kaggle_kit.workspace import CompetitionDir, RunDir, check_run_name, run_kind, sha256_file

METHODS = ("mean", "weighted", "greedy", "stack")

# ----------------------------------------------------------------------------- blenders


def _true_probs(P: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """(n, m): each member's probability of the true class (a linear blend's log loss needs only this)."""
    rows = np.arange(len(y))
    return np.stack([clean_probs(p)[rows, y] for p in P], axis=1)


def _linear(P: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """(n, C) weighted average of the members' (n, C) probabilities."""
    return clean_probs(sum(wi * clean_probs(p) for wi, p in zip(w, P, strict=True)))


class MeanBlender:
    """Plain average of the members' probabilities."""

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> MeanBlender:
        self.weights_ = np.full(len(P), 1.0 / len(P))
        return self

    def predict_proba(self, P: list[np.ndarray]) -> np.ndarray:
        return _linear(P, self.weights_)


class WeightedBlender(MeanBlender):
    """Non-negative weights summing to one that minimise OOF log loss (SLSQP on the simplex)."""

    def __init__(self, maxiter: int = 500):
        self.maxiter = maxiter

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> WeightedBlender:
        from scipy.optimize import minimize

        Py, m = _true_probs(P, y), len(P)  # (n, m)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            q = np.clip(Py @ w, 1e-15, None)  # (n,) blend's probability of the true class
            return -np.log(q).mean(), -(Py / q[:, None]).mean(axis=0)

        res = minimize(loss, np.full(m, 1.0 / m), jac=True, method="SLSQP",
                       bounds=[(0.0, 1.0)] * m, options={"maxiter": self.maxiter},
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)}])
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum()
        return self


class GreedyBlender(MeanBlender):
    """Caruana ensemble selection with replacement: start empty, add the member that most lowers
    OOF log loss, `n_iter` times; keep the best prefix; weights_ = selection counts / total."""

    def __init__(self, n_iter: int = 50):
        self.n_iter = n_iter

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> GreedyBlender:
        Py = _true_probs(P, y)  # (n, m)
        counts, total = np.zeros(len(P)), np.zeros(len(y))
        best_loss, best_counts = np.inf, None
        for t in range(1, self.n_iter + 1):
            losses = -np.log((total[:, None] + Py) / t).mean(axis=0)  # (m,) if each were added
            j = int(np.argmin(losses))  # ties -> first member
            counts[j] += 1
            total += Py[:, j]
            if losses[j] < best_loss - 1e-12:
                best_loss, best_counts = losses[j], counts.copy()
        self.counts_ = best_counts
        self.weights_ = best_counts / best_counts.sum()
        return self


class StackBlender:
    """Multinomial logistic regression on the members' standardised log-probabilities (n, m*C).
    coef_ (C, m*C) and intercept_ (C,) apply to the standardised features (scaler_)."""

    # C: inverse L2 strength. Real members (animals15, 7,200 OOF rows x 5 runs x 15 classes,
    # nested CV over the 4 folds): C=0.03 -> accuracy 0.7524 / log loss 0.762; 0.1 -> 0.7450 /
    # 0.782 (overfits: 1,140 coefficients); 0.01 -> 0.7542 / 0.768; 0.003 -> 0.7556 / 0.827.
    # LogisticRegressionCV picks 0.03 too, at ~30x the fitting time.
    def __init__(self, C: float = 0.03, random_state: int = 0, max_iter: int = 2000):
        self.C, self.random_state, self.max_iter = C, random_state, max_iter

    @staticmethod
    def features(P: list[np.ndarray]) -> np.ndarray:
        """(n, m*C) log-probabilities, floored at 1e-6 to keep the features bounded."""
        return np.hstack([np.log(np.clip(clean_probs(p), 1e-6, None)) for p in P])

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> StackBlender:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.n_classes_ = P[0].shape[1]
        X = self.features(P)
        self.scaler_ = StandardScaler().fit(X)  # standardised: lbfgs converges ~4x faster
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter,
                                         random_state=self.random_state)
        self.model_.fit(self.scaler_.transform(X), y)
        self.coef_, self.intercept_ = self.model_.coef_, self.model_.intercept_
        return self

    def predict_proba(self, P: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(P[0]), self.n_classes_))  # classes absent from fit stay at ~0
        X = self.scaler_.transform(self.features(P))
        out[:, self.model_.classes_] = self.model_.predict_proba(X)
        return clean_probs(out)


def make_blender(method: str, random_state: int = 0):
    """A fresh, unfitted blender for `method` (one of METHODS)."""
    if method == "mean":
        return MeanBlender()
    if method == "weighted":
        return WeightedBlender()
    if method == "greedy":
        return GreedyBlender()
    if method == "stack":
        return StackBlender(random_state=random_state)
    raise KitError(f"--method {method}: unknown; choose one of {', '.join([*METHODS, 'best'])}")


def honest_oof(method: str, P: list[np.ndarray], y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(n, C) nested-CV predictions: for each fold k, fit on rows of the other folds, predict k."""
    out = np.zeros_like(P[0], dtype=float)
    for k in np.unique(folds):
        held = folds == k
        model = make_blender(method).fit([p[~held] for p in P], y[~held])
        out[held] = model.predict_proba([p[held] for p in P])
    return out


def evaluate(method: str, P: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
             T: list[np.ndarray]) -> dict:
    """One method: honest OOF (nested CV), in-sample scores, and the all-rows model on test."""
    honest = honest_oof(method, P, y, folds)
    model = make_blender(method).fit(P, y)
    return {"method": method, "honest": accuracy_logloss(honest, y),
            "insample": accuracy_logloss(model.predict_proba(P), y),
            "oof": honest, "test": model.predict_proba(T), "model": model}


# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    name: str
    run: RunDir
    summary: dict
    oof: pd.DataFrame   # index Id, fold + class columns (class order)
    test: pd.DataFrame  # index Id, class columns


def _ids_diff(a: pd.Index, b: pd.Index) -> str:
    only_a, only_b = a.difference(b), b.difference(a)
    return (f"{len(only_a)} Ids only here (e.g. {list(only_a[:3])}), "
            f"{len(only_b)} missing (e.g. {list(only_b[:3])})")


def _check_member(path: Path, s: dict, comp: CompetitionDir, folds: pd.DataFrame) -> Member:
    """Read one member, refusing other classes, Ids or folds than the competition's."""
    run, classes = RunDir(path), comp.classes
    if s.get("classes") is not None and sorted(s["classes"]) != sorted(classes):
        raise KitError(f"{run.summary_path}: classes differ from {comp.name}'s: missing "
                       f"{sorted(set(classes) - set(s['classes']))}, unknown "
                       f"{sorted(set(s['classes']) - set(classes))}")
    fsha = sha256_file(comp.folds_path)
    if s.get("folds_sha256") not in (None, fsha):
        raise KitError(f"{run.summary_path}: made on other folds (folds_sha256 "
                       f"{s['folds_sha256'][:12]} != {fsha[:12]} of {comp.folds_path}); retrain "
                       "it on the current folds")
    oof, test = run.read_oof(classes), run.read_test(classes)
    if oof.empty:
        raise KitError(f"{run.oof_path}: no OOF rows (a refit-only run?); blends are fitted and "
                       "scored on OOF rows, so blend runs trained with folds")
    for path, df in ((run.oof_path, oof), (run.test_path, test)):
        p = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = pd.Series(~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p.sum(axis=1) <= 0),
                        index=df.index)
        if bad.any():
            raise KitError(f"{path}: {int(bad.sum())} rows with empty, infinite, negative or "
                           f"all-zero probabilities (e.g. Id {bad.index[bad][0]}); rerun that run")
    unknown = oof.index.difference(folds.index)
    if len(unknown):
        raise KitError(f"{run.oof_path}: other Ids than {comp.folds_path}: "
                       f"{_ids_diff(oof.index, folds.index)}")
    moved = oof["fold"].astype(int) != folds.loc[oof.index, "fold"]
    if moved.any():
        raise KitError(f"{run.oof_path}: made on other folds: {int(moved.sum())} Ids in another "
                       f"fold than {comp.folds_path} (e.g. Id {moved.index[moved][0]}); retrain it "
                       "on the current folds")
    test_ids = pd.Index(comp.test_ids())
    if set(test.index) != set(test_ids):
        raise KitError(f"{run.test_path}: other test Ids than {comp.name}'s sample submission: "
                       f"{_ids_diff(test.index, test_ids)}")
    return Member(run.name, run, s, oof, test.loc[test_ids])


def load_members(paths: list[Path], data_dir: Path) -> tuple[CompetitionDir, list[Member]]:
    """Open the members, all of one competition, on its folds, with the same Ids and classes.
    Members are returned sorted by run name, rows in folds.csv order, columns in class order."""
    if len(paths) < 2:
        raise KitError("kit blend: give at least 2 runs to blend")
    resolved = [Path(p).resolve() for p in paths]
    for i, r in enumerate(resolved):  # one run twice would count double, as if two members agreed
        if r in resolved[:i]:
            raise KitError(f"{paths[i]}: given twice (also as {paths[resolved.index(r)]}); "
                           "give each run once")
    summaries = [RunDir(Path(p)).summary() for p in paths]
    first = summaries[0].get("competition")
    for p, s in zip(paths, summaries, strict=True):
        if not s.get("competition"):
            raise KitError(f"{RunDir(Path(p)).summary_path}: no 'competition' key; is {p} a run "
                           "made by kit train or kit blend?")
        if s.get("competition") != first:
            raise KitError(f"{p}: a run of competition '{s.get('competition')}', but {paths[0]} is "
                           f"of '{first}'; blend runs of one competition")
    comp = CompetitionDir.open(data_dir, first)
    folds = comp.folds().set_index("Id")
    members = [_check_member(Path(p), s, comp, folds) for p, s in zip(paths, summaries, strict=True)]
    ref = members[0]
    for m in members[1:]:
        if set(m.oof.index) != set(ref.oof.index):
            raise KitError(f"{m.run.oof_path}: other Ids than {ref.run.oof_path}: "
                           f"{_ids_diff(m.oof.index, ref.oof.index)}")
    order = folds.index[folds.index.isin(ref.oof.index)]
    for m in members:
        m.oof = m.oof.loc[order]
    seen: dict[str, int] = {}
    for m in sorted(members, key=lambda m: (m.name, str(m.run.root))):
        seen[m.name] = seen.get(m.name, 0) + 1
        m.name += f"#{seen[m.name]}" if seen[m.name] > 1 else ""
    return comp, sorted(members, key=lambda m: m.name)


# ----------------------------------------------------------------------------- the command


def _pick(results: list[dict]) -> dict:
    """Best by honest accuracy, ties broken by lower honest log loss."""
    return min(results, key=lambda r: (-round(r["honest"][0], 12), r["honest"][1]))


def _weights(res: dict, members: list[Member]) -> dict | None:
    model = res["model"]
    if hasattr(model, "weights_"):
        return {m.name: float(w) for m, w in zip(members, model.weights_, strict=True)}
    return None


def _leaderboard(members: list[Member], scores: list[dict], results: list[dict]) -> list[dict]:
    rows = [{"name": m.name, "kind": "member", "honest_accuracy": s["cv"]["accuracy"],
             "honest_log_loss": s["cv"]["log_loss"], "insample_accuracy": s["cv"]["accuracy"],
             "insample_log_loss": s["cv"]["log_loss"]} for m, s in zip(members, scores, strict=True)]
    rows += [{"name": r["method"], "kind": "method", "honest_accuracy": r["honest"][0],
              "honest_log_loss": r["honest"][1], "insample_accuracy": r["insample"][0],
              "insample_log_loss": r["insample"][1], "weights": _weights(r, members)}
             for r in results]
    return sorted(rows, key=lambda r: (-r["honest_accuracy"], r["honest_log_loss"]))


def leaderboard_text(rows: list[dict], chosen: str) -> str:
    """The leaderboard as aligned plain text (no [..]: safe to pass through rich markup)."""
    w = max(15, *(len(r["name"]) for r in rows))
    head = (f"{'kind':6} {'member / method':{w}} {'honest acc':>10} {'honest ll':>9} "
            f"{'in-smp acc':>10} {'in-smp ll':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kept = "  <- kept" if r["kind"] == "method" and r["name"] == chosen else ""
        kind = "member" if r["kind"] == "member" else "blend"
        lines.append(f"{kind:6} {r['name']:{w}} {r['honest_accuracy']:10.4f} "
                     f"{r['honest_log_loss']:9.4f} {r['insample_accuracy']:10.4f} "
                     f"{r['insample_log_loss']:9.4f}{kept}")
    return "\n".join(lines)


def default_name(members: list[Member], method: str) -> str:
    """`blend-<method>-<8 hex of the sorted member names>`."""
    h = hashlib.sha256("\n".join(sorted(m.name for m in members)).encode()).hexdigest()[:8]
    return f"blend-{method}-{h}"


def _out_run(runs_dir: Path, name: str, members: list[Member]) -> RunDir:
    out = RunDir(Path(runs_dir) / check_run_name(name))
    if any(out.root.resolve() == m.run.root.resolve() for m in members):
        raise KitError(f"{out.root}: is one of the members; pick another --name")
    kind = run_kind(out.root)
    if kind == "train":
        raise KitError(f"{out.root}: holds a train run (kit train), not a blend; pick another --name")
    if kind is None and out.root.exists() and (not out.root.is_dir() or any(out.root.iterdir())):
        raise KitError(f"{out.root}: exists and was not made by kit; pick another --name")
    out.root.mkdir(parents=True, exist_ok=True)
    return out


def write_blend(out: RunDir, comp: CompetitionDir, members: list[Member], scores: list[dict],
                results: list[dict], chosen: dict, requested: str) -> dict:
    """Write oof.csv (honest), test.csv, summary.json, provenance.json, confusion.png of a blend."""
    classes, ref = comp.classes, members[0]
    oof = pd.DataFrame(chosen["oof"], index=ref.oof.index, columns=classes)
    oof.insert(0, "fold", ref.oof["fold"].astype(int))
    out.write_oof(oof, classes)
    out.write_test(pd.DataFrame(chosen["test"], index=ref.test.index, columns=classes), classes)
    labels = comp.folds().set_index("Id")["label"]
    model = chosen["model"]
    summary = {
        "run": out.name, "kind": "blend", "competition": comp.name, "classes": classes,
        "metric": "accuracy", **oof_scores(oof, labels, classes),
        "folds_sha256": sha256_file(comp.folds_path), "test_from": "members",
        "method": chosen["method"], "requested_method": requested,
        "members": [{"run": m.name, "path": str(m.run.root), "kind": m.summary.get("kind"),
                     "test_from": m.summary.get("test_from"), "cv": s["cv"]}
                    for m, s in zip(members, scores, strict=True)],
        "weights": _weights(chosen, members),
        "coefficients": ({"coef": model.coef_, "intercept": model.intercept_, "C": model.C,
                          "features": [f"{m.name}:log_{c}" for m in members for c in classes],
                          "feature_mean": model.scaler_.mean_,
                          "feature_scale": model.scaler_.scale_}
                         if isinstance(model, StackBlender) else None),
        "leaderboard": _leaderboard(members, scores, results),
    }
    out.write_summary(summary)
    out.write_provenance({"command": "kit blend", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime()),
                          "data": str(comp.root), "folds_sha256": summary["folds_sha256"],
                          "members": [{"run": m.name, "path": str(m.run.root),
                                       "oof_sha256": sha256_file(m.run.oof_path),
                                       "test_sha256": sha256_file(m.run.test_path)}
                                      for m in members]})
    write_run_plots(out, labels)
    return summary


def blend(runs: list[Path], *, method: str = "best", name: str | None = None,
          runs_dir: Path = Path("runs"), data_dir: Path = Path("data"),
          submissions_dir: Path = Path("submissions")) -> str:
    """`kit blend RUN... [--method mean|weighted|greedy|stack|best] [--name NAME]`.

    Aligns the members by Id and class name (refusing other competitions, Ids, classes or folds),
    scores every method honestly (nested CV on the competition's folds) and in-sample, keeps
    `method` (or, for `best`, the best honest accuracy, ties -> lower log loss), writes
    runs/<name>/ (oof.csv = honest OOF, test.csv, summary.json, provenance.json, confusion.png)
    and a submission in `submissions_dir`. Returns the leaderboard and the output paths as text.
    """
    if name is not None:
        check_run_name(name)
    if method != "best":
        make_blender(method)  # unknown method -> error before any work
    comp, members = load_members([Path(r) for r in runs], Path(data_dir))
    classes, ref = comp.classes, members[0]
    labels = comp.folds().set_index("Id")["label"]
    y = ref.oof.index.map(labels).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    folds = ref.oof["fold"].to_numpy(dtype=int)
    if len(np.unique(folds)) < 2:
        raise KitError(f"{ref.run.oof_path}: OOF rows of one fold only; honest scoring needs >= 2")
    P = [m.oof[classes].to_numpy(dtype=float) for m in members]   # m x (n, C)
    T = [m.test[classes].to_numpy(dtype=float) for m in members]  # m x (n_test, C)
    scores = [oof_scores(m.oof, labels, classes) for m in members]
    results = [evaluate(k, P, y, folds, T) for k in METHODS]
    chosen = _pick(results) if method == "best" else next(r for r in results
                                                          if r["method"] == method)
    out = _out_run(runs_dir, name or default_name(members, method), members)
    summary = write_blend(out, comp, members, scores, results, chosen, method)
    from kaggle_kit.submit import build_submission, validate_submission, write_submission

    sub = build_submission(out, comp)
    validate_submission(sub, comp, str(out.test_path))
    sub_path = write_submission(sub, Path(submissions_dir), out.name)
    best_member = max(scores, key=lambda s: s["cv"]["accuracy"])["cv"]["accuracy"]
    return "\n".join([
        f"blend of {len(members)} runs of {comp.name} on {len(y)} OOF rows, "
        f"{len(np.unique(folds))} folds (honest = nested CV over the folds; in-smp = in-sample, fitted and "
        "scored on all OOF rows)",
        leaderboard_text(summary["leaderboard"], chosen["method"]), "",
        f"kept: {chosen['method']}  honest OOF accuracy {summary['cv']['accuracy']:.4f} "
        f"(best member {best_member:.4f}, {summary['cv']['accuracy'] - best_member:+.4f}), "
        f"log loss {summary['cv']['log_loss']:.4f}",
        f"weights: {summary['weights']}" if summary["weights"] else "weights: stacked "
        "(see summary.json coefficients)",
        f"run: {out.root}", f"submission: {sub_path}"])
