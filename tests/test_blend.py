"""blend.py: blenders with known answers, honest vs in-sample, alignment, refusals, blend of blends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_kit import KitError
from kaggle_kit.blend import blend
from kaggle_kit.blenders import GreedyBlender, MeanBlender, StackBlender, WeightedBlender, evaluate
from kaggle_kit.rundir import RunDir
from kaggle_kit.submission import validate_submission
from kaggle_kit.workspace import write_csv
from tests.fx_blend import make_comp, make_run, member_probs, write_json_key


def _y(n: int = 600, c: int = 5) -> np.ndarray:
    return np.arange(n) % c


def test_weighted_and_greedy_put_the_weight_on_the_informative_member():
    y = _y()
    P = [member_probs(y, 5, 0.0, seed=1), member_probs(y, 5, 2.0, seed=2)]  # noise, informative
    for b in (WeightedBlender(), GreedyBlender()):
        w = b.fit(P, y).weights_
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        assert w[1] > 0.95, (type(b).__name__, w)
    assert MeanBlender().fit(P, y).weights_.tolist() == [0.5, 0.5]


def test_weighted_splits_evenly_between_equal_members():
    y = _y(2000)
    P = [member_probs(y, 5, 1.5, seed=s) for s in (3, 4)]  # equally good, independent errors
    w = WeightedBlender().fit(P, y).weights_
    assert abs(w[0] - 0.5) < 0.1
    blended = WeightedBlender().fit(P, y).predict_proba(P)
    assert blended.shape == (2000, 5) and np.allclose(blended.sum(1), 1.0)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_weighted_weights_minimise_the_blend_log_loss(task):
    """The fitted weights are the log-loss optimum found by a grid over w (2 members of
    different strength, so the optimum is inside (0, 1)); the loss is written out here."""
    rng = np.random.default_rng(0)
    if task == "multiclass":
        y = _y(1500)
        P = [member_probs(y, 5, 1.8, seed=5), member_probs(y, 5, 2.0, seed=6)]

        def loss(w):
            q = w * P[0][np.arange(len(y)), y] + (1 - w) * P[1][np.arange(len(y)), y]
            return -np.log(q).mean()
    else:
        y = (rng.random((1500, 4)) < 0.3).astype(int)
        P = [1 / (1 + np.exp(-(s * (2 * y - 1) + rng.normal(0, 1.5, y.shape)))) for s in (1.5, 2.0)]

        def loss(w):
            q = w * P[0] + (1 - w) * P[1]
            return -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean()
    grid = np.linspace(0, 1, 401)
    best = grid[np.argmin([loss(w) for w in grid])]
    assert 0.05 < best < 0.95  # an interior optimum: the setup can tell a wrong gradient
    w = WeightedBlender(metric="log_loss", task=task).fit(P, y).weights_
    assert abs(w[0] - best) < 0.01 and loss(w[0]) <= loss(best) + 1e-6, (w, best)


def test_stack_honest_score_is_below_in_sample_on_overfit_prone_data():
    y = _y(120)
    P = [member_probs(y, 5, 0.0, seed=s) for s in range(12)]  # 60 noise features, 120 rows
    folds = np.arange(120) % 4
    r = evaluate("stack", P, y, folds, P)
    assert r["insample"]["accuracy"] > r["honest"]["accuracy"] + 0.2, r
    assert r["honest"]["log_loss"] > r["insample"]["log_loss"]
    assert isinstance(r["model"], StackBlender) and r["model"].coef_.shape == (5, 60)


def _dirs(tmp_path):
    return {"runs_dir": tmp_path / "runs", "data_dir": tmp_path / "data",
            "submissions_dir": tmp_path / "subs"}


def test_blend_writes_a_run_and_a_valid_submission(tmp_path):
    comp = make_comp(tmp_path / "data")
    good = make_run(tmp_path / "runs", "good", comp, signal=2.5, seed=1)
    noise = make_run(tmp_path / "runs", "noise", comp, signal=0.0, seed=2)
    text = blend([noise.root, good.root], method="weighted", name="wb", **_dirs(tmp_path))
    out = RunDir(tmp_path / "runs" / "wb")
    s = out.summary()
    assert s["kind"] == "blend" and s["method"] == "weighted" and s["competition"] == "toy"
    assert s["weights"]["good"] > 0.9
    assert [m["run"] for m in s["members"]] == ["good", "noise"]
    board = {r["name"]: r for r in s["leaderboard"]}
    assert set(board) == {"good", "noise", "mean", "weighted", "greedy", "stack"}
    assert s["cv"]["accuracy"] == pytest.approx(board["weighted"]["honest_accuracy"])
    assert out.read_oof(comp.classes).index.tolist() == comp.folds()["Id"].tolist()
    assert out.confusion_png.stat().st_size > 5000
    subs = list((tmp_path / "subs").glob("*-wb.csv"))
    assert len(subs) == 1
    validate_submission(pd.read_csv(subs[0], dtype=str), comp, str(subs[0]))
    assert "honest acc" in text and "in-sample" in text
    assert any(ln.split()[:2] == ["blend", "weighted"] and ln.endswith("<- kept")
               for ln in text.splitlines())


def test_best_picks_the_best_honest_method_and_default_name(tmp_path):
    comp = make_comp(tmp_path / "data")
    runs = [make_run(tmp_path / "runs", f"r{i}", comp, signal=sig, seed=i).root
            for i, sig in enumerate((1.5, 1.0, 0.0))]
    blend(runs, **_dirs(tmp_path))
    out = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("blend-best-")]
    assert len(out) == 1
    s = RunDir(out[0]).summary()
    methods = [r for r in s["leaderboard"] if r["kind"] == "method"]
    top = max(methods, key=lambda r: (r["honest_accuracy"], -r["honest_log_loss"]))
    assert s["method"] == top["name"] and s["requested_method"] == "best"


def _shuffled_copy(run: RunDir, dest: RunDir, seed: int = 0) -> RunDir:
    """The same run with rows and class columns in another order (same name, other folder)."""
    rng = np.random.default_rng(seed)
    dest.root.mkdir(parents=True)
    for src, dst in ((run.oof_path, dest.oof_path), (run.test_path, dest.test_path)):
        df = pd.read_csv(src, dtype={"Id": str})
        cols = [c for c in df.columns if c not in ("Id", "fold")]
        keep = [c for c in df.columns if c in ("Id", "fold")]
        write_csv(dst, df.iloc[rng.permutation(len(df))][keep + list(rng.permutation(cols))])
    dest.summary_path.write_text(run.summary_path.read_text())
    return dest


def test_shuffled_member_gives_the_identical_blend(tmp_path):
    comp = make_comp(tmp_path / "data")
    a = make_run(tmp_path / "runs", "a", comp, signal=1.5, seed=1)
    b = make_run(tmp_path / "runs", "b", comp, signal=1.0, seed=2)
    b2 = _shuffled_copy(b, RunDir(tmp_path / "elsewhere" / "b"))
    assert pd.read_csv(b2.oof_path).columns.tolist() != pd.read_csv(b.oof_path).columns.tolist()
    for method in ("weighted", "stack"):
        blend([a.root, b.root], method=method, name=f"x-{method}", **_dirs(tmp_path))
        blend([b2.root, a.root], method=method, name=f"y-{method}", **_dirs(tmp_path))
        x, y = RunDir(tmp_path / "runs" / f"x-{method}"), RunDir(tmp_path / "runs" / f"y-{method}")
        pd.testing.assert_frame_equal(x.read_oof(), y.read_oof())
        pd.testing.assert_frame_equal(x.read_test(), y.read_test())


def _corrupt(kind: str, run: RunDir, tmp_path) -> None:
    if kind == "competition":
        make_comp(tmp_path / "data", name="other")
        write_json_key(run.summary_path, competition="other")
    elif kind == "ids":
        df = pd.read_csv(run.oof_path, dtype={"Id": str})
        write_csv(run.oof_path, df.iloc[5:])
    elif kind == "classes":
        df = pd.read_csv(run.oof_path, dtype={"Id": str})
        write_csv(run.oof_path, df.rename(columns={"shark": "whale"}))
    elif kind == "folds_sha":
        write_json_key(run.summary_path, folds_sha256="0" * 64)
    elif kind == "fold_column":
        write_json_key(run.summary_path, folds_sha256=None)
        df = pd.read_csv(run.oof_path, dtype={"Id": str})
        write_csv(run.oof_path, df.assign(fold=(df["fold"] + 1) % 4))
    elif kind == "nan":
        df = pd.read_csv(run.oof_path, dtype={"Id": str})
        df.loc[3, "shark"] = np.nan
        write_csv(run.oof_path, df)
    elif kind == "test_ids":
        df = pd.read_csv(run.test_path, dtype={"Id": str})
        write_csv(run.test_path, df.assign(Id=df["Id"] + "x"))


@pytest.mark.parametrize("kind, message", [
    ("competition", "competition 'other'"),
    ("ids", "other Ids"),
    ("classes", r"missing \['shark'\], unknown \['whale'\]"),
    ("folds_sha", "made on other folds"),
    ("fold_column", "made on other folds: 200 Ids"),
    ("test_ids", "other test Ids"),
    ("nan", "1 rows with empty, infinite, negative or all-zero probabilities"),
])
def test_refuses_members_that_do_not_match(tmp_path, kind, message):
    comp = make_comp(tmp_path / "data")
    a = make_run(tmp_path / "runs", "a", comp, seed=1)
    b = make_run(tmp_path / "runs", "b", comp, seed=2)
    _corrupt(kind, b, tmp_path)
    with pytest.raises(KitError, match=message) as e:
        blend([a.root, b.root], method="mean", **_dirs(tmp_path))
    assert str(b.root) in str(e.value)  # names the offending member
    assert not (tmp_path / "subs").exists()


def test_refuses_bad_method_one_member_and_overwriting_a_train_run(tmp_path):
    comp = make_comp(tmp_path / "data")
    a = make_run(tmp_path / "runs", "a", comp, seed=1)
    b = make_run(tmp_path / "runs", "b", comp, seed=2)
    with pytest.raises(KitError, match="unknown; choose one of"):
        blend([a.root, b.root], method="median", **_dirs(tmp_path))
    with pytest.raises(KitError, match="at least 2 runs"):
        blend([a.root], **_dirs(tmp_path))
    make_run(tmp_path / "runs", "taken", comp, seed=3)
    with pytest.raises(KitError, match="holds a train run"):
        blend([a.root, b.root], method="mean", name="taken", **_dirs(tmp_path))


def test_blend_of_blends(tmp_path):
    comp = make_comp(tmp_path / "data")
    r = [make_run(tmp_path / "runs", f"r{i}", comp, signal=1.2, seed=i) for i in range(4)]
    blend([r[0].root, r[1].root], method="mean", name="b01", **_dirs(tmp_path))
    blend([r[2].root, r[3].root], method="weighted", name="b23", **_dirs(tmp_path))
    blend([tmp_path / "runs" / "b01", tmp_path / "runs" / "b23"], method="mean", name="top",
          **_dirs(tmp_path))
    s = RunDir(tmp_path / "runs" / "top").summary()
    assert [m["kind"] for m in s["members"]] == ["blend", "blend"]
    assert s["cv"]["accuracy"] > max(m.summary()["cv"]["accuracy"] for m in r)
    assert len(list((tmp_path / "subs").glob("*-top.csv"))) == 1


def test_kit_blend_cli_prints_the_leaderboard_and_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from kaggle_kit.cli import app

    comp = make_comp(tmp_path / "data")
    a = make_run(tmp_path / "runs", "a", comp, signal=1.5, seed=1)
    b = make_run(tmp_path / "runs", "b", comp, signal=1.0, seed=2)
    opts = ["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
            "--submissions-dir", str(tmp_path / "subs")]
    res = CliRunner().invoke(app, ["blend", str(a.root), str(b.root), "--method", "mean",
                                   "--name", "cli", *opts])
    assert res.exit_code == 0, res.output
    assert "blend  mean" in res.output and "submission:" in res.output
    _corrupt("ids", b, tmp_path)
    res = CliRunner().invoke(app, ["blend", str(a.root), str(b.root), *opts])
    assert res.exit_code == 1 and "other Ids" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("known", [[0, 2, 3], [1, 4]])
def test_stack_of_a_class_never_in_oof_is_rebuilt_as_fitted(tmp_path, known):
    """humpback: a class whose images all have fold -1 is never in the OOF rows, so the stack
    model knows only some classes (here 3, or 2: one binary coefficient row). kit predict rebuilds
    the model from summary.json (runtree.blender) and must give the blend's own probabilities;
    it refused ("knows 3 of 5 classes") a blend that kit blend had kept and kit submit accepted."""
    from types import SimpleNamespace

    from kaggle_kit.blend import _coefficients
    from kaggle_kit.runtree import blender
    from kaggle_kit.workspace import read_json, write_json

    classes, rng = ["a", "b", "c", "d", "e"], np.random.default_rng(0)
    y = rng.choice(known, size=60)
    P = [member_probs(y, 5, signal=2.0, seed=s) for s in (1, 2)]
    model = StackBlender().fit(P, y)
    members = [SimpleNamespace(name=n) for n in ("m1", "m2")]
    write_json(tmp_path / "summary.json", {"coefficients": _coefficients(model, members, classes),
                                           "members": [{"run": "m1"}, {"run": "m2"}]})
    node = {"summary": read_json(tmp_path / "summary.json"), "classes": classes,
            "task": "multiclass", "root": tmp_path}
    Q = [member_probs(rng.choice(5, size=7), 5, signal=1.0, seed=s) for s in (3, 4)]
    np.testing.assert_allclose(blender(node).predict_proba(Q), model.predict_proba(Q), atol=1e-9)
