"""Reference values of a fixed-seed CPU run (as torchtune checks losses against references): a
silent change in the training loop -- the optimizer, the schedule, EMA, augmentation, mixing, the
loss, TTA -- moves these numbers and fails this test.

The run: the demo recipe shrunk to 96 images at 16 px, 2 folds x 2 epochs, with EMA, mixup,
flip, pad-crop, label smoothing, checkpoint best and two TTA views on. Tolerances cover float
summation order (other CPUs / thread counts: measured 1 vs 2 threads here), not behaviour.

If a change of the loop's numbers is intended, regenerate the reference and commit it with the
change, saying why the numbers moved:

    PYTHONPATH=$PWD python -m tests.test_golden      # rewrites tests/golden/loop_tiny.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.fx_train import RECIPES, TINY

GOLDEN = Path(__file__).parent / "golden" / "loop_tiny.json"
OVERRIDES = [*TINY, "cv.folds=[0,1]", "train.lr=3.0", "train.ema=0.8", "train.mixup=0.2",
             "augment.flip=true", "augment.pad_crop=1", "train.label_smoothing=0.1",
             "train.checkpoint=best", "tta.views=[orig,hflip]", "seed=7"]
REL, ABS = 2e-3, 2e-4


def golden_values(data_dir: Path, runs_dir: Path, threads: int = 1) -> dict:
    """Train the reference run and collect its numbers: per-epoch losses of each fold, the OOF
    and test probabilities (column means and a few rows)."""
    import torch

    from kaggle_kit.train import run

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(RECIPES / "demo.yaml", OVERRIDES, name="golden", runs_dir=runs_dir, data_dir=data_dir,
            force=True)
    finally:
        torch.set_num_threads(before)
    root = runs_dir / "golden"
    out: dict = {"overrides": OVERRIDES, "epochs": {}}
    for fold in ("fold0", "fold1"):
        rows = [json.loads(x) for x in (root / fold / "metrics.jsonl").read_text().splitlines()]
        # losses, not accuracies: one argmax flipping on another CPU would move an accuracy by 1/24
        out["epochs"][fold] = [{k: r[k] for k in ("train_loss", "val_loss", "lr")} for r in rows]
    for name in ("oof", "test"):
        df = pd.read_csv(root / f"{name}.csv", dtype={"Id": str}).set_index("Id")
        df = df.drop(columns="fold", errors="ignore").sort_index()
        out[name] = {"mean": df.mean().round(6).to_dict(),
                     "first_rows": df.iloc[:3].round(6).to_numpy().tolist()}
    return out


def _flat(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, d


def test_tiny_run_matches_reference_values(demo_data_dir: Path, tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    assert want["overrides"] == OVERRIDES, "reference made with other overrides: regenerate it"
    got = dict(_flat(golden_values(demo_data_dir, tmp_path)))
    bad = []
    for key, value in _flat(want):
        if isinstance(value, float) or isinstance(got.get(key), float):
            if got.get(key) is None or not np.isclose(got[key], value, rtol=REL, atol=ABS):
                bad.append(f"{key}: {got.get(key)} (reference {value})")
        elif got.get(key) != value:
            bad.append(f"{key}: {got.get(key)!r} (reference {value!r})")
    assert not bad, (f"{len(bad)} values differ from {GOLDEN.name}; if intended, regenerate "
                     f"(see this module's docstring): " + "; ".join(bad[:8]))


if __name__ == "__main__":  # regenerate: python -m tests.test_golden
    import tempfile

    from kaggle_kit.fetch import fetch

    with tempfile.TemporaryDirectory() as tmp:
        fetch("demo", data_dir=Path(tmp) / "data")
        values = golden_values(Path(tmp) / "data", Path(tmp) / "runs")
        if "--compare-threads" in sys.argv:  # how far 2 threads move the numbers (tolerance)
            other = dict(_flat(golden_values(Path(tmp) / "data", Path(tmp) / "runs", threads=2)))
            diffs = [(k, v, other[k]) for k, v in _flat(values) if isinstance(v, float)]
            worst = max(diffs, key=lambda t: abs(t[1] - t[2]) / (ABS + REL * abs(t[1])))
            print(f"largest 1- vs 2-thread difference: {worst}")
        else:
            GOLDEN.parent.mkdir(exist_ok=True)
            GOLDEN.write_text(json.dumps(values, indent=1) + "\n")
            print(f"wrote {GOLDEN}")
