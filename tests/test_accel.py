"""accel.keep_freed_memory: glibc keeps freed large blocks for reuse during kit train on CPU
(the speed it buys is measured in benchmarks/BENCHMARKS.md, "CPU allocator"), and gives them
back to the OS again once the run is over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kaggle_kit import accel

pytestmark = pytest.mark.skipif(accel._glibc() is None, reason="glibc's mallopt only")
MB = 2**20


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _kept_after_free_mb() -> float:
    """RSS still held after a 256 MB block is written and freed (like one activation buffer)."""
    base = _rss_mb()
    block = np.ones(256 * MB // 8)
    del block
    return _rss_mb() - base


def test_keep_freed_memory_on_keeps_a_freed_block_and_off_returns_it() -> None:
    try:
        assert accel.keep_freed_memory(True)
        assert _kept_after_free_mb() > 200  # served from the heap, not trimmed: reused next batch
    finally:
        assert accel.keep_freed_memory(False)
    assert _kept_after_free_mb() < 50  # glibc's defaults again: mmap-ed, returned on free


def test_kit_train_keeps_freed_memory_while_training_and_restores_after(train_tiny) -> None:
    seen = []
    train_tiny("demo", "train.epochs=1", on_epoch=lambda name, row: seen.append(
        _kept_after_free_mb()))
    assert seen and seen[0] > 200  # on during the run (CPU)
    assert _kept_after_free_mb() < 50  # and back to glibc's defaults after it


def test_keep_freed_memory_off_gives_the_kept_heap_back() -> None:
    """Switching off returns what was kept at once (malloc_trim): kit train's writing and plots
    after the models do not sit on top of the training steps' heap."""
    base = _rss_mb()
    try:
        assert accel.keep_freed_memory(True)
        block = np.ones(256 * MB // 8)
        del block
        held = _rss_mb() - base
    finally:
        assert accel.keep_freed_memory(False)
    assert held > 200 and _rss_mb() - base < 50
