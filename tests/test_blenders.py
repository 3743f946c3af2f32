"""blenders.py unit by unit: known weights, the log-loss gradient, greedy selection against a
written-out Caruana loop, the stack model against scikit-learn, honest OOF fold by fold.
(The blend command on disk is tests/test_blend.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kaggle_kit import KitError
from kaggle_kit.blenders import (
    GreedyBlender,
    MeanBlender,
    StackBlender,
    WeightedBlender,
    _linear,
    _logits,
    _loss,
    _norm,
    _simplex_log_loss,
    _softmax,
    evaluate,
    honest_oof,
    make_blender,
    objective,
    scores,
)
from kaggle_kit.metrics import score
from tests.fx_blend import member_probs


def _y(n: int = 300, c: int = 4) -> np.ndarray:
    return np.arange(n) % c


def _multilabel(n: int = 300, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.4).astype(int)
    P = [1 / (1 + np.exp(-(s * (2 * y - 1) + rng.normal(0, 1.5, y.shape)))) for s in (0.3, 1.5, 1.0)]
    return y, P


def test_objective_and_loss_follow_the_metric_direction():
    assert objective("accuracy") == "log_loss" and objective("roc_auc") == "roc_auc"
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    assert _loss("accuracy", y, p, "binary") == -0.5  # higher is better: negated
    assert _loss("log_loss", y, p, "binary") == pytest.approx(score("log_loss", y, p, "binary"))
    assert _loss("roc_auc", np.array([1, 1, 1, 1]), p, "binary") == math.inf  # NaN -> +inf


def test_norm_and_linear_blend_by_hand():
    a = np.array([[2.0, 1.0, 1.0]])  # renormalised to [0.5, 0.25, 0.25]
    b = np.array([[0.0, 0.0, 1.0]])  # floored at EPS
    np.testing.assert_allclose(_linear([a, b], np.array([0.5, 0.5])), [[0.25, 0.125, 0.625]])
    np.testing.assert_allclose(_linear([a, b], np.array([1.0, 0.0])), [[0.5, 0.25, 0.25]])
    # multilabel: cells are independent, clipped to [EPS, 1 - EPS], never renormalised
    m = np.array([[1.0, 0.0, 0.6]])
    q = _norm(m, "multilabel")
    assert q[0, 0] < 1.0 and q[0, 1] > 0.0 and q[0, 2] == 0.6
    np.testing.assert_allclose(_linear([m, m * 0.5], np.array([0.5, 0.5]), "multilabel"),
                               [[0.75, 1e-15, 0.45]], atol=1e-15)
    assert MeanBlender().fit([a, b], None).predict_proba([a, b]).tolist() == \
        _linear([a, b], np.array([0.5, 0.5])).tolist()


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_simplex_log_loss_value_and_gradient(task):
    """The loss is the blend's log loss (metrics.score) and its gradient the finite difference."""
    if task == "multiclass":
        y = _y(200)
        P = [member_probs(y, 4, s, seed=i) for i, s in enumerate((0.5, 1.5, 1.0))]
    else:
        y, P = _multilabel(200)
    f = _simplex_log_loss(P, y, task)
    w = np.array([0.2, 0.5, 0.3])
    value, grad = f(w)
    assert value == pytest.approx(score("log_loss", y, _linear(P, w, task), task), rel=1e-9)
    h = 1e-6
    num = [(f(w + h * e)[0] - f(w - h * e)[0]) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)


def test_weighted_keeps_the_log_loss_weights_under_accuracy_and_sums_to_one():
    y = _y(400)
    P = [member_probs(y, 4, s, seed=i) for i, s in enumerate((0.0, 1.0, 2.0))]
    w_acc = WeightedBlender("accuracy").fit(P, y).weights_
    w_ll = WeightedBlender("log_loss").fit(P, y).weights_
    np.testing.assert_allclose(w_acc, w_ll)
    assert w_acc.sum() == pytest.approx(1.0) and (w_acc >= 0).all() and w_acc[0] < 0.05


def test_weighted_refines_on_the_competition_metric():
    """Member 0 ranks perfectly but stays near 0.5 (0.6 / 0.4 +- 0.05); member 1 is confident and
    right 80% of the time. Log loss wants mostly member 1 (0.61); AUC wants member 0."""
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    a1 = 0.5 + 0.1 * (2 * y - 1) + rng.uniform(-0.05, 0.05, 400)
    right = rng.random(400) < 0.8
    b1 = np.where(right == (y == 1), 0.9, 0.1)
    P = [np.stack([1 - a1, a1], 1), np.stack([1 - b1, b1], 1)]
    w_ll = WeightedBlender("log_loss", "binary").fit(P, y).weights_
    auc = WeightedBlender("roc_auc", "binary").fit(P, y)
    assert w_ll[1] > 0.5
    refined = score("roc_auc", y, auc.predict_proba(P), "binary")
    assert refined == 1.0 and score("roc_auc", y, _linear(P, w_ll), "binary") < 0.97
    assert auc.weights_.sum() == pytest.approx(1.0)


def test_weighted_keeps_the_log_loss_weights_when_refining_finds_nothing():
    y = _y(200, 2)
    P = [member_probs(y, 2, 8.0, seed=1), member_probs(y, 2, 8.0, seed=2)]  # both rank perfectly
    assert score("roc_auc", y, P[0], "binary") == 1.0
    b = WeightedBlender("roc_auc", "binary").fit(P, y)
    np.testing.assert_allclose(b.weights_, WeightedBlender("log_loss", "binary").fit(P, y).weights_)


def test_softmax_is_stable_for_large_logits():
    np.testing.assert_allclose(_softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])
    np.testing.assert_allclose(_softmax(np.array([0.0, math.log(3)])), [0.25, 0.75])


def _caruana(P, y, metric, task, n_iter):
    """Ensemble selection written out: add the member whose addition scores best (first on
    ties); return the counts of the best prefix."""
    goal = objective(metric)
    sign = -1 if goal != "log_loss" else 1
    counts, best, best_counts = np.zeros(len(P)), math.inf, None
    for _ in range(n_iter):
        losses = []
        for j in range(len(P)):
            c = counts.copy()
            c[j] += 1
            losses.append(sign * score(goal, y, _linear(P, c / c.sum(), task), task))
        j = int(np.argmin(losses))
        counts[j] += 1
        if losses[j] < best - 1e-12:
            best, best_counts = losses[j], counts.copy()
    return best_counts


@pytest.mark.parametrize("metric, task", [("accuracy", "multiclass"), ("macro_f1", "multiclass"),
                                          ("log_loss", "multilabel")])
def test_greedy_matches_ensemble_selection_written_out(metric, task):
    if task == "multilabel":
        y, P = _multilabel(150)
    else:
        y = _y(150)
        P = [member_probs(y, 4, s, seed=i) for i, s in enumerate((0.8, 1.2, 1.0))]
    g = GreedyBlender(metric, task, n_iter=12) if metric != "accuracy" else GreedyBlender(n_iter=12)
    g.fit(P, y)  # (accuracy, multiclass: the defaults)
    want = _caruana(P, y, metric, task, 12)
    assert g.counts_.tolist() == want.tolist() and want.sum() > 1
    np.testing.assert_allclose(g.weights_, want / want.sum())
    assert GreedyBlender().n_iter == 50


def test_greedy_falls_back_to_equal_weights_when_the_objective_is_undefined():
    y = np.ones(40, dtype=int)  # one class: AUC undefined on every blend
    P = [member_probs(y, 2, 1.0, seed=s) for s in (1, 2, 3)]
    g = GreedyBlender("roc_auc", "binary", n_iter=5).fit(P, y)
    np.testing.assert_allclose(g.weights_, [1 / 3] * 3)


def test_stack_is_logistic_regression_on_standardised_log_probs():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y = _y(200)
    P = [member_probs(y, 4, s, seed=i) for i, s in enumerate((1.0, 1.5))]
    P[0][0] = [1.0, 0.0, 0.0, 0.0]  # a zero probability: floored at 1e-6 before the log
    X = StackBlender.features(P)
    assert X.shape == (200, 8) and X[0, 1] == pytest.approx(math.log(1e-6), rel=1e-6)
    np.testing.assert_allclose(X[1:, :4], np.log(P[0][1:] / P[0][1:].sum(1, keepdims=True)))
    sc = StandardScaler().fit(X)
    ref = LogisticRegression(C=0.03, max_iter=2000).fit(sc.transform(X), y)
    s = StackBlender().fit(P, y)
    np.testing.assert_allclose(s.coef_, ref.coef_, atol=1e-6)
    np.testing.assert_allclose(s.predict_proba(P), ref.predict_proba(sc.transform(X)), atol=1e-6)


def test_stack_multilabel_fits_one_model_per_class_and_rates_for_constant_classes():
    from sklearn.linear_model import LogisticRegression

    y, P = _multilabel(120)
    y[:, 1], y[:, 2] = 0, 1  # class 1 never present, class 2 always
    P[0][0, 0] = 1.0  # clipped to 1 - 1e-6 before the log-odds
    L = _logits(P, 0)
    assert L.shape == (120, 3) and L[0, 0] == pytest.approx(math.log((1 - 1e-6) / 1e-6))
    np.testing.assert_allclose(L[1:, 1], np.log(P[1][1:, 0] / (1 - P[1][1:, 0])))
    s = StackBlender(task="multilabel").fit(P, y)
    out = s.predict_proba(P)
    ref = LogisticRegression(C=0.03, max_iter=2000).fit(L, y[:, 0]).predict_proba(L)[:, 1]
    np.testing.assert_allclose(out[:, 0], ref, atol=1e-6)
    assert (out[:, 1] == 1e-15).all() and (out[:, 2] == 1 - 1e-15).all()


def test_make_blender_builds_each_method():
    m = make_blender("weighted")  # defaults: accuracy (log loss optimised), multiclass
    assert type(m) is WeightedBlender and (m.metric, m.task, m.classes) == ("accuracy", "multiclass", None)
    assert type(make_blender("mean")) is MeanBlender
    w = make_blender("weighted", "qwk", "multiclass", ["0", "1"])
    assert type(w) is WeightedBlender and (w.metric, w.task, w.classes) == ("qwk", "multiclass", ["0", "1"])
    assert type(make_blender("greedy", "roc_auc", "binary")) is GreedyBlender
    s = make_blender("stack", task="multilabel", random_state=3)
    assert type(s) is StackBlender and (s.task, s.random_state, s.C) == ("multilabel", 3, 0.03)
    with pytest.raises(KitError, match=r"^--method median: unknown; choose one of mean, weighted, "
                                       r"greedy, stack, best$"):
        make_blender("median")


def test_honest_oof_predicts_each_fold_from_a_model_fit_on_the_others():
    y = _y(160)
    P = [member_probs(y, 4, s, seed=i) for i, s in enumerate((0.2, 1.5))]
    folds = np.arange(160) % 3
    out = honest_oof("weighted", P, y, folds)
    for k in range(3):
        held = folds == k
        m = WeightedBlender().fit([p[~held] for p in P], y[~held])
        np.testing.assert_allclose(out[held], m.predict_proba([p[held] for p in P]))


def test_scores_and_evaluate_report_the_metric_accuracy_and_log_loss():
    y = _y(120, 2)
    P = [member_probs(y, 2, s, seed=i) for i, s in enumerate((0.5, 2.0))]
    p = _linear(P, np.array([0.5, 0.5]))
    s = scores("roc_auc", y, p, "binary")
    assert list(s) == ["roc_auc", "accuracy", "log_loss"]
    assert s == {m: score(m, y, p, "binary") for m in s}
    assert list(scores("accuracy", y, p, "binary")) == ["accuracy", "log_loss"]
    T = [member_probs(y[:10], 2, 1.0, seed=9), member_probs(y[:10], 2, 1.0, seed=8)]
    r = evaluate("weighted", P, y, np.arange(120) % 4, T)  # defaults: accuracy, multiclass
    assert list(r["honest"]) == ["accuracy", "log_loss"] and r["model"].metric == "accuracy"
    r = evaluate("stack", P, y, np.arange(120) % 4, T, "roc_auc", "binary")
    model = StackBlender(task="binary").fit(P, y)
    np.testing.assert_allclose(r["test"], model.predict_proba(T))
    np.testing.assert_allclose(r["oof"], honest_oof("stack", P, y, np.arange(120) % 4, "roc_auc",
                                                    "binary"))
    assert r["insample"] == scores("roc_auc", y, model.predict_proba(P), "binary")
    assert r["honest"] == scores("roc_auc", y, r["oof"], "binary") and r["method"] == "stack"
