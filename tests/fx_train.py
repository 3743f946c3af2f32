"""Fixtures for kit train tests: a tiny, fast shrink of any recipe on the demo competition."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# Shrinks a shipped recipe (torchtune style) to seconds: ~96 train images (24 per fold), 16x16,
# batches of 16, no DataLoader workers, 2 epochs.
TINY = ["competition=demo", "data.limit=96", "data.image_size=16", "train.batch_size=16",
        "train.epochs=2", "train.num_workers=0", "train.warmup_epochs=0"]


@pytest.fixture()
def train_tiny(demo_data_dir: Path, tmp_path: Path):
    """train_tiny(recipe_stem, *overrides, name=..., resume=False, force=False, on_epoch=None)
    -> summary dict (on_epoch: kaggle_kit.train.run's per-epoch callback).
    Runs go to tmp_path/runs/<name>; the demo competition is the session's shared one.
    One torch thread: tiny batches on a shared 2-core CPU run several times faster that way."""
    import torch

    from kaggle_kit.train import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def _run(stem: str = "demo", *overrides: str, name: str = "r", resume: bool = False,
             force: bool = False, on_epoch=None) -> dict:
        return run(RECIPES / f"{stem}.yaml", [*TINY, *overrides], name=name,
                   runs_dir=tmp_path / "runs", data_dir=demo_data_dir, resume=resume, force=force,
                   on_epoch=on_epoch)

    _run.runs_dir = tmp_path / "runs"
    yield _run
    torch.set_num_threads(threads)
