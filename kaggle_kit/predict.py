"""`kit predict RUN_OR_EXPORT IMAGES`: a finished run (or its `kit export`) on new images.

The run (or export) is read as a tree by runtree.py: train runs are leaves, blends nodes with the
blender they kept. Images are decoded in chunks (never all at once) with the
run's cache size and fit (train_setup.cache_size) and predicted by `infer.predict_batch`, the same
function that made the run's OOF and test.csv: same normalisation stats (saved with each model),
resize, TTA views and mixed precision. Leaves are averaged over their models, blends recombine
their members with the kept blender (blenders.py's own classes), and the probabilities become a
submission through submit.py's builder and validator.

What the images are (`images_source`): a competition's test split (`data/<comp>` or its name),
a folder of images (Id = file name less the competition's extension), or a CSV of Ids (the
competition's id column, e.g. sample_submission.csv) whose images are in `image_dir`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError, train_setup
from kaggle_kit import recipe as recipes
from kaggle_kit.rundir import RunDir, load_model
from kaggle_kit.runtree import combine, leaf_key, leaves, open_source
from kaggle_kit.workspace import CompetitionDir, write_csv

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# ----------------------------------------------------------------------------- images


def images_source(images: Path, src: dict, data_dir: Path, image_dir: Path | None = None
                  ) -> tuple[list[str], list[Path], CompetitionDir | None]:
    """(Ids, image paths, the competition when IMAGES is its test split) for `kit predict`."""
    images, meta = Path(images), src["meta"]
    if not images.exists() and (Path(data_dir) / str(images) / "competition.json").is_file():
        images = Path(data_dir) / str(images)
    if (images / "competition.json").is_file():  # a fetched competition: its test split
        comp = CompetitionDir(images)
        ids = comp.test_ids()
        return ids, [comp.image_path("test", i) for i in ids], comp
    ext = meta.get("ext") or ""
    if images.is_file() and images.suffix.lower() == ".csv":
        ids = _csv_ids(images, meta)
        folder = image_dir or next((d for d in (images.parent / (meta.get("test_dir") or "."),)
                                    if d.is_dir()), images.parent)
        paths = [Path(folder) / f"{i}{ext}" for i in ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise KitError(f"{missing[0]}: image of Id {ids[paths.index(missing[0])]} (from "
                           f"{images}) not found ({len(missing)} missing); pass --image-dir")
        return ids, paths, None
    if images.is_dir():
        files = sorted(p for p in images.iterdir() if p.is_file()
                       and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise KitError(f"{images}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        ids = [p.name[: -len(ext)] if ext and p.name.endswith(ext) else
               (p.name if not ext else p.stem) for p in files]
        dup = pd.Series(ids)[pd.Series(ids).duplicated()]
        if len(dup):
            raise KitError(f"{images}: two images with Id {dup.iloc[0]}; keep one file per Id")
        return ids, files, None
    raise KitError(f"{images}: not a folder of images, a CSV of Ids or a fetched competition")


def _csv_ids(path: Path, meta: dict) -> list[str]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    col = next((c for c in (meta.get("id_col"), "Id", "id") if c in df.columns), df.columns[0])
    ids = df[col].tolist()
    if len(set(ids)) != len(ids):
        raise KitError(f"{path}: column {col} holds duplicate Ids")
    return ids


# ----------------------------------------------------------------------------- prediction


def _net(model_dir: Path, leaf: dict, device):
    """(net in eval mode, its model.pt config) from model.safetensors + config.json or model.pt."""

    state, cfg = load_model(model_dir)
    rec = leaf["recipe"]
    net = train_setup.build_net(recipes.Model(**cfg["model"]), len(cfg["classes"]),
                                cfg["img_size"], device, rec.train.channels_last, weights=False)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise KitError(f"{model_dir}: weights do not fit {cfg['model']['name']} "
                       f"({str(e).splitlines()[0][:150]})") from e
    return net.eval(), cfg


def _autocast(leaf: dict, device):
    """The autocast the run's test.csv was predicted under (Accelerate's mixed_precision as
    provenance.json recorded it, else what the recipe resolves to here) as a context factory.
    Full precision where this device lacks it (fp16 on a CPU, bf16 on a pre-Ampere GPU)."""
    import torch

    mp = leaf["precision"] or train_setup.precision(leaf["recipe"].train.mixed_precision)
    if mp == "no" or (device.type == "cpu" and mp == "fp16") or (
            mp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if mp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _decode(paths: list[Path], size_fit: tuple, leaf: dict, cfg: dict, pool,
            shipped: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Decode a chunk as the run's cache was: resized when decoded (data.resize: decode), else as
    shipped, which must then be the size the run saw: `shipped` (H, W), the competition's one
    image size (a non-square one is stretched to the net's square by to_input, as in training),
    else (img_size, img_size)."""
    from kaggle_kit import images

    size, fit = size_fit
    out = list(pool.map(lambda p: images.decode_image(p, size, fit), paths))
    data = leaf["recipe"].data
    if size is None and data.image_size is None:  # as shipped: the run only ever saw one size
        s = cfg["img_size"]
        want = shipped or (s, s)
        bad = next((i for i, a in enumerate(out) if a.shape[:2] != want), None)
        if bad is not None:
            h, w = out[bad].shape[:2]
            seen = f"{want[0]}x{want[1]}"
            raise KitError(f"{paths[bad]}: {h}x{w} pixels (HxW), but run {leaf['name']} saw images "
                           f"as shipped at {seen} (data.image_size unset); resize the images to "
                           f"{seen}, or retrain with data.image_size={s}")
    return out


def _leaf_chunk(leaf: dict, nets: list, arrays: list[np.ndarray], device) -> np.ndarray:
    """(B, C) mean over the leaf's models of predict_batch, images grouped by shape."""
    import torch

    from kaggle_kit.infer import predict_batch

    rec, out = leaf["recipe"], np.zeros((len(arrays), len(leaf["classes"])))
    shapes = sorted({a.shape for a in arrays})
    for shape in shapes:  # one shape unless data.resize: device with mixed sizes
        pos = [i for i, a in enumerate(arrays) if a.shape == shape]
        xb = torch.from_numpy(np.stack([arrays[i] for i in pos])).to(device)
        ps = [predict_batch(net, xb, torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1),
                            torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1),
                            cfg["img_size"], rec.train.channels_last, rec.tta.views,
                            leaf["task"], _autocast(leaf, device)).cpu().numpy()
              for net, cfg in nets]
        out[pos] = np.mean(ps, axis=0)
    return out


def predict_tree(tree: dict, paths: list[Path], comp: CompetitionDir, batch_size: int = 256,
                 progress: bool = True) -> np.ndarray:
    """(len(paths), C) probabilities of the tree (classes in tree["classes"] order), decoding
    `batch_size` images at a time per decode size. `comp`: the run's competition (its
    competition.json's image sizes decide, as in training, whether images are resized when
    decoded)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    leafs = leaves(tree)
    nets = {leaf_key(lf): [_net(d, lf, device) for d in lf["models"]] for lf in leafs}
    probs = {leaf_key(lf): np.zeros((len(paths), len(lf["classes"]))) for lf in leafs}
    sizes = list(comp.meta().get("image_sizes") or {})  # ["HxW", ...] as fetch recorded them
    shipped = tuple(int(v) for v in sizes[0].split("x")) if len(sizes) == 1 else None
    bar = train_setup.progress_bars(progress, transient=True)
    task = bar.add_task("predict", total=len(paths))
    with bar, torch.no_grad(), ThreadPoolExecutor(8) as pool:
        for i in range(0, len(paths), batch_size):
            chunk, decoded = paths[i: i + batch_size], {}
            for lf in leafs:
                size = train_setup.cache_size(lf["recipe"], comp, lambda *_: None)  # (size, fit)
                if size not in decoded:  # leaves sharing a decode size decode once
                    decoded[size] = _decode(chunk, size, lf, nets[leaf_key(lf)][0][1], pool,
                                            shipped)
                probs[leaf_key(lf)][i: i + len(chunk)] = _leaf_chunk(lf, nets[leaf_key(lf)],
                                                                 decoded[size], device)
            bar.advance(task, len(chunk))
    return combine(tree, probs)


# ----------------------------------------------------------------------------- the command


def predict(source: Path, images: Path, *, out: Path = Path("submission.csv"),
            probs_out: Path | None = None, image_dir: Path | None = None, batch_size: int = 256,
            data_dir: Path = Path("data"), runs_dir: Path = Path("runs"),
            progress: bool = True) -> dict:
    """`kit predict`: the run or export `source` on `images` (see images_source). Writes the
    validated submission to `out` (and the test.csv-shaped probabilities to `probs_out`).
    Returns {"out", "probs_out", "n_images", "probs": DataFrame index Id, one column per class}."""
    src = open_source(Path(source), Path(data_dir), Path(runs_dir))
    tree = src["tree"]
    if sorted(tree["classes"]) != sorted(src["meta"]["classes"]):
        raise KitError(f"{tree['root']}: classes {tree['classes']} differ from competition "
                       f"{src['meta'].get('name')}'s {src['meta']['classes']}")
    ids, paths, comp = images_source(Path(images), src, Path(data_dir), image_dir)
    if comp is not None and comp.classes != src["meta"]["classes"]:
        raise KitError(f"{comp.root}: another competition ({comp.name}) than the run's "
                       f"({src['meta'].get('name')}): other classes")
    run_comp = src["comp"] or CompetitionDir(src["export"])  # export: its competition.json
    probs = pd.DataFrame(predict_tree(tree, paths, run_comp, batch_size, progress),
                         columns=tree["classes"], index=pd.Index(ids, name="Id"))
    sub = submission(probs, src, comp, str(out))
    write_csv(out, sub)
    if probs_out is not None:
        write_csv(probs_out, probs.reset_index())
    return {"out": Path(out), "probs_out": probs_out, "n_images": len(ids), "probs": probs}


def submission(probs: pd.DataFrame, src: dict, comp: CompetitionDir | None,
               where: str) -> pd.DataFrame:
    """submit.py's build_submission + validate_submission on `probs` (index Id, class columns).
    Images outside a fetched competition get one made for them: the run's competition.json and
    its sample's columns, with these Ids."""
    from kaggle_kit.submission import build_submission, validate_submission

    with tempfile.TemporaryDirectory(prefix="kit-predict-") as tmp:
        if comp is None:
            comp = _adhoc_comp(Path(tmp), src, probs.index.tolist())
        run = RunDir(Path(tmp) / "predictions")
        run.write_test(probs, list(probs.columns))
        sub = build_submission(run, comp)
        validate_submission(sub, comp, where)
    return sub


def _adhoc_comp(tmp: Path, src: dict, ids: list[str]) -> CompetitionDir:
    meta, sample = dict(src["meta"]), src["sample"]
    first = sample.iloc[0] if len(sample) else pd.Series("", index=sample.columns)
    df = pd.DataFrame({c: ids if c == meta["id_col"] else [first[c]] * len(ids)
                       for c in sample.columns})
    comp = CompetitionDir(tmp / "competition")
    write_csv(comp.root / "sample_submission.csv", df)
    meta.pop("index", None)  # test Ids = this sample's, not a fetched test_index.csv
    meta.update(sample_submission="sample_submission.csv", source=str(comp.root),
                n_test=len(ids))
    comp.write_meta(meta)
    return comp
