"""metrics.py: each metric against a value computed by hand, decision rules, names, OOF scores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import KitError
from kaggle_kit.metrics import (
    check_metric,
    competition_target,
    decide,
    encode_targets,
    higher_is_better,
    oof_scores,
    optimised,
    parse_metric,
    score,
)


def test_accuracy_and_log_loss_by_hand():
    p = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    y = np.array([0, 1, 0])
    assert score("accuracy", y, p) == pytest.approx(2 / 3)
    assert score("log_loss", y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.3)) / 3)
    # a certain wrong answer costs -log(1e-15) = 34.5 (Kaggle's floor), not infinity
    assert score("log_loss", np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(34.5388, abs=1e-3)


def test_multilabel_log_loss_is_mean_binary_cross_entropy():
    y = np.array([[1, 0]])
    assert score("log_loss", y, np.array([[0.9, 0.2]]), "multilabel") == pytest.approx(
        -(math.log(0.9) + math.log(0.8)) / 2)


def test_roc_auc_binary_by_hand():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    p = np.stack([1 - p1, p1], axis=1)
    assert score("roc_auc", np.array([0, 0, 1, 1]), p, "binary") == pytest.approx(0.75)
    assert math.isnan(score("roc_auc", np.array([1, 1, 1, 1]), p, "binary"))  # one class: undefined


def test_macro_f1_by_hand():
    # class 0: P=R=1/2 -> F1 0.5; class 1: P=2/3, R=1 -> 0.8; class 2: never predicted -> 0
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    p = np.eye(3)[pred] * 0.8 + 0.2 / 3
    assert score("macro_f1", y, p) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_qwk_by_hand_on_numeric_class_values():
    # ratings 0,1,2,3; predicted 0,1,2,2: sum W*O = 1, sum W*E = 8 -> kappa = 1 - 1/8
    y, pred = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2])
    assert score("qwk", y, np.eye(4)[pred]) == pytest.approx(0.875)
    # classes are sorted as strings ("10" before "2"): qwk must order them by value
    classes = ["0", "1", "10", "2"]
    y_s = np.array([classes.index(v) for v in ("0", "1", "2", "10")])
    pred_s = np.array([classes.index(v) for v in ("0", "1", "2", "2")])
    assert score("qwk", y_s, np.eye(4)[pred_s], classes=classes) == pytest.approx(0.875)


def test_map_at_5_by_hand():
    # true class ranked 1st -> 1, 3rd -> 1/3, 6th (outside the top 5) -> 0
    p = np.array([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02],
                  [0.3, 0.32, 0.25, 0.08, 0.03, 0.02],
                  [0.01, 0.3, 0.3, 0.2, 0.1, 0.09]])
    y = np.array([0, 2, 0])
    assert score("map@5", y, p) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert score("map@1", y, p) == pytest.approx(1 / 3)
    assert decide("map@5", p, "multiclass")[1].tolist() == [1, 0, 2, 3, 4]


def test_f2_samples_and_macro_auc_multilabel_by_hand():
    Y = np.array([[1, 1, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.1, 0.6],   # predicts {0, 2}: P = R = 1/2 -> F2 = 0.5
                  [0.2, 0.3, 0.1]])  # nothing >= 0.5: the top class {1} -> F2 = 0
    assert decide("f2_samples", p, "multilabel").tolist() == [[1, 0, 1], [0, 1, 0]]
    assert score("f2_samples", Y, p, "multilabel") == pytest.approx(0.25)
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.3], [0.2, 0.2, 0.8], [0.4, 0.3, 0.1], [0.5, 0.4, 0.2]])
    # column 0: 3 of 4 pairs right; column 1 has no positive (skipped); column 2: 4 of 4
    assert score("macro_auc", Y, p, "multilabel") == pytest.approx((0.75 + 1.0) / 2)


def test_names_direction_and_one_line_errors():
    assert parse_metric("map@5") == ("map@k", 5) and parse_metric("f2_samples") == ("fbeta_samples", 2.0)
    assert not higher_is_better("log_loss") and higher_is_better("roc_auc") and higher_is_better("qwk")
    assert optimised("accuracy") == "log_loss" and optimised("roc_auc") == "roc_auc"
    for bad in ("auc", "map@0", "f0_samples", ""):
        with pytest.raises(KitError, match=r"^metric '.*': unknown; choose one of accuracy, log_loss") as e:
            score(bad, np.array([0]), np.array([[1.0]]))
        assert "\n" not in str(e.value)
    with pytest.raises(KitError, match="multi-label metric"):
        check_metric("f2_samples", "multiclass")
    with pytest.raises(KitError, match=r"^data/x/competition.json: metric 'roc-auc': unknown"):
        competition_target({"metric": "roc-auc"}, "data/x/competition.json")
    assert competition_target({}) == ("multiclass", "accuracy")  # files fetched before the keys


def test_encode_targets_joins_by_id_and_reads_label_sets():
    labels = pd.Series(["b a", "c", ""], index=["2", "1", "3"])
    y = encode_targets(labels, pd.Index(["1", "2", "3"]), ["a", "b", "c"], "multilabel")
    assert y.tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(KitError, match=r"labels \['z'\] are not in the classes"):
        encode_targets(pd.Series(["z"], index=["1"]), pd.Index(["1"]), ["a"], "multilabel")


def test_oof_scores_report_the_competition_metric_per_fold():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    p1 = np.array([0.2, 0.9, 0.95, 0.7, 0.1, 0.4, 0.3, 0.8])
    oof = pd.DataFrame({"fold": [0, 0, 0, 0, 1, 1, 1, 1], "neg": 1 - p1, "pos": p1},
                       index=pd.Index([f"{i}" for i in range(8)], name="Id"))
    labels = pd.Series(np.array(["neg", "pos"])[y], index=oof.index)
    s = oof_scores(oof, labels, ["neg", "pos"], "roc_auc", "binary")
    # each positive is above 3 of the 4 negatives (all below 0.95) -> 12/16
    assert s["cv"]["roc_auc"] == pytest.approx(12 / 16)
    folds = {f["fold"]: f["roc_auc"] for f in s["per_fold"]}
    assert folds == {0: pytest.approx(0.5), 1: pytest.approx(1.0)}
    assert s["cv"]["roc_auc_std"] == pytest.approx(0.25)
    assert s["cv"]["accuracy"] == pytest.approx(6 / 8) and "log_loss" in s["cv"]
