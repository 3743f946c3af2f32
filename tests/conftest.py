"""Shared test setup. Fixtures live in per-area modules (fx_*.py), registered as pytest plugins
(pytest's own mechanism: a missing or broken fixture module is an error, never a silent skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests stay small and deterministic on a 2-core CPU.
os.environ.setdefault("OMP_NUM_THREADS", "2")

pytest_plugins = ["tests.fx_data", "tests.fx_kaggle", "tests.fx_train"]

REPO = Path(__file__).resolve().parents[1]
SHARED_COMPS = REPO.parent / "shared" / "competitions"

requires_shared = pytest.mark.skipif(
    not (SHARED_COMPS / "animals15.zip").exists(),
    reason=f"{SHARED_COMPS} absent (e.g. on a GitHub runner): real-competition tests skipped",
)
