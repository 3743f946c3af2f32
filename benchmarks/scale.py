"""Scale: memory and decode throughput of `kit fetch` / `kit train` on a generated competition.

Generates N train + N/5 test JPEGs of S x S px in Kaggle's layout (train.csv `Id,Category`,
sample_submission.csv, train/ and test/ folders; 10 classes, smooth random images), then:

1. `kit fetch scale --from <folder>` as a child process: wall time, peak RSS.
2. decode throughput: the train cache rebuilt in-process with 1 and 2 decode processes (and all
   cores when there are more), images/s; the cache's size in MB.
3. a read pass (child processes): every train row once, in shuffled batches of 128, through
   `images.stream_batches` (os.pread) and, for contrast, through a np.memmap -- peak RSS of each.
4. `kit train` (child) once per `--loads` value: one fold, one epoch (`--train-limit L` adds
   data.limit=L: CPU training at S px is slow; the cache is opened and checked whole either way):
   peak RSS, train images/s, CV, and where kit put the data.

Peak RSS is ru_maxrss of the child's process tree (the largest single process: a decode worker
counts the parent's pages it shares). Everything runs through the `kit` CLI as a user would.

    python benchmarks/scale.py --n 20000 --size 128 --train-limit 2048 --loads stream
    python benchmarks/scale.py --n 20000 --size 128 --train-limit 0 --loads stream,device   # GPU
    python benchmarks/scale.py --n 100000 --size 256 --decode-bench '' --read-pass pread  # ~25 GB disk
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{k}" for k in range(10)]
# Runs argv[2:] and writes {"rc", "maxrss_mb"} of its process tree to argv[1].
WRAP = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(json.dumps({'rc': r.returncode, 'maxrss_mb': "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def _image(task: tuple) -> None:
    """Write one smooth random JPEG: an 8x8 random colour field upsampled, tinted by class."""
    from PIL import Image

    path, seed, label, size = task
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field[..., label % 3] = np.maximum(field[..., label % 3], 40 + 20 * label)
    Image.fromarray(field).resize((size, size), Image.BILINEAR).save(path, quality=90)


def generate(src: Path, n: int, n_test: int, size: int) -> float:
    """Write the competition folder; returns seconds."""
    import pandas as pd

    t0 = time.perf_counter()
    for d in ("train", "test"):
        (src / d).mkdir(parents=True, exist_ok=True)
    labels = [i % len(CLASSES) for i in range(n)]
    tasks = [(src / "train" / f"{i:06d}.jpg", i, labels[i], size) for i in range(n)]
    tasks += [(src / "test" / f"{i:06d}.jpg", 10**7 + i, i % 10, size) for i in range(n_test)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_image, tasks, chunksize=256):
            pass
    pd.DataFrame({"Id": [f"{i:06d}" for i in range(n)],
                  "Category": [CLASSES[k] for k in labels]}).to_csv(src / "train.csv", index=False)
    pd.DataFrame({"Id": [f"{i:06d}" for i in range(n_test)], "Category": CLASSES[0]}).to_csv(
        src / "sample_submission.csv", index=False)
    return time.perf_counter() - t0


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (output to `log`) under WRAP, this checkout first on PYTHONPATH:
    {"rc", "maxrss_mb", "wall_s"}."""
    out = log.with_suffix(".rss.json")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", WRAP, str(out), *cmd], stdout=f,
                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path}, check=False)
    res = json.loads(out.read_text())
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if res["rc"] != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {res['rc']}); see {log}:\n{log.read_text()[-2000:]}")
    return res


def decode_rates(data: Path, workers: list[int]) -> dict[int, float]:
    """images/s of rebuilding the train cache with each number of decode processes."""
    sys.path.insert(0, str(REPO))
    from kaggle_kit import cache
    from kaggle_kit.workspace import CompetitionDir

    comp = CompetitionDir.open(data, "scale")
    rates = {}
    for w in workers:
        arr_path, ids_path = cache.cache_paths(comp, "train", None)
        for p in (arr_path, ids_path, cache.record_path(arr_path)):
            p.unlink(missing_ok=True)
        t0 = time.perf_counter()
        info = cache.build_cache(comp, "train", None, progress=False, workers=w)
        rates[w] = round(info["n"] / (time.perf_counter() - t0), 1)
        print(f"decode: {w} process(es): {rates[w]} images/s", flush=True)
    return rates


READ_PASS = """
import sys, time, numpy as np
sys.path.insert(0, {repo!r})
from kaggle_kit import images
path, how = {path!r}, {how!r}
order = np.random.default_rng(0).permutation(np.load(path, mmap_mode="r").shape[0])
batches = [np.sort(order[i:i + 128]) for i in range(0, len(order), 128)]
t0 = time.perf_counter()
if how == "pread":
    for xb in images.stream_batches(images.CacheArray(path), batches, "cpu"):
        pass
else:
    arr = np.load(path, mmap_mode="r")
    for b in batches:
        xb = np.ascontiguousarray(arr[b])
print(f"{{len(order) / (time.perf_counter() - t0):.0f}} rows/s")
"""


def read_pass(arr_path: Path, how: str, log: Path) -> dict:
    code = READ_PASS.format(repo=str(REPO), path=str(arr_path), how=how)
    res = measure([sys.executable, "-c", code], log)
    res["rows_per_s"] = float(log.read_text().split()[-2])
    return res


def train(work: Path, args, load: str) -> dict:
    """One `kit train` child with data.load=load: wall, peak RSS, train images/s, CV, the
    placement line kit printed."""
    recipe = work / f"scale_{load}.yaml"
    recipe.write_text(f"""competition: scale
data: {{normalize: dataset, load: {load}{f", limit: {args.train_limit}" if args.train_limit else ""}}}
model: {{name: {args.model}}}
train: {{epochs: 1, batch_size: {args.batch_size}, lr: 0.2, num_workers: 0, warmup_epochs: 0}}
augment: {{flip: true, pad_crop: 0}}
tta: {{views: [orig]}}
cv: {{folds: [0]}}
seed: 0
""")
    log = work / f"train_{load}.log"
    res = measure([sys.executable, "-m", "kaggle_kit", "train", str(recipe), "--force",
                   "--data-dir", str(work / "data"), "--runs-dir", str(work / "runs")],
                  log)
    run = work / "runs" / recipe.stem
    epoch = json.loads((run / "fold0" / "metrics.jsonl").read_text().splitlines()[-1])
    res["train_images_per_s"] = epoch.get("images_per_s")
    res["cv"] = json.loads((run / "summary.json").read_text()).get("cv")
    res["placement"] = next((ln for ln in log.read_text().splitlines()
                             if ln.startswith("data: ") and "MB:" in ln), "?")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="train images")
    ap.add_argument("--test", type=int, default=None, help="test images (default n/5)")
    ap.add_argument("--size", type=int, default=128, help="pixels (square)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    ap.add_argument("--train-limit", type=int, default=1024, help="data.limit of the train run (0: all)")
    ap.add_argument("--model", default="kit_resnet9_s")
    ap.add_argument("--batch-size", type=int, default=128, help="train.batch_size of the train run "
                    "(on CPU its activations are most of the peak RSS)")
    ap.add_argument("--loads", default="auto", help="data.load of each train run: auto,stream,device ('' = none)")
    ap.add_argument("--decode-bench", default="1,2,all", help="decode process counts to time ('' = none)")
    ap.add_argument("--read-pass", default="pread,memmap", help="read passes ('' = none)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    n_test = args.test if args.test is not None else args.n // 5
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"kit_scale_{args.n}_{args.size}_"))
    work.mkdir(parents=True, exist_ok=True)
    need = (args.n + n_test) * args.size**2 * 3 * 1.15
    free = shutil.disk_usage(work).free
    print(f"{args.n} + {n_test} images of {args.size} px in {work}; cache ~{need / 1e9:.1f} GB, "
          f"{free / 1e9:.0f} GB free; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
          flush=True)
    if need > free * 0.9:
        sys.exit("not enough disk for this size")
    try:
        print(f"generate: {generate(work / 'src', args.n, n_test, args.size):.0f} s", flush=True)
        fetch = measure([sys.executable, "-m", "kaggle_kit", "fetch", "scale", "--from",
                         str(work / "src"), "--data-dir", str(work / "data")], work / "fetch.log")
        print(f"fetch: {fetch['wall_s']} s, peak RSS {fetch['maxrss_mb']:.0f} MB", flush=True)
        cache_dir = work / "data" / "scale" / "cache"
        cache_mb = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) / 1e6
        print(f"cache: {cache_mb:.0f} MB", flush=True)
        workers = sorted({(os.cpu_count() or 1) if w == "all" else int(w)
                          for w in args.decode_bench.split(",") if w})
        rates = decode_rates(work / "data", workers)
        arr = cache_dir / "train_native.npy"
        reads = {}
        for how in filter(None, args.read_pass.split(",")):
            r = reads[how] = read_pass(arr, how, work / f"read_{how}.log")
            print(f"read pass ({how}): peak RSS {r['maxrss_mb']:.0f} MB, {r['rows_per_s']:.0f} rows/s",
                  flush=True)
        trains = {}
        for load in filter(None, args.loads.split(",")):  # '' = no train run
            tr = trains[load] = train(work, args, load)
            print(f"train (data.load={load}): {tr['wall_s']} s, peak RSS {tr['maxrss_mb']:.0f} MB, "
                  f"{tr['train_images_per_s']} train images/s, CV {tr['cv']}; {tr['placement']}",
                  flush=True)
        print(json.dumps({"n": args.n, "n_test": n_test, "size": args.size,
                          "fetch": fetch, "cache_mb": round(cache_mb), "decode_images_per_s": rates,
                          "read_pass": reads, "train": trains, "train_limit": args.train_limit,
                          "load_average": os.getloadavg()}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
