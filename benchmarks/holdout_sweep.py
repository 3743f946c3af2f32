"""Several recipe variants scored on one held-out fold, trained side by side.

Like benchmarks/refit_vs_bag.py (whose `make_holdout` it reuses): fold K of a fetched competition
becomes a labelled stand-in test set, the other folds a competition of their own
(`<comp>-ho<K>`). Each variant then trains fold 0 of that competition (its OOF accuracy = the
estimate kit would show) and one refit model on all of it, and the held-out labels score the refit
model, the fold model and both averaged. Variants run `--parallel` at a time (a GPU has room for
several small nets at once; on a CPU use 1).

    python benchmarks/holdout_sweep.py recipes/effnet_lite0.yaml \
        --variant "l0_128: " --variant "l0_160: data.image_size=160 train.epochs=8" --parallel 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refit_vs_bag import accuracy, kit, make_holdout  # noqa: E402


def launch(recipe: str, ho: str, name: str, overrides: list[str], a) -> subprocess.Popen:
    log = open(a.runs_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, "-m", "kaggle_kit.cli", "train", recipe, f"competition={ho}",
           "cv.folds=[0]", "cv.refit=true", "cv.test_from=both", *a.common, *overrides,
           "--name", name, "--runs-dir", str(a.runs_dir), "--data-dir", str(a.data_dir), "--force"]
    print("$ " + shlex.join(cmd[2:]), flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def score(run: Path, truth: pd.Series) -> dict:
    """Held-out accuracy of fold0, refit0 and both averaged; OOF of fold 0; train seconds."""
    summary = json.loads((run / "summary.json").read_text())
    tests = {m: pd.read_csv(run / m / "test.csv", dtype={"Id": str}).set_index("Id")
             for m in ("fold0", "refit0")}
    secs = {m: s["train_s"] for m, s in summary["timings"]["models"].items()}
    truth = truth[truth.index.isin(tests["refit0"].index)]  # all of it unless data.limit is set
    return {"n_scored": len(truth), "oof_fold0": summary["cv"]["accuracy"],
            "ho_fold0": accuracy(tests["fold0"], truth),
            "ho_refit": accuracy(tests["refit0"], truth),
            "ho_both": accuracy((tests["fold0"] + tests["refit0"]) / 2, truth),
            "fold0_s": secs.get("fold0", float("nan")), "refit_s": secs.get("refit0", float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--variant", action="append", required=True,
                    help='"name: key=value key=value" (repeatable)')
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every variant")
    ap.add_argument("--competition", default="animals15")
    ap.add_argument("--holdout-fold", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    a = ap.parse_args()
    a.runs_dir.mkdir(parents=True, exist_ok=True)

    ho = f"{a.competition}-ho{a.holdout_fold}"
    truth = make_holdout(a.data_dir, a.competition, a.holdout_fold, a.data_dir / f"_{ho}_src")
    truth.index = truth.index.astype(str)
    kit("fetch", ho, "--from", str(a.data_dir / f"_{ho}_src"), "--data-dir", str(a.data_dir),
        "--force")
    variants = [(v.split(":", 1)[0].strip(), shlex.split(v.split(":", 1)[1])) for v in a.variant]
    pending, running, rows, t0 = list(variants), {}, {}, time.time()
    while pending or running:
        while pending and len(running) < a.parallel:
            name, ov = pending.pop(0)
            running[name] = (launch(a.recipe, ho, name, ov, a), ov, time.time())
        for name, (proc, ov, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            wall = time.time() - start
            if proc.returncode:
                print(f"{name}: FAILED (exit {proc.returncode}); see {a.runs_dir / name}.log")
                continue
            rows[name] = {"overrides": " ".join(ov), "wall_s": wall, **score(a.runs_dir / name, truth)}
            print(f"{name}: done in {wall:.0f} s: " + ", ".join(
                f"{k} {v:.4f}" for k, v in rows[name].items() if isinstance(v, float)), flush=True)
        time.sleep(2)
    table = pd.DataFrame.from_dict(rows, orient="index")
    print(f"\n{a.competition}: fold {a.holdout_fold} held out ({len(truth)} images); recipe "
          f"{a.recipe} {' '.join(a.common)}; {time.time() - t0:.0f} s in all")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.round(4).to_string())


if __name__ == "__main__":
    main()
