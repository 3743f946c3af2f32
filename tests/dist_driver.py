"""Run `kit <args>` in one process of a torchrun group, with a fault planted on rank 1 only.

    torchrun --nproc_per_node 2 tests/dist_driver.py SCENARIO -- train recipes/demo.yaml ...

SCENARIO
  plain  nothing planted
  skew   rank 1's clock (kaggle_kit.accel.clock) jumps an hour per reading: on its own clock it
         would stop every model after one epoch (train.max_minutes) while rank 0 trains on
  nan    rank 1's training batch becomes NaN at its NAN_AT-th step (default 4: the last step of
         the first epoch of a 72-image fold in batches of 16), so only rank 1 sees a NaN loss

A KitError is written to <runs-dir>/rank<R>.err (then a barrier, so both ranks get to write it
before either exits and torchrun stops the group) and re-raised.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path


def plant(scenario: str, rank: int) -> None:
    import torch

    from kaggle_kit import accel, augment

    if scenario == "skew" and rank == 1:
        real, jumps = accel.clock, itertools.count()
        accel.clock = lambda: real() + 3600.0 * next(jumps)
    if scenario == "nan" and rank == 1:
        orig, calls, at = augment.batch_augment, itertools.count(1), int(os.environ.get("NAN_AT", 4))

        def poisoned(x, **kw):
            out = orig(x, **kw)
            return out * torch.nan if next(calls) == at else out

        augment.batch_augment = poisoned


def main() -> None:
    scenario, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    rank = int(os.environ["RANK"])
    plant(scenario, rank)
    from kaggle_kit import KitError, train

    runs_dir = Path(args[args.index("--runs-dir") + 1])
    real_run = train.run

    def run(*a, **kw):
        try:
            return real_run(*a, **kw)
        except KitError as e:
            (runs_dir / f"rank{rank}.err").write_text(str(e))
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
            raise

    train.run = run
    from kaggle_kit.cli import app

    app(args, prog_name="kit")


if __name__ == "__main__":
    main()
