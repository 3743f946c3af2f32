"""`runs/<run>/`: the files of a run folder (docs/design.md section 1), named and read here.

`RunDir` names every file of a run folder and reads / writes the run-level ones (oof.csv,
test.csv, summary.json, provenance.json, estimate.json); the functions below read the per-model
ones (fold<k>/ and refit<i>/: metrics.jsonl, model.pt, or model.safetensors + config.json in an
export). kit train's writers (checkpoints, fold files, the run's results) are in runfiles.py;
together the two are the only code that opens a file inside a run folder. No torch at import.

Ids are always strings (read with dtype=str) and are joined, never matched by position.
Probability columns are named by class value, never by index.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kaggle_kit import KitError
from kaggle_kit.workspace import read_json, write_csv, write_json

_MODEL_DIR = re.compile(r"(fold|refit)\d+")  # the only sub-folders kit writes in a run folder


def run_kind(root: Path) -> str | None:
    """Which command made the folder `root`: "train" (recipe.yaml, or summary.json kind train),
    "blend" (summary.json kind blend), or None (absent, empty, or not a kit run folder)."""
    root = Path(root)
    summary = root / "summary.json"
    if summary.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            kind = json.loads(summary.read_text()).get("kind")
            if kind in ("train", "blend"):
                return kind
    return "train" if (root / "recipe.yaml").is_file() else None



def _prob_frame(path: Path, classes: list[str] | None, extra: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise KitError(f"{path}: not found; is this a finished run (kit train / kit blend)?")
    df = pd.read_csv(path, dtype={"Id": str})
    if "Id" not in df.columns:
        raise KitError(f"{path}: no 'Id' column")
    if df["Id"].duplicated().any():
        dup = df.loc[df["Id"].duplicated(), "Id"].iloc[0]
        raise KitError(f"{path}: Id {dup} appears more than once")
    prob_cols = [c for c in df.columns if c not in ("Id", *extra)]
    if classes is not None and sorted(prob_cols) != sorted(classes):
        missing = sorted(set(classes) - set(prob_cols))
        unknown = sorted(set(prob_cols) - set(classes))
        raise KitError(f"{path}: class columns differ from the competition's: "
                       f"missing {missing}, unknown {unknown}")
    cols = list(classes) if classes is not None else prob_cols
    return df[["Id", *extra, *cols]].set_index("Id")


@dataclass(frozen=True)
class RunDir:
    """`runs/<run>/` as written by `kit train` and `kit blend` (same shape for both)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    recipe_path = property(lambda self: self.root / "recipe.yaml")
    provenance_path = property(lambda self: self.root / "provenance.json")
    oof_path = property(lambda self: self.root / "oof.csv")
    test_path = property(lambda self: self.root / "test.csv")
    summary_path = property(lambda self: self.root / "summary.json")
    confusion_png = property(lambda self: self.root / "confusion.png")
    curves_png = property(lambda self: self.root / "curves.png")
    estimate_path = property(lambda self: self.root / "estimate.json")  # kit estimate's result

    def fold_dir(self, k: int | str) -> Path:
        """Per-fold folder (`fold0`, ..., or `refit0`): checkpoints, metrics.jsonl, resume state."""
        name = k if isinstance(k, str) else f"fold{k}"
        return self.root / name

    def write_oof(self, oof: pd.DataFrame, classes: list[str]) -> None:
        """oof: index Id, columns fold + one probability column per class."""
        df = oof.reset_index()[["Id", "fold", *classes]]
        if df["Id"].duplicated().any():
            raise KitError(f"{self.oof_path}: refusing to write duplicate Ids")
        write_csv(self.oof_path, df)

    def write_test(self, test: pd.DataFrame, classes: list[str]) -> None:
        """test: index Id, one probability column per class."""
        write_csv(self.test_path, test.reset_index()[["Id", *classes]])

    def read_oof(self, classes: list[str] | None = None) -> pd.DataFrame:
        """oof.csv indexed by Id: column `fold` then class columns (in `classes` order if given)."""
        return _prob_frame(self.oof_path, classes, ("fold",))

    def read_test(self, classes: list[str] | None = None) -> pd.DataFrame:
        """test.csv indexed by Id: class columns (in `classes` order if given)."""
        return _prob_frame(self.test_path, classes, ())

    def summary(self) -> dict:
        return read_json(self.summary_path)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def provenance(self) -> dict:
        return read_json(self.provenance_path)

    def write_provenance(self, prov: dict) -> None:
        write_json(self.provenance_path, prov)

    def write_estimate(self, result: dict) -> None:
        write_json(self.estimate_path, result)


# ----------------------------------------------------------------------------- model folders


def model_dirs(run_dir: RunDir) -> list[Path]:
    """The fold<k>/ and refit<i>/ folders kit wrote (not e.g. a user's `fold_notes/`)."""
    if not run_dir.root.is_dir():
        return []
    return sorted(p for p in run_dir.root.iterdir() if p.is_dir() and _MODEL_DIR.fullmatch(p.name))


def finished_model(run_root: Path) -> Path | None:
    """The model.pt a run folder stands for as pretrained weights: refit0's, else fold0's."""
    return next((p for p in (Path(run_root) / "refit0" / "model.pt",
                             Path(run_root) / "fold0" / "model.pt") if p.is_file()), None)


def read_metrics(model_dir: Path) -> list[dict]:
    """A model folder's metrics.jsonl: one dict per epoch (schema: docs/design.md section 1);
    [] when it has none (a blend, a fold that has not finished an epoch)."""
    path = Path(model_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def has_weights(model_dir: Path) -> bool:
    """Whether a model folder holds finished weights (model.pt, or model.safetensors in an export)."""
    return (model_dir / "model.safetensors").is_file() or (model_dir / "model.pt").is_file()


def load_model(model_dir: Path) -> tuple[dict, dict]:
    """(state_dict on the CPU, config) of a finished model: model.safetensors + config.json (an
    export) or model.pt ({"model", "config"}: model spec, competition, classes, img_size,
    mean, std). An unreadable file is a one-line KitError."""
    import torch

    st, pt = model_dir / "model.safetensors", model_dir / "model.pt"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(st), read_json(model_dir / "config.json")
        saved = torch.load(pt, map_location="cpu", weights_only=True)
        return saved["model"], saved["config"]
    except KitError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / foreign file: one line
        raise KitError(f"{st if st.is_file() else pt}: unreadable weights ({type(e).__name__}: "
                       f"{str(e)[:120]}); export the run again") from e


def model_competition(path: Path) -> str | None:
    """The competition a kit model.pt was trained on: its config (kit >= 0.1 writes it) or, for a
    fold / refit model inside a run folder, that run's summary.json; None for other weights."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        name = (saved.get("config") or {}).get("competition") if isinstance(saved, dict) else None
    except Exception:  # noqa: BLE001 - not a kit checkpoint (safetensors, foreign pickle)
        name = None
    run = RunDir(path.parent.parent)
    if name is None and path.name == "model.pt" and run.summary_path.is_file():
        name = run.summary().get("competition")
    return name


def export_model(model_dir: Path, dest: Path) -> None:
    """model.pt -> dest/model.safetensors (the weights) + dest/config.json (what predict needs
    with them): an export holds no pickles."""
    from safetensors.torch import save_file

    state, cfg = load_model(model_dir)
    dest.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, dest / "model.safetensors",
              metadata={"format": "pt"})
    write_json(dest / "config.json", cfg)


def estimate_runs(parent: Path) -> list[tuple[Path, dict]]:
    """(run folder, estimate.json's dict) of every `kit estimate` run folder in `parent` whose
    estimate.json reads as a JSON object, by folder name."""
    out = []
    for path in sorted(Path(parent).glob("*/estimate.json")):
        with contextlib.suppress(OSError, ValueError):
            est = json.loads(path.read_text())
            if isinstance(est, dict):
                out.append((path.parent, est))
    return out
