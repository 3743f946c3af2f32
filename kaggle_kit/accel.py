"""How `kit train` runs on several processes / GPUs without hanging (Accelerate underneath).

- Mixed precision is decided before the Accelerator exists, from the recipe, the accelerate
  launch flag / config (ACCELERATE_MIXED_PRECISION) and this rank's own GPU (LOCAL_RANK, never
  cuda:0 from every rank): native bf16 needs compute capability >= 8.0 (A100, L4, H100);
  T4 / P100 / V100 report bf16 "supported" through slow emulation, so they get fp16.
- Decisions that change control flow are taken together: rank 0 decides (`rank0_decides`, e.g.
  train.max_minutes on rank 0's clock) or all ranks vote (`any_rank`, e.g. a non-finite loss on
  any rank), so no rank walks into a collective the others never reach.
- SyncBatchNorm (train.sync_bn) only where it works: several processes on GPUs.
- Experiment trackers (train.log_with) through accelerate's tracking: per-epoch metrics.
- CPU training under glibc keeps freed memory in the heap (`keep_freed_memory`): a training
  step frees and re-allocates the same large activation buffers every batch, and glibc's
  defaults return each one (> 128 KiB) to the OS and page-fault it back in (~1/3 of a step's
  time in the kernel at 192 px; benchmarks/BENCHMARKS.md, "CPU allocator").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# glibc mallopt parameters (malloc.h) and their documented defaults (bytes)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _GLIBC_DEFAULT = -1, -3, 128 * 1024

# seam for tests: the clock train.max_minutes reads (a 2-process test skews one rank's clock)
clock = time.perf_counter


def _glibc():
    """The C library as a ctypes handle when it is glibc (mallopt exists), else None."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(enabled: bool = True) -> bool:
    """Make glibc malloc serve large blocks from the heap and keep freed memory (True), or put
    back glibc's documented defaults (False). Process-wide; True when the setting was applied.

    Large blocks stay mmap-ed only above 1 GiB, and the heap is never trimmed: freed memory is
    not returned to the OS, and peak RSS grows somewhat (holes of one size do not always fit the
    next: +250 MB on ~2.9 GB at 128 px, batch 128; BENCHMARKS.md, Scale), so `kit train` turns it
    on around its models only; False gives the kept memory back at once (malloc_trim)."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_at, trim_at = (2**30, 2**31 - 1) if enabled else (_GLIBC_DEFAULT, _GLIBC_DEFAULT)
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_at)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_at))
    if not enabled:
        libc.malloc_trim(0)  # the free memory kept so far goes back now, not at the next free
    return done


def choose_precision(recipe_value: str, launcher_value: str | None,
                     capability: tuple[int, int] | None) -> tuple[str, str | None]:
    """(accelerate mixed_precision, note or None) from the recipe's train.mixed_precision,
    accelerate's launch flag / config value (None when not launched by accelerate) and this
    rank's GPU compute capability (None on CPU).

    An explicit recipe value wins (and the note says so when accelerate asked for another);
    `auto` takes accelerate's fp16 / bf16 / fp8, else picks by hardware: bf16 on capability
    >= 8.0, fp16 on older GPUs, none on CPU. accelerate launch writes "no" when nothing was
    configured, so "no" from accelerate counts as unset: set train.mixed_precision=no for fp32."""
    if recipe_value != "auto":
        note = None
        if launcher_value and launcher_value != recipe_value:
            note = (f"train.mixed_precision={recipe_value} from the recipe overrides accelerate's "
                    f"{launcher_value} (set train.mixed_precision=auto to use accelerate's)")
        return recipe_value, note
    if launcher_value and launcher_value != "no":
        return launcher_value, f"train.mixed_precision=auto: {launcher_value} from accelerate"
    if capability is None:
        return "no", None
    return ("bf16" if capability[0] >= 8 else "fp16"), None


def mixed_precision(recipe_value: str) -> tuple[str, str | None]:
    """choose_precision for this process: reads ACCELERATE_MIXED_PRECISION and the compute
    capability of this rank's own device (LOCAL_RANK), without creating a context on cuda:0."""
    import torch

    cap = None
    if torch.cuda.is_available():  # cudaGetDeviceCount: no context is created
        local = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
        cap = torch.cuda.get_device_capability(local)
    return choose_precision(recipe_value, os.environ.get("ACCELERATE_MIXED_PRECISION"), cap)


def make_accelerator(tr, project_dir: Path) -> tuple[Any, list[str]]:
    """(Accelerator, notes to print once) for the recipe's train section."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    mp, note = mixed_precision(tr.mixed_precision)
    # train.grad_accum micro-batches per optimizer step (acc.accumulate + epoch_batches below);
    # a plugin, not gradient_accumulation_steps=, so ACCELERATE_GRADIENT_ACCUMULATION_STEPS in
    # the environment cannot override the recipe
    plugin = GradientAccumulationPlugin(num_steps=tr.grad_accum, sync_with_dataloader=True)
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available(),
                      gradient_accumulation_plugin=plugin,
                      log_with=tr.log_with, project_dir=str(project_dir) if tr.log_with else None)
    return acc, [note] if note else []


def epoch_batches(batches: Iterable, n: int) -> Iterator:
    """Iterate one epoch's `n` batches (index arrays, or a DataLoader's batches) so that
    `acc.accumulate` knows where the epoch ends: it steps the optimizer every train.grad_accum
    micro-batches and after the epoch's last one (a shorter last group), then starts counting
    afresh -- what accelerate does for a prepared DataLoader (sync_with_dataloader), here for
    the loop's own batch lists (each rank already holds its slice: no DataLoader to prepare)."""
    from accelerate.data_loader import DataLoaderStateMixin
    from accelerate.state import GradientState

    class _Epoch(DataLoaderStateMixin):
        gradient_state = GradientState()

    epoch = _Epoch()
    epoch.begin()
    try:
        for i, batch in enumerate(batches):
            epoch.end_of_dataloader = i == n - 1
            yield batch
    finally:
        epoch.end()


def rank0_decides(acc, flag: bool) -> bool:
    """Rank 0's `flag`, on every rank (a broadcast): one decision for all processes."""
    if acc.num_processes == 1:
        return bool(flag)
    import torch
    from accelerate.utils import broadcast

    t = torch.tensor([int(bool(flag))], device=acc.device)
    return bool(broadcast(t, from_process=0).item())


def any_rank(acc, flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (a max-reduce)."""
    if acc.num_processes == 1:
        return bool(flag)
    import torch

    t = torch.tensor([int(bool(flag))], device=acc.device)
    return bool(acc.reduce(t, "sum").item() > 0)


def sync_bn(net, acc, enabled: bool):
    """`net` with SyncBatchNorm layers when enabled and running on several GPU processes
    (SyncBatchNorm runs only on GPUs: on CPU / one process the net is returned as is)."""
    if not enabled or acc.num_processes == 1 or acc.device.type != "cuda":
        return net
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)


def sync_bn_note(acc, enabled: bool) -> str | None:
    """Why train.sync_bn does nothing in this run, or None."""
    if enabled and acc.num_processes == 1:
        return "train.sync_bn: nothing to sync with one process"
    if enabled and acc.device.type != "cuda":
        return "train.sync_bn: skipped (SyncBatchNorm needs GPUs; this run is on CPU)"
    return None


def make_ema(net, decay: float):
    """timm ModelEmaV3 of `net` with warmup: the effective decay grows as 1 - (1 + step)^(-2/3)
    up to `decay`, so a short run's EMA follows the model instead of staying near its random init
    (3 demo epochs with a fixed 0.999 scored 0.097 val accuracy vs 0.919 without EMA).
    Call .update(net, step=optimizer steps done); .module is the averaged net."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=decay, use_warmup=True)


# ----------------------------------------------------------------------------- trackers


def start_tracking(acc, rec, run_name: str) -> None:
    """init_trackers for train.log_with (no-op when null): project = kit-<competition>, the run
    named after the run folder; hyperparameters = the flattened recipe (scalars only)."""
    if not rec.train.log_with:
        return
    hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
          for k, v in _flatten(rec.model_dump(mode="json")).items()}
    acc.init_trackers(f"kit-{rec.competition}-{run_name}", config=hp,
                      init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})


def log_epoch(acc, rec, name: str, row: dict, step: int) -> None:
    """One epoch's metrics (train/val loss + accuracy, lr, images/s) as <model>/<metric>."""
    if not rec.train.log_with:
        return
    acc.log({f"{name}/{k}": v for k, v in row.items() if isinstance(v, (int, float))
             and k != "epoch"}, step=step)


def stop_tracking(acc) -> None:
    """Flush and close the trackers (not acc.end_training(): that also tears down the process
    group, which the rest of the run still needs)."""
    for tracker in acc.trackers:
        tracker.finish()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = "null" if v is None else v
    return out
