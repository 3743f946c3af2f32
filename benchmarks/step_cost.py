"""Step cost: images/s of the `kit train` loop vs a minimal hand-written PyTorch loop.

Same model (kit_resnet9 by default), same data (fold 0's training images of a fetched
competition, uint8 cache), same batch size, same optimizer (SGD nesterov + weight decay),
same threads, channels_last in both. Augmentation is off in both (recipe: no flip/pad-crop,
constant lr) so the comparison is the step itself plus kit's per-batch uint8 -> float work.
Rounds alternate kit / hand so machine load hits both alike; medians are reported.

    python benchmarks/step_cost.py                       # demo competition (kit fetch demo)
    python benchmarks/step_cost.py --competition animals15 --rounds 3 --threads 2

kit's wall number is the `images_per_s` kit writes to metrics.jsonl for its last epoch (training
seconds only; oneDNN warm-up is in the earlier epoch on both sides). On a shared machine wall
time is noisy, so the CPU time of the same epoch (kit: its whole epoch function, batches +
augment + steps; hand: its loop) is reported too: with --threads 1 it is the robust number.
Target: ratio >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def kit_images_per_s(args, runs_dir: Path, i: int) -> tuple[float, float]:
    """Run kit train on fold 0 for `epochs`. Returns (images per wall second of its last epoch,
    from metrics.jsonl; images per CPU second of the same epoch's training loop)."""
    from kaggle_kit import train

    cpu: list[tuple[int, float]] = []
    epoch_fn = train._train_epoch

    def timed(*a, **kw):  # CPU seconds of kit's whole epoch function (batches, augment, steps)
        c0 = time.process_time()
        out = epoch_fn(*a, **kw)
        cpu.append((out[2], time.process_time() - c0))
        return out

    train._train_epoch = timed

    over = [f"competition={args.competition}", f"model.name={args.model}", "cv.folds=[0]",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.lr=0.1",
            "train.schedule=constant", "train.warmup_epochs=0", "train.label_smoothing=0",
            "augment.flip=false", "augment.pad_crop=0", "tta.views=[orig]",
            "train.channels_last=true", "train.mixed_precision=no"]
    over += [f"data.limit={args.limit}"] if args.limit else []
    try:
        train.run(REPO / "recipes" / "resnet_fast.yaml", over, name=f"kit{i}", runs_dir=runs_dir,
                  data_dir=args.data_dir, resume=False, force=True)
    finally:
        train._train_epoch = epoch_fn
    rows = (runs_dir / f"kit{i}" / "fold0" / "metrics.jsonl").read_text().splitlines()
    return json.loads(rows[-1])["images_per_s"], cpu[-1][0] / cpu[-1][1]


def hand_images_per_s(args, x_u8: np.ndarray, y: np.ndarray, n_classes: int
                      ) -> tuple[float, float]:
    """A minimal PyTorch loop: float normalised tensor in memory, index, forward, backward, step."""
    from kaggle_kit import models

    dev = torch.device(args.device)
    net = models.create_model(args.model, n_classes).to(dev, memory_format=torch.channels_last)
    x = torch.from_numpy(x_u8).to(dev).permute(0, 3, 1, 2).float()
    x = ((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(y).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1 * args.batch_size / 256, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss()
    ips = 0.0, 0.0
    for _ in range(args.epochs):  # the last epoch is timed, like kit's
        perm = torch.randperm(len(x), device=dev)
        n_steps = len(x) // args.batch_size
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(n_steps):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            loss = crit(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()  # the queued kernels are part of the epoch
        n = n_steps * args.batch_size
        ips = n / (time.perf_counter() - t0), n / (time.process_time() - c0)
    return ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--competition", default="demo")
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--model", default="kit_resnet9")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="hand loop's device (kit picks its own: the GPU when there is one)")
    ap.add_argument("--limit", type=int, default=None,
                    help="data.limit for both loops (quick runs: ~limit/4 images per fold)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kaggle_kit import images
    from kaggle_kit.workspace import CompetitionDir

    comp = CompetitionDir.open(args.data_dir, args.competition)
    folds = comp.folds()
    if args.limit:  # the rows kit's data.limit keeps: the first ~limit/n_folds of each fold
        folds = folds.groupby("fold", sort=False).head(-(-args.limit // folds["fold"].nunique()))
    ids, cache = images.load_cache(comp, "train", None)
    row = {i: r for r, i in enumerate(ids)}
    tr = folds[folds["fold"] != 0]
    x_u8 = np.ascontiguousarray(cache[[row[i] for i in tr["Id"]]])
    y = tr["label"].map({c: k for k, c in enumerate(comp.classes)}).to_numpy()
    kit, hand = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            kit.append(kit_images_per_s(args, Path(tmp), i))
            hand.append(hand_images_per_s(args, x_u8, y, len(comp.classes)))
            print(f"round {i + 1}: kit {kit[-1][0]:.1f} img/s wall, {kit[-1][1]:.1f} img/CPU-s | "
                  f"hand {hand[-1][0]:.1f} img/s wall, {hand[-1][1]:.1f} img/CPU-s")
    print(f"\n{args.model} batch {args.batch_size}, {args.threads} threads, {len(x_u8)} images "
          f"({args.competition} fold 0), {x_u8.shape[1]}x{x_u8.shape[2]}, median of {args.rounds}")
    for j, unit in enumerate(("images/s (wall)", "images/CPU-second")):
        k, h = statistics.median(r[j] for r in kit), statistics.median(r[j] for r in hand)
        ratios = [a[j] / b[j] for a, b in zip(kit, hand, strict=True)]
        print(f"{unit:18s} kit {k:7.1f}  hand {h:7.1f}  ratio {k / h:.3f}  (per round: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")   target >= 0.90")

if __name__ == "__main__":
    main()
