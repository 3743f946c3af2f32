"""The files `kit train` reads and writes in runs/<run>/ (docs/design.md section 1), for train.py.

Run folder checks (recipe.yaml of another recipe is refused), per-fold files (state.pt written
atomically after each epoch, metrics.jsonl, model.pt, oof.csv / test.csv, done.json) and the run
outputs (oof.csv, test.csv, summary.json, provenance.json, plots; results.py computes them). Flat
arguments, no training Ctx. Only rank 0 calls the writers. rundir.py names and reads the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.rundir import RunDir, model_dirs, run_kind
from kaggle_kit.workspace import CompetitionDir, sha256_file, write_csv, write_text

# ----------------------------------------------------------------------------- run folder (no torch)


def _has_results(run_dir: RunDir) -> bool:
    """Whether the folder holds anything a run produced (a checkpoint, a finished model, a
    summary): a folder with only recipe.yaml is a start that failed its checks."""
    return run_dir.summary_path.exists() or any(
        (d / f).exists() for d in model_dirs(run_dir) for f in ("state.pt", "done.json"))


def check_run_dir(run_dir: RunDir, recipe_text: str, resume: bool, force: bool,
                  comp: CompetitionDir | None = None) -> bool:
    """Refuse a folder kit did not make, a blend, or a run of another recipe (unless force,
    which starts that run over; a folder kit did not make is refused even then). `resume`
    also checks the run started on the folds and data `comp` holds now (provenance.json).
    Returns whether to resume. Deletes and writes nothing."""
    root, kind = run_dir.root, run_kind(run_dir.root)
    if root.exists() and not root.is_dir():
        raise KitError(f"{root}: is a file, not a run folder; choose another --name")
    if kind is None:
        if root.is_dir() and any(root.iterdir()):
            raise KitError(f"{root}: exists and was not made by kit train or kit blend (no "
                           "recipe.yaml or summary.json); choose another --name, or move it away")
        if resume:
            raise KitError(f"{root}: nothing to resume (no recipe.yaml); drop --resume")
        return False
    if kind == "blend":
        if not force or resume:
            raise KitError(f"{root}: holds a kit blend; choose another --name, or pass --force "
                           "(without --resume) to replace it with this training run")
        return False
    same = run_dir.recipe_path.exists() and run_dir.recipe_path.read_text() == recipe_text
    if not same and not force and _has_results(run_dir):
        raise KitError(f"{run_dir.recipe_path}: this run folder belongs to another recipe "
                       "(or other overrides); choose --name, or pass --force to overwrite it")
    if same and resume and comp is not None:
        check_resume_data(run_dir, comp)
    return resume and same


def check_resume_data(run_dir: RunDir, comp: CompetitionDir) -> None:
    """--resume continues models trained on the folds + data the run started with: refuse it
    when folds.csv or the competition's files changed since (e.g. `kit fetch --refold`)."""
    if not run_dir.provenance_path.exists():
        if _has_results(run_dir):
            raise KitError(f"{run_dir.provenance_path}: missing, so the folds this run started on "
                           "are unknown; rerun without --resume to start it over")
        return
    started, now = run_dir.provenance().get("data") or {}, data_hashes(comp)
    for key, what in (("folds_sha256", "folds.csv"), ("files_sha256", "the competition's files")):
        if started.get(key) != now[key]:
            raise KitError(f"{run_dir.root}: started on another {what} than {comp.root} holds now "
                           f"(e.g. after `kit fetch --refold`); its models saw other validation "
                           "images, so rerun without --resume to start it over (or use --name)")


def data_hashes(comp: CompetitionDir) -> dict:
    """{"folds_sha256", "files_sha256"}: what a run's models depend on (provenance.json)."""
    return {"folds_sha256": sha256_file(comp.folds_path), "files_sha256": comp.shipped_sha256()}


def prepare_run_dir(run_dir: RunDir, recipe_text: str, resume: bool, start_prov: dict) -> None:
    """Called once every check passed. Without --resume, delete what an earlier kit run wrote
    here (fold<k>/, refit<i>/ and the run files; nothing else); write recipe.yaml and the
    provenance of the start (data hashes, checked by a later --resume)."""
    import shutil

    run_dir.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        for d in model_dirs(run_dir):
            shutil.rmtree(d)
        for f in (run_dir.oof_path, run_dir.test_path, run_dir.summary_path, run_dir.confusion_png,
                  run_dir.curves_png, run_dir.provenance_path):
            f.unlink(missing_ok=True)
        run_dir.write_provenance(start_prov)
    elif not run_dir.provenance_path.exists():
        run_dir.write_provenance(start_prov)
    write_text(run_dir.recipe_path, recipe_text)


# ----------------------------------------------------------------------------- fold files


def cpu_state(net) -> dict:
    """A copy of `net`'s state_dict on the CPU (a snapshot that later steps do not change)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def save_state(fdir: Path, epoch: int, net, opt, sched, ema, best, acc) -> None:
    """fold<k>/state.pt after each epoch (atomic): all a resumed fold needs to continue."""
    import torch

    from kaggle_kit.workspace import atomic_path

    state = {"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
             "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
             "best": best, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    with atomic_path(fdir / "state.pt") as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # a file object: a full disk raises OSError ENOSPC, not RuntimeError


def restore(fdir: Path, net, opt, sched, ema, acc) -> tuple[int, dict | None]:
    """(first epoch to train, best-so-far) from fold<k>/state.pt, or (0, None) for a fresh fold
    (`acc`: the run's Accelerator). RNGs are re-seeded per epoch (train._seed_rngs), so the saved
    ones are for the record only."""
    import torch

    path = fdir / "state.pt"
    if not path.exists():
        if acc.is_main_process and (fdir / "metrics.jsonl").exists():
            (fdir / "metrics.jsonl").unlink()
        return 0, None
    state = torch.load(path, map_location=acc.device, weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    if acc.scaler is not None and state["scaler"] is not None:
        acc.scaler.load_state_dict(state["scaler"])
    if acc.is_main_process:  # drop metric lines of epochs after the checkpoint
        lines = (fdir / "metrics.jsonl").read_text().splitlines()[: state["epoch"]]
        write_text(fdir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    return state["epoch"], state["best"]


def append_metrics(fdir: Path, row: dict, epoch: int) -> None:
    """Append one epoch's row to fold<k>/metrics.jsonl (schema: docs/design.md section 1)."""
    import json

    fdir.mkdir(parents=True, exist_ok=True)
    with open(fdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def write_done(fdir: Path, net, config: dict, classes: list[str], val_ids: list[str] | None,
               val: np.ndarray | None, test_ids: list[str], test: np.ndarray, stats: dict) -> None:
    """model.pt (weights + `config`, what is needed to use them: train_setup.model_config), the
    fold's (n, C) predictions by Id (oof.csv without validation rows: a refit), done.json."""
    import torch

    from kaggle_kit.workspace import atomic_path, write_json

    with atomic_path(fdir / "model.pt") as tmp, open(tmp, "wb") as f:
        torch.save({"model": cpu_state(net), "config": config}, f)  # file object: ENOSPC is OSError
    if val is not None:
        write_csv(fdir / "oof.csv", pred_frame(val, val_ids, classes))
    write_csv(fdir / "test.csv", pred_frame(test, test_ids, classes))
    write_json(fdir / "done.json", stats)
    (fdir / "state.pt").unlink(missing_ok=True)


def check_finite(fdir: Path, val: np.ndarray | None, test: np.ndarray | None) -> None:
    """Refuse predictions with NaN / inf (weights that diverged in the last steps while the
    loss was still finite): the fold is not marked done and writes no oof/test rows."""
    for what, p in (("validation", val), ("test", test)):
        if p is not None and not np.isfinite(p).all():
            n = int((~np.isfinite(p)).any(axis=1).sum())
            raise KitError(f"{fdir}: {n} of {len(p)} {what} predictions are NaN or inf (the weights "
                           "diverged while the loss was finite); the model is not marked done: lower "
                           "train.lr or set train.mixed_precision=no and rerun")


def is_done(fdir: Path) -> bool:
    """Whether a model folder holds a finished model (done.json, written last, and test.csv)."""
    return (fdir / "test.csv").exists() and (fdir / "done.json").exists()


def read_done(fdir: Path, classes: list[str], val_ids: list[str] | None,
              test_ids: list[str]) -> dict:
    """A finished fold read back from its files, in the shape train_fold returns."""
    from kaggle_kit.workspace import read_json

    def read(path, ids):
        df = pd.read_csv(path, dtype={"Id": str}).set_index("Id")
        missing = pd.Index(ids).difference(df.index)
        if len(missing):
            raise KitError(f"{path}: lacks {len(missing)} Ids of this model (e.g. {missing[0]}); "
                           "the folds changed since it was trained: rerun without --resume")
        return df.loc[ids, classes].to_numpy(dtype=float)

    val = read(fdir / "oof.csv", val_ids) if val_ids is not None else None
    test = read(fdir / "test.csv", test_ids)
    check_finite(fdir, val, test)  # a fold marked done by an older kit with NaN predictions
    return {"val_ids": val_ids, "val": val, "test": test, "stats": read_json(fdir / "done.json")}


def pred_frame(p: np.ndarray, ids: list[str], classes: list[str]) -> pd.DataFrame:
    """(n, C) probabilities as a frame: Id, then one column per class value."""
    return pd.DataFrame(p, columns=classes).assign(Id=ids)[["Id", *classes]]


# ----------------------------------------------------------------------------- run outputs


def write_results(run_dir: RunDir, oof: pd.DataFrame, test: pd.DataFrame, classes: list[str],
                  summary: dict, provenance: dict, labels: pd.Series, task: str,
                  metric: str) -> None:
    """The run's outputs (results.summarize computes them): oof.csv (index Id: fold + class
    columns), test.csv (index Id: class columns), summary.json, provenance.json, and
    confusion.png + curves.png (from oof.csv, `labels` by Id and the folds' metrics.jsonl).
    Main process only."""
    from kaggle_kit import plots

    run_dir.write_oof(oof, classes)
    run_dir.write_test(test, classes)
    run_dir.write_summary(summary)
    run_dir.write_provenance(provenance)
    plots.write_run_plots(run_dir, labels, task=task, metric=metric)


def start_provenance(comp: CompetitionDir, seed: int) -> dict:
    """provenance.json of a run that started and has not finished (results.provenance replaces
    it at the end)."""
    from datetime import datetime, timezone

    return {"status": "running", "data": {"competition": comp.name, **data_hashes(comp)},
            "seed": seed, "start": datetime.now(timezone.utc).isoformat(timespec="seconds")}
