"""The blenders of `kit blend`: mean / weighted / greedy (Caruana) / stacked, and their honest scoring.

Blenders follow scikit-learn: `fit(P, y)` / `predict_proba(P)` where P is a list of (n, C)
probability arrays (one per member, same rows and class order) and y the targets (metrics.py:
(n,) class indices, or (n, C) 0/1 for multilabel); learned state ends in `_`. Each blender
optimises `objective(metric)`: the competition metric itself (higher or lower is better, as
metrics.higher_is_better says), except accuracy, a step function, for which the smooth log loss
stands in (the blends measured on animals15 were made that way).
"""

from __future__ import annotations

import numpy as np

from kaggle_kit import KitError, metrics
from kaggle_kit.metrics import EPS, clean_probs

METHODS = ("mean", "weighted", "greedy", "stack")


def objective(metric: str) -> str:
    """The metric blenders optimise for a competition `metric` (metrics.optimised)."""
    return metrics.optimised(metric)


def _norm(p: np.ndarray, task: str) -> np.ndarray:
    """Single-label rows renormalised after the EPS floor; multilabel cells clipped to [EPS, 1-EPS]."""
    return np.clip(p, EPS, 1 - EPS) if task == "multilabel" else clean_probs(p)


def _linear(P: list[np.ndarray], w: np.ndarray, task: str = "multiclass") -> np.ndarray:
    """(n, C) weighted average of the members' (n, C) probabilities."""
    return _norm(sum(wi * _norm(p, task) for wi, p in zip(w, P, strict=True)), task)


def _loss(metric: str, y: np.ndarray, p: np.ndarray, task: str,
          classes: list[str] | None = None) -> float:
    """`metric` turned into a loss to minimise (higher-is-better metrics negated; NaN -> +inf)."""
    s = metrics.score(metric, y, p, task, classes)
    s = -s if metrics.higher_is_better(metric) else s
    return float("inf") if np.isnan(s) else s


class MeanBlender:
    """Plain average of the members' probabilities."""

    def __init__(self, metric: str = "accuracy", task: str = "multiclass",
                 classes: list[str] | None = None):
        self.metric, self.task, self.classes = metric, task, classes  # classes: for qwk

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> MeanBlender:
        self.weights_ = np.full(len(P), 1.0 / len(P))
        return self

    def predict_proba(self, P: list[np.ndarray]) -> np.ndarray:
        return _linear(P, self.weights_, self.task)


def _true_probs(P: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """(n, m): each member's probability of the true class (a linear blend's log loss needs only this)."""
    rows = np.arange(len(y))
    return np.stack([clean_probs(p)[rows, y] for p in P], axis=1)


def _simplex_log_loss(P: list[np.ndarray], y: np.ndarray, task: str):
    """(loss, gradient) of the linear blend's log loss as a function of the weights w (m,)."""
    if task != "multilabel":
        Py = _true_probs(P, y)  # (n, m)

        def f(w: np.ndarray) -> tuple[float, np.ndarray]:
            q = np.clip(Py @ w, EPS, None)  # (n,) blend's probability of the true class
            return -np.log(q).mean(), -(Py / q[:, None]).mean(axis=0)
        return f
    S = np.stack([_norm(p, task) for p in P], axis=-1)  # (n, C, m)

    def g(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(S @ w, EPS, 1 - EPS)  # (n, C) blend's probabilities
        d = y / q - (1 - y) / (1 - q)  # d(-BCE)/dq
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean()), \
            -(d[..., None] * S).mean(axis=(0, 1))
    return g


class WeightedBlender(MeanBlender):
    """Non-negative weights summing to one: minimise OOF log loss (SLSQP on the simplex); for a
    competition metric other than accuracy / log loss, then refine the weights on that metric
    (Powell on softmax-parametrised weights, from the log-loss solution; kept only if better)."""

    def __init__(self, metric: str = "accuracy", task: str = "multiclass",
                 classes: list[str] | None = None, maxiter: int = 500):
        super().__init__(metric, task, classes)
        self.maxiter = maxiter

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> WeightedBlender:
        from scipy.optimize import minimize

        m = len(P)
        res = minimize(_simplex_log_loss(P, y, self.task), np.full(m, 1.0 / m), jac=True,
                       method="SLSQP", bounds=[(0.0, 1.0)] * m, options={"maxiter": self.maxiter},
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)}])
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum()
        goal = objective(self.metric)
        if goal != "log_loss":
            def f(theta: np.ndarray) -> float:
                return _loss(goal, y, _linear(P, _softmax(theta), self.task), self.task,
                             self.classes)

            # 20 evaluations per member: 7,200 rows x 5 members x 15 classes, macro F1 honest
            # 0.8189 vs 0.8200 with 60, in a third of the time (4.8 s vs 16.2 s on 4 folds)
            start = np.log(self.weights_ + 1e-3)
            ref = minimize(f, start, method="Powell", options={"maxfev": 20 * m, "xtol": 1e-2})
            if ref.fun < f(start) - 1e-12:
                self.weights_ = _softmax(ref.x)
        return self


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()


class GreedyBlender(MeanBlender):
    """Caruana ensemble selection with replacement: start empty, add the member that most improves
    the objective (ties -> first member), `n_iter` times; keep the best prefix;
    weights_ = selection counts / total."""

    def __init__(self, metric: str = "accuracy", task: str = "multiclass",
                 classes: list[str] | None = None, n_iter: int = 50):
        super().__init__(metric, task, classes)
        self.n_iter = n_iter

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> GreedyBlender:
        goal = objective(self.metric)
        fast = goal == "log_loss" and self.task != "multilabel"
        Py = _true_probs(P, y) if fast else None  # (n, m)
        Q = None if fast else [_norm(p, self.task) for p in P]
        counts = np.zeros(len(P))
        total = np.zeros(len(y)) if fast else np.zeros_like(Q[0])
        best_loss, best_counts = np.inf, None
        for t in range(1, self.n_iter + 1):
            if fast:  # (m,) log loss if each member were added
                losses = -np.log((total[:, None] + Py) / t).mean(axis=0)
            else:
                losses = np.array([_loss(goal, y, _norm((total + q) / t, self.task), self.task,
                                         self.classes) for q in Q])
            j = int(np.argmin(losses))
            counts[j] += 1
            total = total + (Py[:, j] if fast else Q[j])
            if losses[j] < best_loss - 1e-12:
                best_loss, best_counts = losses[j], counts.copy()
        if best_counts is None:  # the objective is undefined on these rows (e.g. AUC of 1 class)
            best_counts = np.ones(len(P))
        self.counts_ = best_counts
        self.weights_ = best_counts / best_counts.sum()
        return self


class StackBlender:
    """Logistic regression on the members' standardised log-probabilities (n, m*C): multinomial
    for single-label tasks; for multilabel one binary model per class on the members' logits of
    that class. coef_ / intercept_ apply to the standardised features (scaler_)."""

    # C: inverse L2 strength. Real members (animals15, 7,200 OOF rows x 5 runs x 15 classes,
    # nested CV over the 4 folds): C=0.03 -> accuracy 0.7524 / log loss 0.762; 0.1 -> 0.7450 /
    # 0.782 (overfits: 1,140 coefficients); 0.01 -> 0.7542 / 0.768; 0.003 -> 0.7556 / 0.827.
    # LogisticRegressionCV picks 0.03 too, at ~30x the fitting time.
    def __init__(self, C: float = 0.03, random_state: int = 0, max_iter: int = 2000,
                 task: str = "multiclass"):
        self.C, self.random_state, self.max_iter, self.task = C, random_state, max_iter, task

    @staticmethod
    def features(P: list[np.ndarray]) -> np.ndarray:
        """(n, m*C) log-probabilities, floored at 1e-6 to keep the features bounded."""
        return np.hstack([np.log(np.clip(clean_probs(p), 1e-6, None)) for p in P])

    def _model(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)

    def fit(self, P: list[np.ndarray], y: np.ndarray) -> StackBlender:
        from sklearn.preprocessing import StandardScaler

        self.n_classes_ = P[0].shape[1]
        if self.task == "multilabel":
            self.models_ = []
            for c in range(self.n_classes_):
                X = _logits(P, c)
                model = self._model().fit(X, y[:, c]) if 0 < y[:, c].sum() < len(y) else None
                self.models_.append((model, float(y[:, c].mean())))  # constant when one-sided
            return self
        X = self.features(P)
        self.scaler_ = StandardScaler().fit(X)  # standardised: lbfgs converges ~4x faster
        self.model_ = self._model()
        self.model_.fit(self.scaler_.transform(X), y)
        self.coef_, self.intercept_ = self.model_.coef_, self.model_.intercept_
        return self

    def predict_proba(self, P: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(P[0]), self.n_classes_))  # classes absent from fit stay at ~0
        if self.task == "multilabel":
            for c, (model, rate) in enumerate(self.models_):
                out[:, c] = model.predict_proba(_logits(P, c))[:, 1] if model else rate
            return _norm(out, self.task)
        X = self.scaler_.transform(self.features(P))
        out[:, self.model_.classes_] = self.model_.predict_proba(X)
        return clean_probs(out)


def _logits(P: list[np.ndarray], c: int) -> np.ndarray:
    """(n, m) the members' log-odds of class c, bounded (probabilities clipped to [1e-6, 1-1e-6])."""
    q = np.stack([np.clip(p[:, c], 1e-6, 1 - 1e-6) for p in P], axis=1)
    return np.log(q / (1 - q))


def make_blender(method: str, metric: str = "accuracy", task: str = "multiclass",
                 classes: list[str] | None = None, random_state: int = 0):
    """A fresh, unfitted blender for `method` (one of METHODS) optimising `metric`."""
    if method == "mean":
        return MeanBlender(metric, task, classes)
    if method == "weighted":
        return WeightedBlender(metric, task, classes)
    if method == "greedy":
        return GreedyBlender(metric, task, classes)
    if method == "stack":
        return StackBlender(random_state=random_state, task=task)
    raise KitError(f"--method {method}: unknown; choose one of {', '.join([*METHODS, 'best'])}")


def honest_oof(method: str, P: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
               metric: str = "accuracy", task: str = "multiclass",
               classes: list[str] | None = None) -> np.ndarray:
    """(n, C) nested-CV predictions: for each fold k, fit on rows of the other folds, predict k."""
    out = np.zeros_like(P[0], dtype=float)
    for k in np.unique(folds):
        held = folds == k
        model = make_blender(method, metric, task, classes).fit([p[~held] for p in P], y[~held])
        out[held] = model.predict_proba([p[held] for p in P])
    return out


def scores(metric: str, y: np.ndarray, p: np.ndarray, task: str,
           classes: list[str] | None = None) -> dict:
    """{metric, "accuracy", "log_loss"}: what the leaderboard shows of one set of predictions."""
    return {m: metrics.score(m, y, p, task, classes)
            for m in dict.fromkeys([metric, "accuracy", "log_loss"])}


def evaluate(method: str, P: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
             T: list[np.ndarray], metric: str = "accuracy", task: str = "multiclass",
             classes: list[str] | None = None) -> dict:
    """One method: honest OOF (nested CV) and in-sample scores ({metric, accuracy, log_loss}),
    and the all-rows model's test predictions."""
    honest = honest_oof(method, P, y, folds, metric, task, classes)
    model = make_blender(method, metric, task, classes).fit(P, y)
    return {"method": method, "honest": scores(metric, y, honest, task, classes),
            "insample": scores(metric, y, model.predict_proba(P), task, classes),
            "oof": honest, "test": model.predict_proba(T), "model": model}
