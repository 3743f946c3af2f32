"""Training-step speed of one model on this CPU under the choices kit makes (or could make):
glibc malloc settings (accel.keep_freed_memory), channels_last, bf16 autocast, torch.compile,
threads per process, and two 1-thread processes side by side (what a 2-process DDP run gets).

    python benchmarks/cpu_step.py [--model efficientnet_lite0] [--size 192] [--batch 64]
    python benchmarks/cpu_step.py --model kit_resnet9 --size 32 --batch 128   (resnet_fast's step)

Each row is a fresh process (the malloc setting and compile are process-wide): random inputs,
AdamW, cross-entropy; images/s = batch / the fastest of the timed steps after warm-up steps.
Prints one line per row; no assertion (a benchmark, not a test). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

ROWS = [  # (label, options)
    ("fp32, channels_last, glibc defaults", dict(cl=True, keep=False)),
    ("fp32, channels_last, keep_freed_memory (kit)", dict(cl=True, keep=True)),
    ("fp32, NCHW, keep_freed_memory", dict(cl=False, keep=True)),
    ("bf16 autocast, channels_last, keep_freed_memory", dict(cl=True, keep=True, bf16=True)),
    ("torch.compile, channels_last, keep_freed_memory", dict(cl=True, keep=True, compile=True)),
]


def _step_rate(opts: dict) -> float:
    """images/s of one configuration, in this process."""
    import torch
    import timm

    import kaggle_kit.models  # noqa: F401  (registers kit_resnet9 etc. with timm)
    from kaggle_kit import accel

    if opts.get("keep"):
        assert accel.keep_freed_memory(), "glibc mallopt unavailable"
    torch.manual_seed(0)
    torch.set_num_threads(opts["threads"])
    net = timm.create_model(opts["model"], num_classes=15)
    x = torch.randn(opts["batch"], 3, opts["size"], opts["size"])
    y = torch.randint(0, 15, (opts["batch"],))
    if opts.get("cl"):
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    fwd = torch.compile(net) if opts.get("compile") else net
    times = []
    for _ in range(opts["warmup"] + opts["steps"]):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(opts.get("bf16"))):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return opts["batch"] / min(times[opts["warmup"]:])


def _child(opts: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(opts)],
                            stdout=subprocess.PIPE, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(_step_rate(json.loads(a.child)))
        return
    base = dict(model=a.model, size=a.size, batch=a.batch, steps=a.steps, warmup=1, threads=2)
    flags = open("/proc/cpuinfo").read().split()
    print(f"{a.model}, {a.size} px, batch {a.batch}; CPU flags: "
          + " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags))
    for label, opts in ROWS:
        o = {**base, **opts, "warmup": 2 if opts.get("compile") else 1}
        rate = float(_child(o).communicate()[0])
        print(f"{label:52s} 1 process x 2 threads  {rate:6.1f} images/s", flush=True)
    for keep in (False, True):  # two 1-thread processes at once, half the batch each (DDP's split)
        o = {**base, "cl": True, "keep": keep, "threads": 1, "batch": a.batch // 2}
        procs = [_child(o) for _ in range(2)]
        rates = [float(pr.communicate()[0]) for pr in procs]
        label = f"fp32, channels_last, {'keep_freed_memory' if keep else 'glibc defaults'}"
        print(f"{label:52s} 2 processes x 1 thread  {sum(rates):6.1f} images/s (sum)", flush=True)


if __name__ == "__main__":
    main()
