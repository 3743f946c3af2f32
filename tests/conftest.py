"""Shared test setup. Fixtures live in per-area modules (fx_*.py), imported here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests stay small and deterministic on a 2-core CPU.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_COMPS = REPO.parent / "shared" / "competitions"

requires_shared = pytest.mark.skipif(
    not (SHARED_COMPS / "animals15.zip").exists(),
    reason=f"{SHARED_COMPS} absent (e.g. on a GitHub runner): real-competition tests skipped",
)

for _mod in ("fx_data", "fx_kaggle", "fx_train"):
    try:
        exec(f"from tests.{_mod} import *")  # noqa: S102 - each area owns its fixtures module
    except ModuleNotFoundError as _e:
        if _e.name != f"tests.{_mod}":
            raise
