"""metrics.py: each metric against a value computed by hand, decision rules, names, OOF scores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import KitError
from kaggle_kit.metrics import (
    better,
    check_metric,
    competition_target,
    confusion,
    cv_score,
    decide,
    encode_targets,
    higher_is_better,
    oof_scores,
    optimised,
    parse_metric,
    per_class_recall,
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


# ----------------------------------------------------------------------------- edge cases
# (added for the mutation score, issue 21: each pins a behaviour a planted bug left untested)


def test_error_lists_every_metric_name_and_the_tasks():
    with pytest.raises(KitError, match=r"choose one of accuracy, log_loss, roc_auc, macro_auc, "
                                       r"macro_f1, qwk, map@k, f<beta>_samples \(e\.g\."):
        parse_metric("auc")
    with pytest.raises(KitError, match=r"^task 'regression': unknown; choose one of multiclass, "
                                       r"binary, multilabel$"):
        check_metric("accuracy", "regression")


def test_fbeta_names_parse_their_beta():
    assert parse_metric("f1_samples") == ("fbeta_samples", 1.0)
    assert parse_metric("f0.5_samples") == ("fbeta_samples", 0.5)
    assert parse_metric("map@12") == ("map@k", 12)
    assert parse_metric("macro_auc") == ("macro_auc", None)
    for bad in ("map@05", "f_samples", "fx_samples", "map@k", "MAP@5", "accuracy "):
        with pytest.raises(KitError):
            parse_metric(bad)


def test_check_metric_pairs_metrics_with_tasks():
    for metric, task in (("roc_auc", "binary"), ("f2_samples", "multilabel"), ("qwk", "multiclass"),
                         ("macro_auc", "multilabel"), ("map@5", "multiclass"), ("log_loss", "binary")):
        check_metric(metric, task)  # accepted
    with pytest.raises(KitError, match=r"^metric qwk: needs one ordered class per image, but the "
                                       r"task is multilabel"):
        check_metric("qwk", "multilabel")
    with pytest.raises(KitError, match="multi-label metric, but the task is binary"):
        check_metric("f1_samples", "binary")
    assert competition_target({"task": "multilabel", "metric": "f2_samples"}) == (
        "multilabel", "f2_samples")
    assert competition_target({"task": "binary"}) == ("binary", "accuracy")
    with pytest.raises(KitError, match=r"^competition.json: metric qwk: needs one ordered class"):
        competition_target({"task": "multilabel", "metric": "qwk"})


def test_higher_is_better_for_every_metric_but_log_loss():
    for m in ("accuracy", "roc_auc", "macro_auc", "macro_f1", "qwk", "map@5", "f2_samples"):
        assert higher_is_better(m), m
        assert optimised(m) == m or m == "accuracy"
    assert not higher_is_better("log_loss") and optimised("log_loss") == "log_loss"


def test_better_is_strict_follows_the_direction_and_never_prefers_nan():
    nan = float("nan")
    assert better("accuracy", 0.6, 0.5) and not better("accuracy", 0.5, 0.6)
    assert not better("accuracy", 0.5, 0.5) and not better("log_loss", 0.5, 0.5)
    assert better("log_loss", 0.4, 0.5) and not better("log_loss", 0.5, 0.4)
    assert not better("accuracy", nan, 0.5) and better("accuracy", 0.5, nan)
    assert not better("log_loss", nan, nan)


def test_empty_rows_score_nan_and_one_row_scores():
    for m in ("accuracy", "log_loss", "roc_auc", "map@5"):
        assert math.isnan(score(m, np.zeros(0, dtype=int), np.zeros((0, 3)))), m
    assert score("accuracy", np.array([2]), np.array([[0.1, 0.2, 0.7]])) == 1.0


def test_log_loss_renormalises_rows_and_floors_multilabel_cells():
    # rows that do not sum to 1 are renormalised: [2, 1, 1] -> [0.5, 0.25, 0.25]
    assert score("log_loss", np.array([0]), np.array([[2.0, 1.0, 1.0]])) == pytest.approx(math.log(2))
    assert score("log_loss", np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]),
                 "binary") == pytest.approx(math.log(2))
    # multilabel: a certain wrong cell costs -log(1e-15) either way, not infinity
    y = np.array([[0, 1]])
    assert score("log_loss", y, np.array([[1.0, 0.0]]), "multilabel") == pytest.approx(
        -math.log(1e-15), abs=1e-3)
    assert score("log_loss", y, np.array([[0.0, 1.0]]), "multilabel") == pytest.approx(0, abs=1e-12)
    assert score("log_loss", np.array([[1, 0]]), np.array([[0.5, 0.5]]),
                 "multilabel") == pytest.approx(math.log(2))


def test_log_loss_and_auc_match_scikit_learn_on_random_rows():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    y = rng.integers(0, 4, size=50)
    assert score("log_loss", y, p) == pytest.approx(log_loss(y, p, labels=range(4)))
    assert score("roc_auc", y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert score("macro_auc", y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))


def test_two_column_auc_uses_the_positive_column():
    # columns that do not sum to 1 (a multiclass run of 2 classes): the AUC of column 1, as binary
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.1, 0.1], [0.9, 0.4], [0.2, 0.35], [0.3, 0.8]])
    assert score("roc_auc", y, p, "multiclass") == pytest.approx(0.75)
    assert score("roc_auc", y, p, "binary") == pytest.approx(0.75)
    # multilabel with 2 classes: the mean of both columns' AUCs (column 0: 2 of 4 pairs right)
    Y = np.stack([1 - y, y], axis=1)
    assert score("macro_auc", Y, p, "multilabel") == pytest.approx((0.5 + 0.75) / 2)


def test_auc_is_nan_for_one_class_and_skips_constant_columns():
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning

    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    p = np.stack([1 - p1, p1], axis=1)
    with warnings.catch_warnings():  # kit decides NaN itself, never asks sklearn (a warning per fold)
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert math.isnan(score("roc_auc", np.array([0, 0, 0, 0]), p, "binary"))
        assert math.isnan(score("roc_auc", np.array([1, 1, 1, 1]), p, "binary"))
    p3 = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    assert math.isnan(score("roc_auc", np.array([0, 0, 0]), p3))  # no class has both
    # multilabel: column 0 all positive and column 2 all negative are skipped; column 1: 2 of 2
    Y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0]])
    assert score("macro_auc", Y, p3, "multilabel") == pytest.approx(0.5)  # 0.2,0.4 vs 0.3: 1 of 2


def test_decide_threshold_is_inclusive_and_ties_go_to_the_first_class():
    p = np.array([[0.5, 0.2, 0.5], [0.1, 0.49, 0.3]])
    assert decide("f2_samples", p, "multilabel").tolist() == [[1, 0, 1], [0, 1, 0]]
    assert decide("accuracy", p, "multiclass").tolist() == [0, 1]
    assert decide("map@2", np.array([[0.2, 0.4, 0.4]]), "multiclass").tolist() == [[1, 2]]
    assert decide("map@5", np.array([[0.2, 0.8]]), "multiclass").tolist() == [[1, 0]]  # k > C
    assert decide("f2_samples", p, "multilabel", threshold=0.25).tolist() == [[1, 0, 1], [0, 1, 1]]


def test_map_at_k_multilabel_and_rows_without_a_true_class():
    p = np.array([[0.5, 0.4, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    Y = np.array([[1, 0, 1, 1],   # top-2 = 0, 1: hits 1, 0 -> (1/1) / min(3, 2) = 0.5
                  [1, 0, 1, 0],   # top-2 = 3, 2: hits 0, 1 -> (1/2) / 2 = 0.25
                  [0, 0, 0, 0]])  # no true class: 0
    assert score("map@2", Y, p, "multilabel") == pytest.approx((0.5 + 0.25 + 0) / 3)
    # map@3 of row 0: hits 1, 0, 1 -> (1 + 2/3) / 3
    assert score("map@3", Y[:1], p[:1], "multilabel") == pytest.approx((1 + 2 / 3) / 3)


def test_macro_f1_and_accuracy_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=40)
    y = rng.integers(0, 5, size=40)
    assert score("macro_f1", y, p) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert score("accuracy", y, p) == pytest.approx(accuracy_score(y, p.argmax(1)))
    Y = np.array([[1, 0, 1], [0, 1, 0]])
    assert score("accuracy", Y, np.array([[0.9, 0.1, 0.7], [0.6, 0.8, 0.1]]), "multilabel") == 0.5
    # F1 samples (beta 1) of row {0, 2} vs predicted {0}: P 1, R 1/2 -> 2/3; row 2 exact -> 1
    assert score("f1_samples", Y, np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.1]]),
                 "multilabel") == pytest.approx((2 / 3 + 1) / 2)


def test_qwk_orders_named_classes_by_position_and_counts_absent_ratings():
    classes = ["low", "mid", "high"]  # not numbers: the list order is the rating order
    y, pred = np.array([0, 1, 2]), np.array([0, 2, 2])
    # counts O: (0,0), (1,2), (2,2); W = d^2/4: sum W*O = 1/4; E = outer([1,1,1], [1,0,2]) / 3:
    # sum W*E = 2/3 + 1/4 + 1/3 = 5/4 -> kappa = 1 - (1/4) / (5/4) = 0.8
    assert score("qwk", y, np.eye(3)[pred], classes=classes) == pytest.approx(0.8)
    assert score("qwk", y, np.eye(3)[pred], classes=["2", "1", "0"]) == pytest.approx(0.8)
    # class "1" in neither y nor pred still counts on the rating scale (Kaggle's N ratings):
    # ratings 0, 2, 3 vs 0, 3, 3 are 0, 2, 3 apart, not 0, 1, 2
    from sklearn.metrics import cohen_kappa_score

    y4, pred4 = np.array([0, 2, 3]), np.array([0, 3, 3])
    want = cohen_kappa_score(y4, pred4, weights="quadratic", labels=[0, 1, 2, 3])
    assert want != pytest.approx(cohen_kappa_score(y4, pred4, weights="quadratic"))
    assert score("qwk", y4, np.eye(4)[pred4]) == pytest.approx(want)


def test_encode_targets_names_the_first_unknown_id_and_label():
    labels = pd.Series(["a", "b"], index=[1, 2])  # int Ids are matched as strings
    assert encode_targets(labels, pd.Index(["2", "1"]), ["a", "b"]).tolist() == [1, 0]
    with pytest.raises(KitError, match=r"^oof: Id 9 has no training label \(1 Ids unknown\)"):
        encode_targets(labels, pd.Index(["1", "9"]), ["a", "b"])
    with pytest.raises(KitError, match=r"^test: labels \['c'\] are not in the classes"):
        encode_targets(pd.Series(["c"], index=["1"]), pd.Index(["1"]), ["a", "b"], source="test")


def test_cv_score_reads_the_summary_metric():
    assert cv_score({"metric": "roc_auc", "cv": {"roc_auc": 0.75, "accuracy": 0.5}}) == ("roc_auc", 0.75)
    assert cv_score({"cv": {"accuracy": 0.5}}) == ("accuracy", 0.5)  # older runs
    assert cv_score({"metric": "qwk", "cv": {}}) == ("qwk", None)
    assert cv_score({}) == ("accuracy", None)


def test_oof_scores_skip_undefined_folds_and_recall_per_class():
    y = np.array([0, 0, 0, 0, 0, 1, 0, 1])  # fold 0 holds one class only: AUC undefined there
    p1 = np.array([0.2, 0.9, 0.3, 0.1, 0.1, 0.4, 0.3, 0.8])
    oof = pd.DataFrame({"fold": [0, 0, 0, 0, 1, 1, 1, 1], "neg": 1 - p1, "pos": p1},
                       index=pd.Index([str(i) for i in range(8)], name="Id"))
    labels = pd.Series(np.array(["neg", "pos"])[y], index=oof.index)
    s = oof_scores(oof, labels, ["neg", "pos"], "roc_auc", "binary")
    folds = {f["fold"]: f for f in s["per_fold"]}
    assert math.isnan(folds[0]["roc_auc"]) and folds[1]["roc_auc"] == pytest.approx(1.0)
    assert s["cv"]["roc_auc_std"] == 0.0  # the one defined fold
    assert folds[0]["accuracy"] == 0.75 and folds[1]["accuracy"] == 0.75
    assert s["cv"]["accuracy_std"] == 0.0 and s["cv"]["accuracy"] == 0.75
    assert set(s["cv"]) == {"accuracy", "log_loss", "roc_auc", "accuracy_std", "roc_auc_std"}
    assert s["per_class"] == {"neg": pytest.approx(5 / 6), "pos": pytest.approx(0.5)}
    all_neg = pd.Series("neg", index=oof.index)  # AUC undefined on every fold: std NaN
    s = oof_scores(oof, all_neg, ["neg", "pos"], "roc_auc", "binary")
    assert math.isnan(s["cv"]["roc_auc_std"]) and s["per_class"]["pos"] is None
    # no metric given (runs fetched before competition.json named one): accuracy
    assert set(oof_scores(oof, labels, ["neg", "pos"])["cv"]) == {"accuracy", "log_loss",
                                                                  "accuracy_std"}
    with pytest.raises(KitError, match=r"^oof: columns \['fold'\] missing; expected fold"):
        oof_scores(oof.drop(columns="fold"), labels, ["neg", "pos"])


def test_per_class_recall_and_confusion_by_hand():
    y = np.array([0, 0, 1, 2])
    p = np.array([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]])
    assert per_class_recall(y, p, ["a", "b", "c", "d"]) == {"a": 0.5, "b": 1.0, "c": 1.0, "d": None}
    assert confusion(p, y, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    Y = np.array([[1, 1, 0], [1, 0, 0]])
    q = np.array([[0.9, 0.2, 0.6], [0.4, 0.3, 0.1]])  # predicted {0, 2}, {0} (argmax)
    assert per_class_recall(Y, q, ["a", "b", "c"], "multilabel") == {"a": 1.0, "b": 0.0, "c": None}
    assert per_class_recall(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"]) == {
        "a": None, "b": None}
