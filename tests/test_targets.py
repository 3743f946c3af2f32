"""Any target kind end to end on tiny generated competitions (tests/fx_targets.py): binary (AUC CV,
P(positive) submission), multilabel (sigmoid head, F2 CV, label-set submission), top-k map@5,
qwk, macro F1, log-loss probability submissions, and `kit blend` optimising log loss and AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import KitError, metrics
from kaggle_kit.blend import blend
from kaggle_kit.report import report
from kaggle_kit.rundir import RunDir
from kaggle_kit.submission import SUBMIT_CLIP, build_submission, validate_submission
from kaggle_kit.workspace import CompetitionDir
from tests.conftest import REPO
from tests.fx_blend import make_run, member_probs
from tests.fx_targets import make_target_comp

# 1 epoch of the demo recipe's half-width ResNet-9 on 16 px images, seconds on a CPU
FAST = ["data.image_size=16", "train.batch_size=16", "train.epochs=1", "train.num_workers=0",
        "train.warmup_epochs=0"]


@pytest.fixture()
def train(tmp_path):
    """train(competition, *overrides, name) -> summary: the demo recipe on tmp_path/data."""
    import torch

    from kaggle_kit.train import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def _run(comp: str, *overrides: str, name: str = "r") -> dict:
        return run(REPO / "recipes" / "demo.yaml", [f"competition={comp}", *FAST, *overrides],
                   name=name, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")

    yield _run
    torch.set_num_threads(threads)


def _scored(run: RunDir, comp, metric: str, task: str) -> float:
    oof = run.read_oof(comp.classes)
    y = metrics.encode_targets(comp.folds().set_index("Id")["label"], oof.index, comp.classes, task)
    return metrics.score(metric, y, oof[comp.classes].to_numpy(), task, comp.classes)


def test_binary_end_to_end_auc_cv_and_positive_probability(train, tmp_path):
    comp = make_target_comp(tmp_path / "data", "bin", task="binary", metric="roc_auc",
                            classes=["cat", "dog"], kind="prob_positive", positive="dog",
                            never_oof=4)
    s = train("bin", "train.checkpoint=best")
    run = RunDir(tmp_path / "runs" / "r")
    assert (s["task"], s["metric"]) == ("binary", "roc_auc")
    assert s["cv"]["roc_auc"] == pytest.approx(_scored(run, comp, "roc_auc", "binary"))
    assert {"accuracy", "log_loss", "roc_auc_std"} <= set(s["cv"])
    assert all("roc_auc" in f for f in s["per_fold"])
    # fold -1 images train in every fold and are never OOF-scored; the summary says how many
    never = set(comp.folds().query("fold == -1")["Id"])
    assert len(never) == 4 and not never & set(run.read_oof().index)
    assert s["n_never_oof"] == 4 and any("4 images" in w for w in s["warnings"])
    assert len(run.read_oof()) == 60 and sorted(run.read_oof()["fold"].unique()) == [0, 1]
    sub = build_submission(run, comp)
    assert list(sub.columns) == ["id", "target"] and sub["id"].tolist() == comp.test_ids()
    assert np.allclose(sub["target"], run.read_test(comp.classes).loc[comp.test_ids(), "dog"])
    validate_submission(sub, comp, "sub.csv")
    assert f"OOF roc_auc {s['cv']['roc_auc']:.4f}" in report(run.root, data_dir=tmp_path / "data")
    from kaggle_kit.show import run_lines

    line = run_lines(s, tmp_path / "runs").splitlines()[0]
    assert f"CV roc_auc {s['cv']['roc_auc']:.4f}" in line and "accuracy" in line and "log loss" in line
    with pytest.raises(KitError, match=r"not probabilities \(numbers in \[0, 1\]\)"):
        validate_submission(sub.assign(target=1.5), comp, "sub.csv")


def test_multilabel_end_to_end_sigmoid_f2_and_label_sets(train, tmp_path):
    comp = make_target_comp(tmp_path / "data", "ml", task="multilabel", metric="f2_samples",
                            classes=["a", "b", "c", "d"], kind="labels", n_train=64)
    s = train("ml", "train.mixup=0.2", "train.mix_prob=0.5", "train.label_smoothing=0.1")
    run = RunDir(tmp_path / "runs" / "r")
    oof = run.read_oof(comp.classes)[comp.classes].to_numpy()
    assert not np.allclose(oof.sum(1), 1.0)  # independent sigmoid probabilities, not a softmax
    assert s["cv"]["f2_samples"] == pytest.approx(_scored(run, comp, "f2_samples", "multilabel"))
    sub = build_submission(run, comp)
    assert list(sub.columns) == ["id", "labels"]
    test = run.read_test(comp.classes).loc[comp.test_ids()].to_numpy()
    for row, p in zip(sub["labels"], test, strict=True):
        chosen = {c for c, q in zip(comp.classes, p, strict=True) if q >= metrics.THRESHOLD}
        assert set(row.split()) == (chosen or {comp.classes[int(p.argmax())]})
    validate_submission(sub, comp, "sub.csv")
    text = report(run.root, data_dir=tmp_path / "data")
    assert f"OOF f2_samples {s['cv']['f2_samples']:.4f}" in text and "worst F1 first" in text
    with pytest.raises(KitError, match="not .*distinct space-separated class values"):
        validate_submission(sub.assign(labels="a a"), comp, "sub.csv")
    with pytest.raises(KitError, match="augment.targeted: .* multilabel"):
        train("ml", "augment.targeted.classes=[a]", name="t")


def _hand_run(tmp_path, comp, name: str, signal: float, seed: int = 0) -> RunDir:
    """A finished-looking run of comp (fx_blend.make_run) with softmax probabilities."""
    return make_run(tmp_path / "runs", name, comp, signal=signal, seed=seed)


def test_top5_map_submission_and_validation(tmp_path):
    classes = [f"w{i}" for i in range(8)]
    comp = make_target_comp(tmp_path / "data", "whales", metric="map@5", classes=classes,
                            kind="labels", k=5, n_train=16, n_test=6)
    run = _hand_run(tmp_path, comp, "r", signal=1.0)
    sub = build_submission(run, comp)
    test = run.read_test(classes).loc[comp.test_ids()].to_numpy()
    assert sub["labels"].tolist() == [" ".join(np.array(classes)[np.argsort(-p)[:5]]) for p in test]
    validate_submission(sub, comp, "sub.csv")
    with pytest.raises(KitError, match="not at most 5 distinct"):
        validate_submission(sub.assign(labels=" ".join(classes[:6])), comp, "sub.csv")
    s = metrics.oof_scores(run.read_oof(classes), comp.folds().set_index("Id")["label"], classes,
                           "map@5")
    assert s["cv"]["map@5"] >= s["cv"]["accuracy"]  # map@5 credits ranks 2..5 too


@pytest.mark.parametrize("metric", ["qwk", "macro_f1"])
def test_label_metrics_are_the_cv_and_submission_uses_sample_values(tmp_path, metric):
    classes = ["0", "1", "10", "2"]  # integer class values, sorted as strings
    comp = make_target_comp(tmp_path / "data", "grades", metric=metric, classes=classes,
                            kind="label", n_train=40, n_test=8)
    run = _hand_run(tmp_path, comp, "r", signal=1.5)
    labels = comp.folds().set_index("Id")["label"]
    oof = run.read_oof(classes)
    s = metrics.oof_scores(oof, labels, classes, metric)
    y = metrics.encode_targets(labels, oof.index, classes)
    pred = oof[classes].to_numpy().argmax(1)
    from sklearn.metrics import cohen_kappa_score, f1_score

    value = np.array([0, 1, 10, 2])  # qwk weighs the classes' numeric order, 2 before 10
    expected = (cohen_kappa_score(value[y], value[pred], weights="quadratic") if metric == "qwk"
                else f1_score(y, pred, average="macro"))
    assert s["cv"][metric] == pytest.approx(expected)
    sub = build_submission(run, comp)
    assert set(sub["label"]) <= set(classes)
    validate_submission(sub, comp, "sub.csv")


def test_log_loss_probability_submission_is_clipped_and_named_as_the_sample(tmp_path):
    comp = make_target_comp(tmp_path / "data", "ll", metric="log_loss", classes=["0", "1", "2"],
                            kind="prob", class_names={"0": "Cat", "1": "Dog", "2": "Fox"},
                            prob_cols=["Dog", "Cat", "Fox"], n_train=12, n_test=4)
    run = _hand_run(tmp_path, comp, "r", signal=2.0)
    test = run.read_test(comp.classes)
    test.iloc[0] = [1.0, 0.0, 0.0]  # a certain prediction: log loss needs it clipped
    run.write_test(test, comp.classes)
    sub = build_submission(run, comp)
    assert list(sub.columns) == ["id", "Dog", "Cat", "Fox"]
    row = sub.set_index("id").loc[test.index[0]]
    assert row["Dog"] == pytest.approx(SUBMIT_CLIP / (1 + SUBMIT_CLIP), rel=1e-3)
    assert row["Cat"] == pytest.approx(1 - 2 * SUBMIT_CLIP, rel=1e-3)
    other = sub.set_index("id").loc[test.index[1]]  # another row keeps its values, per column
    assert other["Fox"] == pytest.approx(test.iloc[1]["2"], rel=1e-3)
    validate_submission(sub, comp, "sub.csv")


def test_probability_column_for_a_non_binary_target_is_refused(tmp_path):
    comp = make_target_comp(tmp_path / "data", "three", metric="log_loss",
                            classes=["a", "b", "c"], kind="prob_positive", positive="c",
                            n_train=12, n_test=4)
    run = _hand_run(tmp_path, comp, "r", signal=1.0)
    with pytest.raises(KitError, match=r"competition\.json: submission kind prob_positive .* needs "
                                       r"task binary .* got task multiclass"):
        build_submission(run, comp)


def _blend_comp(tmp_path, name: str, metric: str, task: str):
    comp = make_target_comp(tmp_path / "data", name, task=task, metric=metric,
                            classes=["neg", "pos"], kind="prob_positive" if task == "binary"
                            else "prob", positive="pos" if task == "binary" else None,
                            n_train=400, n_test=20, n_folds=4)
    return comp


@pytest.mark.parametrize("metric", ["log_loss", "roc_auc"])
def test_blend_optimises_the_competition_metric(tmp_path, metric):
    comp = _blend_comp(tmp_path, f"b_{metric}", metric, "binary")
    y = comp.folds()["label"].map({"neg": 0, "pos": 1}).to_numpy()
    good = _hand_run(tmp_path, comp, "good", signal=2.0, seed=1)
    noise = make_run(tmp_path / "runs", "noise", comp, oof=member_probs(y, 2, 0.0, seed=2))
    out = blend([good.root, noise.root], method="best", name="bl", runs_dir=tmp_path / "runs",
                data_dir=tmp_path / "data", submissions_dir=tmp_path / "subs")
    s = RunDir(tmp_path / "runs" / "bl").summary()
    assert s["metric"] == metric and f"honest OOF {metric}" in out
    methods = [r for r in s["leaderboard"] if r["kind"] == "method"]
    scores = [r["honest_score"] for r in s["leaderboard"]]
    # best first: ascending for log loss (lower is better), descending for AUC
    assert scores == sorted(scores, reverse=metrics.higher_is_better(metric))
    pick = min(methods, key=lambda r: -r["honest_score"] if metrics.higher_is_better(metric)
               else r["honest_score"])
    assert s["method"] == pick["name"]
    assert s["cv"][metric] == pytest.approx(pick["honest_score"])
    for r in methods:
        if r["name"] in ("weighted", "greedy"):
            assert r["weights"]["good"] > 0.9, r  # the metric's optimum: the informative member
    assert (tmp_path / "subs").is_dir() and len(list((tmp_path / "subs").glob("*.csv"))) == 1


def _ranker_and_calibrated(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two binary members: `ranker` orders the images almost perfectly but its probabilities hug
    0.5 (AUC ~1, log loss ~0.69); `calibrated` is honest about a weaker signal (AUC ~0.8, log
    loss ~0.5). Log loss prefers the second, AUC the first."""
    rng = np.random.default_rng(seed)
    s = 1 / (1 + np.exp(-(4.0 * (2 * y - 1) + rng.normal(size=len(y)))))
    ranker = 0.45 + 0.1 * s
    c = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(size=len(y)))))
    return np.stack([1 - ranker, ranker], 1), np.stack([1 - c, c], 1)


@pytest.mark.parametrize("metric, favoured", [("roc_auc", "ranker"), ("log_loss", "calibrated")])
def test_greedy_and_weighted_optimise_the_metric_not_a_proxy(tmp_path, metric, favoured):
    comp = _blend_comp(tmp_path, f"p_{metric}", metric, "binary")
    y = comp.folds()["label"].map({"neg": 0, "pos": 1}).to_numpy()
    ranker, calibrated = _ranker_and_calibrated(y)
    for name, p in (("ranker", ranker), ("calibrated", calibrated)):
        make_run(tmp_path / "runs", name, comp, oof=p)
    blend([tmp_path / "runs" / "ranker", tmp_path / "runs" / "calibrated"], method="greedy",
          name="bl", runs_dir=tmp_path / "runs", data_dir=tmp_path / "data",
          submissions_dir=tmp_path / "subs")
    board = {r["name"]: r for r in RunDir(tmp_path / "runs" / "bl").summary()["leaderboard"]}
    for method in ("greedy", "weighted"):
        w = board[method]["weights"]
        assert w[favoured] > 0.5, (method, w)


def test_multilabel_loss_is_binary_cross_entropy_with_smoothing_towards_half():
    import torch

    from kaggle_kit import targets

    logits = torch.tensor([[2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)
    bce = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1])) / 2
    assert float(targets.criterion("multilabel")(logits, y)) == pytest.approx(float(bce))
    t = torch.tensor([[0.95, 0.05]])  # smoothing 0.1: 1 -> 0.95, 0 -> 0.05
    smooth = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert float(targets.criterion("multilabel", 0.1)(logits, y)) == pytest.approx(float(smooth))
    assert torch.allclose(targets.probabilities(logits, "multilabel"), p)


def test_checkpoint_best_follows_the_metric_and_its_direction():
    from kaggle_kit.targets import checkpoint_score

    lower_loss = {"val_loss": 0.40, "val_acc": 0.8, "val_metric": 0.85}
    higher_auc = {"val_loss": 0.50, "val_acc": 0.8, "val_metric": 0.90}
    # AUC: higher is better, whatever the loss says; accuracy: the val loss stands in
    assert checkpoint_score(higher_auc, "roc_auc") < checkpoint_score(lower_loss, "roc_auc")
    assert checkpoint_score(lower_loss, "accuracy") < checkpoint_score(higher_auc, "accuracy")
    assert checkpoint_score({**higher_auc, "val_metric": float("nan")}, "roc_auc") == float("inf")


def test_multilabel_blend_keeps_independent_probabilities(tmp_path):
    comp = make_target_comp(tmp_path / "data", "mlb", task="multilabel", metric="macro_auc",
                            classes=["a", "b", "c"], kind="prob", n_train=120, n_test=8,
                            n_folds=3)
    folds = comp.folds()
    y = metrics.encode_targets(folds.set_index("Id")["label"], pd.Index(folds["Id"]),
                               comp.classes, "multilabel")
    rng = np.random.default_rng(0)
    for name, signal in (("good", 3.0), ("noise", 0.0)):
        run = RunDir(tmp_path / "runs" / name)
        p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=y.shape))))
        oof = pd.DataFrame(p, columns=comp.classes, index=pd.Index(folds["Id"], name="Id"))
        oof.insert(0, "fold", folds["fold"].to_numpy())
        run.write_oof(oof, comp.classes)
        run.write_test(pd.DataFrame(rng.uniform(size=(8, 3)), columns=comp.classes,
                                    index=pd.Index(comp.test_ids(), name="Id")), comp.classes)
        run.write_summary({"run": name, "kind": "train", "competition": comp.name,
                           "classes": comp.classes, "metric": "macro_auc"})
    out = blend([tmp_path / "runs" / "good", tmp_path / "runs" / "noise"], name="bl",
                runs_dir=tmp_path / "runs", data_dir=tmp_path / "data",
                submissions_dir=tmp_path / "subs")
    s = RunDir(tmp_path / "runs" / "bl").summary()
    assert s["task"] == "multilabel" and "honest OOF macro_auc" in out
    board = {r["name"]: r for r in s["leaderboard"]}
    assert board["greedy"]["weights"]["good"] > 0.9 and board["weighted"]["weights"]["good"] > 0.9
    assert board["stack"]["honest_score"] > board["noise"]["honest_score"] + 0.3
    blended = RunDir(tmp_path / "runs" / "bl").read_oof(comp.classes)[comp.classes].to_numpy()
    assert not np.allclose(blended.sum(1), 1.0)  # never renormalised like a softmax
    (sub,) = (tmp_path / "subs").glob("*.csv")
    assert list(pd.read_csv(sub).columns) == ["id", "a", "b", "c"]


def test_humpback_layout_map5_cv_and_single_image_whales_never_oof(train, tmp_path):
    """The real humpback layout (tests/fx_comps.py, fetched with no flags): MAP@5 is the CV, the
    whales with one image (fold -1) train in every fold and are not in oof.csv."""
    from kaggle_kit.fetch import fetch
    from tests import fx_comps

    slug = "humpback-whale-identification"
    fetch(slug, data_dir=tmp_path / "data", source=fx_comps.humpback(tmp_path / "zips"), n_folds=2)
    s = train(slug, "train.batch_size=4")
    run = RunDir(tmp_path / "runs" / "r")
    comp = CompetitionDir.open(tmp_path / "data", slug)
    never = set(comp.folds().query("fold == -1")["Id"])
    assert s["metric"] == "map@5" and s["n_never_oof"] == len(never) == 2
    assert not never & set(run.read_oof().index)
    assert s["cv"]["map@5"] == pytest.approx(_scored(run, comp, "map@5", "multiclass"))
    sub = build_submission(run, comp)
    assert sub["Id"].str.split().map(len).eq(5).all()
