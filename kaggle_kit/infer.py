"""The one test-time path: a uint8 image batch -> model input -> probabilities averaged over TTA
views. Validation (OOF) and test.csv of `kit train` (train.py), `kit predict` (predict.py) and
benchmarks/tta_views.py all predict through here, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np

from kaggle_kit import targets

if TYPE_CHECKING:
    from kaggle_kit.train_setup import Ctx


def predict(ctx: Ctx, net, x_all, rows: np.ndarray, views: list[str]) -> np.ndarray:
    """(len(rows), C) softmax probabilities of images x_all[rows], averaged over TTA views.

    Every rank predicts a contiguous share (the last padded by repeating the final row), the
    shares are gathered with gather_for_metrics together with their positions, and each
    position is checked to be filled exactly once -- the caller keys rows by Id."""
    import torch

    from kaggle_kit import images

    acc, n = ctx.acc, len(rows)
    per = math.ceil(n / acc.num_processes)
    mine = np.minimum(np.arange(acc.process_index * per, (acc.process_index + 1) * per), n - 1)
    bs = predict_batch_size(ctx.rec.train.batch_size, acc.device)
    was_training = net.training
    net.eval()
    probs = []
    batches = [rows[mine[i: i + bs]] for i in range(0, per, bs)]
    xs = (x_all[torch.as_tensor(b, device=x_all.device)] for b in batches) \
        if torch.is_tensor(x_all) else images.stream_batches(x_all, batches, acc.device)
    with torch.no_grad():
        for xb in xs:
            probs.append(predict_batch(net, xb, ctx.mean, ctx.std, ctx.img_size,
                                       ctx.rec.train.channels_last, views, ctx.task, acc.autocast))
    net.train(was_training)
    p = torch.cat(probs) if probs else torch.zeros((0, len(ctx.classes)), device=acc.device)
    p, pos = acc.gather_for_metrics((p, torch.as_tensor(mine, device=acc.device)))
    pos = pos.cpu().numpy()
    out = np.zeros((n, p.shape[1]))
    out[pos] = p.cpu().numpy()
    if len(np.unique(pos)) != n:
        raise RuntimeError(f"internal error: prediction covered {len(np.unique(pos))} of {n} rows")
    return out


def predict_batch_size(batch_size: int, device) -> int:
    """Images per prediction batch: on a GPU at least 256 (fewer, fuller launches); on CPU the
    train batch, so train.batch_size bounds the run's memory: without gradients an image costs
    about half of what it does in a training step, yet 256 at 128 px (kit_resnet9_s) peaked at
    2.2 GB where a training step at batch 32 needed 1.2 GB (benchmarks/BENCHMARKS.md, Scale)."""
    return max(256, batch_size) if device.type == "cuda" else batch_size


def to_input(xb, mean, std, img_size: int, channels_last: bool):
    """(B,H,W,3) uint8 -> (B,3,S,S) float normalised with mean/std (1,3,1,1); bilinear resize to
    img_size when the cache holds another size (data.resize: device); channels_last if asked.
    The one preprocessing of training, validation, test and benchmarks/tta_views.py."""
    import torch

    x = xb.permute(0, 3, 1, 2).float()  # NHWC storage viewed as NCHW = channels_last already
    x = (x - mean) / std
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = torch.nn.functional.interpolate(x, size=(img_size, img_size),
                                            mode="bilinear", align_corners=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def predict_batch(net, xb, mean, std, img_size: int, channels_last: bool, views: list[str],
                  task: str, autocast=contextlib.nullcontext):
    """(B,C) probabilities (targets.probabilities of `task`) of a (B,H,W,3) uint8 batch on net's
    device, averaged over the TTA `views`; the net runs under `autocast()` (the run's mixed
    precision). The one test-time path: validation (OOF) and test.csv here, and `kit predict`
    (predict.py). Call under no_grad."""
    import torch

    from kaggle_kit import augment

    x = to_input(xb, mean, std, img_size, channels_last)
    with autocast():
        ps = [targets.probabilities(net(v).float(), task) for v in augment.tta_views(x, views)]
    return torch.stack(ps).mean(0)
