"""`kit predict RUN_OR_EXPORT IMAGES`: a finished run (or its `kit export`) on new images.

The run is read as a tree: a train run is a leaf (its recipe + the models its test.csv averages,
summary.json `test_members`), a blend run a node over its member runs with the blender it kept
(weights, or the stack's coefficients). Images are decoded in chunks (never all at once) with the
run's cache size and fit (train_setup.cache_size) and predicted by `train.predict_batch`, the same
function that made the run's OOF and test.csv: same normalisation stats (saved with each model),
resize, TTA views and mixed precision. Leaves are averaged over their models, blends recombine
their members with the kept blender (blend.py's own classes), and the probabilities become a
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

from kaggle_kit import KitError, __version__, train_setup
from kaggle_kit import recipe as recipes
from kaggle_kit.workspace import CompetitionDir, RunDir, read_json, sha256_file, write_csv

EXPORT_FORMAT = 1  # manifest.json "format": bump when the export layout changes
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# ----------------------------------------------------------------------------- the run tree


def load_tree(root: Path, resolve) -> dict:
    """The prediction tree of run folder `root` (a train or blend run, or one inside an export).

    Leaf: {"kind": "train", "name", "root", "classes", "task", "recipe": Recipe,
           "models": [model dir], "precision": provenance.json's mixed_precision or None}.
    Node: {"kind": "blend", "name", "root", "classes", "task", "summary", "members": [tree]}.
    `resolve(path_text, blend_root)` finds a blend member's folder."""
    run = RunDir(Path(root))
    s = run.summary()
    kind, classes = s.get("kind"), s.get("classes")
    if kind == "blend":
        members = [load_tree(resolve(m["path"], run.root), resolve) for m in s["members"]]
        return {"kind": "blend", "name": run.name, "root": run.root, "classes": classes,
                "task": s.get("task", "multiclass"), "summary": s, "members": members}
    if kind != "train" or not classes:
        raise KitError(f"{run.summary_path}: not a finished kit train or kit blend run "
                       f"(kind {kind!r}); give a run folder or a kit export")
    names = s.get("test_members") or _default_members(run, s.get("test_from", "folds"))
    models = [run.fold_dir(m) for m in names]
    for d in models:
        if not (d / "model.safetensors").is_file() and not (d / "model.pt").is_file():
            raise KitError(f"{d / 'model.pt'}: missing weights of {d.name}, one of the models "
                           f"{run.test_path.name} averages; retrain it (kit train --resume) or "
                           "export the run again")
    prov = run.provenance() if run.provenance_path.is_file() else {}
    return {"kind": "train", "name": run.name, "root": run.root, "classes": classes,
            "task": s.get("task", "multiclass"), "recipe": recipes.load(run.recipe_path),
            "models": models, "precision": prov.get("mixed_precision")}


def _default_members(run: RunDir, test_from: str) -> list[str]:
    """Runs written before summary.json had `test_members`: the fold/refit dirs test_from names."""
    dirs = sorted(p.name for p in run.root.iterdir() if p.is_dir()
                  and p.name.startswith(("fold", "refit")))
    return [d for d in dirs if test_from == "both" or d.startswith(test_from[:4])]


def leaves(tree: dict) -> list[dict]:
    """The train runs of a tree, each once (by folder), in tree order."""
    if tree["kind"] == "train":
        return [tree]
    out, seen = [], set()
    for m in tree["members"]:
        for leaf in leaves(m):
            if _key(leaf) not in seen:
                seen.add(_key(leaf))
                out.append(leaf)
    return out


def open_source(path: Path, data_dir: Path, runs_dir: Path) -> dict:
    """{"tree", "meta": competition.json dict, "sample": sample_submission head, "comp":
    CompetitionDir or None, "export": root or None} of a run folder (or run name under runs_dir)
    or of a `kit export` folder (checked: format, kit version, every file's sha256)."""
    path = Path(path)
    if not path.exists() and (Path(runs_dir) / str(path)).exists():
        path = Path(runs_dir) / str(path)
    if (path / "manifest.json").is_file():
        return _open_export(path)
    if not (path / "summary.json").is_file():
        raise KitError(f"{path}: neither a run folder (no summary.json) nor a kit export "
                       "(no manifest.json)")

    def resolve(text: str, blend_root: Path) -> Path:
        p = Path(text)
        for cand in (p, blend_root.parent / p.name, Path(runs_dir) / p.name):
            if (cand / "summary.json").is_file():
                return cand
        raise KitError(f"{blend_root / 'summary.json'}: member run {text} not found (nor under "
                       f"{blend_root.parent}); run kit predict from where kit blend ran")

    tree = load_tree(path, resolve)
    comp = CompetitionDir.open(data_dir, RunDir(path).summary()["competition"])
    return {"tree": tree, "meta": comp.meta(), "sample": comp.sample_submission().head(5),
            "comp": comp, "export": None}


def _open_export(root: Path) -> dict:
    man = read_json(root / "manifest.json")
    if man.get("format") != EXPORT_FORMAT or man.get("kit_version") != __version__:
        raise KitError(f"{root / 'manifest.json'}: made by kit {man.get('kit_version')} (export "
                       f"format {man.get('format')}), this is kit {__version__} (format "
                       f"{EXPORT_FORMAT}); install the export's own wheel: pip install --no-index "
                       f"--find-links {root / 'wheels'} kaggle_kit=={man.get('kit_version')}")
    for rel, sha in man["files"].items():
        f = root / rel
        if not f.is_file():
            raise KitError(f"{f}: missing from the export (listed in manifest.json); upload the "
                           "whole folder that kit export wrote, or export again")
        if sha256_file(f) != sha:
            raise KitError(f"{f}: sha256 differs from manifest.json (corrupted or edited); "
                           "upload the folder kit export wrote again")
    tree = load_tree(root / man["run"], lambda text, _b: root / text)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    return {"tree": tree, "meta": read_json(root / "competition.json"), "sample": sample,
            "comp": None, "export": root}


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
    import torch

    st, pt = model_dir / "model.safetensors", model_dir / "model.pt"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            state, cfg = load_file(st), read_json(model_dir / "config.json")
        else:
            saved = torch.load(pt, map_location="cpu", weights_only=True)
            state, cfg = saved["model"], saved["config"]
    except KitError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / foreign file: one line
        raise KitError(f"{st if st.is_file() else pt}: unreadable weights ({type(e).__name__}: "
                       f"{str(e)[:120]}); export the run again") from e
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


def _decode(paths: list[Path], size_fit: tuple, leaf: dict, cfg: dict, pool) -> list[np.ndarray]:
    """Decode a chunk as the run's cache was: resized when decoded (data.resize: decode), else as
    shipped, which must then be the size the run saw (device mode resizes on the device)."""
    from kaggle_kit import images

    size, fit = size_fit
    out = list(pool.map(lambda p: images.decode_image(p, size, fit), paths))
    data = leaf["recipe"].data
    if size is None and data.image_size is None:  # as shipped: the run only ever saw one size
        s = cfg["img_size"]
        bad = next((i for i, a in enumerate(out) if a.shape[:2] != (s, s)), None)
        if bad is not None:
            h, w = out[bad].shape[:2]
            raise KitError(f"{paths[bad]}: {h}x{w} pixels, but run {leaf['name']} saw images "
                           f"as shipped at {s}x{s} (data.image_size unset); resize the images to "
                           f"{s}x{s}, or retrain with data.image_size={s}")
    return out


def _leaf_chunk(leaf: dict, nets: list, arrays: list[np.ndarray], device) -> np.ndarray:
    """(B, C) mean over the leaf's models of predict_batch, images grouped by shape."""
    import torch

    from kaggle_kit.train import predict_batch

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
    nets = {_key(lf): [_net(d, lf, device) for d in lf["models"]] for lf in leafs}
    probs = {_key(lf): np.zeros((len(paths), len(lf["classes"]))) for lf in leafs}
    bar = train_setup.progress_bars(progress, transient=True)
    task = bar.add_task("predict", total=len(paths))
    with bar, torch.no_grad(), ThreadPoolExecutor(8) as pool:
        for i in range(0, len(paths), batch_size):
            chunk, decoded = paths[i: i + batch_size], {}
            for lf in leafs:
                size = train_setup.cache_size(lf["recipe"], comp, lambda *_: None)  # (size, fit)
                if size not in decoded:  # leaves sharing a decode size decode once
                    decoded[size] = _decode(chunk, size, lf, nets[_key(lf)][0][1], pool)
                probs[_key(lf)][i: i + len(chunk)] = _leaf_chunk(lf, nets[_key(lf)],
                                                                 decoded[size], device)
            bar.advance(task, len(chunk))
    return combine(tree, probs)


def combine(tree: dict, probs: dict) -> np.ndarray:
    """The tree's (n, C) probabilities from its leaves' (keyed by _key), blends recombined."""
    if tree["kind"] == "train":
        return probs[_key(tree)]
    classes = tree["classes"]
    P = [pd.DataFrame(combine(m, probs), columns=m["classes"])[classes].to_numpy()
         for m in tree["members"]]
    return blender(tree).predict_proba(P)


def _key(leaf: dict) -> str:
    return str(Path(leaf["root"]).resolve())


def blender(node: dict):
    """The fitted blender a blend run kept, rebuilt from its summary.json (blenders.py's classes,
    so the probabilities are computed exactly as the blend's test.csv was)."""
    from kaggle_kit import blenders

    s, n_classes, task = node["summary"], len(node["classes"]), node["task"]
    names, where = [m["run"] for m in s["members"]], node["root"] / "summary.json"
    if s.get("weights"):
        model = blenders.MeanBlender(task=task)
        model.weights_ = np.array([s["weights"][n] for n in names], dtype=float)
        return model
    c = s.get("coefficients")
    if not c:
        raise KitError(f"{where}: neither weights nor coefficients; blend the runs again")
    model = blenders.StackBlender(C=c["C"], task=task)
    model.n_classes_ = n_classes
    if task == "multilabel":  # one binary model per class on the members' logits
        if any(v is None for v in c["per_class"].values()):
            raise KitError(f"{where}: a class of the stack model was constant in the OOF rows "
                           "(its rate is not saved); blend with a method other than stack")
        model.models_ = [(_logistic(c["C"], [v["coef"]], [v["intercept"]], 2), 0.0)
                         for v in (c["per_class"][k] for k in node["classes"])]
        return model
    from sklearn.preprocessing import StandardScaler

    coef = np.asarray(c["coef"], dtype=float)  # (C, m*C); (1, m*2) for two classes
    if len(coef) != n_classes and not (len(coef) == 1 and n_classes == 2):
        raise KitError(f"{where}: the stack model knows {len(coef)} of {n_classes} classes; "
                       "blend with a method other than stack")
    model.scaler_ = StandardScaler()
    model.scaler_.mean_ = np.asarray(c["feature_mean"], dtype=float)
    model.scaler_.scale_ = np.asarray(c["feature_scale"], dtype=float)
    model.scaler_.var_ = model.scaler_.scale_ ** 2
    model.scaler_.n_features_in_ = coef.shape[1]
    model.model_ = _logistic(c["C"], coef, c["intercept"], n_classes)
    return model


def _logistic(C: float, coef, intercept, n_classes: int):
    """A fitted sklearn LogisticRegression from saved coefficients (classes 0..n_classes-1)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C)
    model.coef_ = np.asarray(coef, dtype=float)
    model.intercept_ = np.asarray(intercept, dtype=float)
    model.classes_ = np.arange(n_classes)
    model.n_features_in_ = model.coef_.shape[1]
    return model


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
    from kaggle_kit.submit import build_submission, validate_submission

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
