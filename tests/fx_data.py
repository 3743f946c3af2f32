"""Session-scoped data fixtures (fetch once per test session; imported by conftest.py).

Each returns a data dir (the `--data-dir`) in which the competition was fetched, i.e.
`CompetitionDir.open(<returned path>, "<name>")` works and the native cache is built.
Tests must treat these folders as read-only (they are shared by the whole session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_kit.fetch import fetch


def _fetch_shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    from tests.conftest import SHARED_COMPS

    zip_path = SHARED_COMPS / f"{name}.zip"
    if not zip_path.exists():
        pytest.skip(f"{zip_path} absent (e.g. on a GitHub runner): real-competition test skipped")
    data_dir = tmp_path_factory.mktemp(f"{name}_data")
    fetch(name, data_dir=data_dir, source=zip_path)
    return data_dir


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data dir holding `demo/` (1,438 train / 359 test 32x32 digits, 10 classes, 4 folds)."""
    data_dir = tmp_path_factory.mktemp("demo_data")
    fetch("demo", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="session")
def animals15_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data dir holding `animals15/` (7,200 / 1,800, 15 classes); skips if the zip is absent."""
    return _fetch_shared(tmp_path_factory, "animals15")


@pytest.fixture(scope="session")
def cifar10_mini_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data dir holding `cifar10-mini/` (7,200 / 1,800, 10 classes, JPEG); skips if absent."""
    return _fetch_shared(tmp_path_factory, "cifar10-mini")
