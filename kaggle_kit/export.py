"""`kit export RUN [--out DIR]`: a self-contained folder to upload as a Kaggle dataset, so a
notebook with the internet off can `pip install` kit from it and `kit predict` with it.

    DIR/manifest.json           format, kit version, the top run, sha256 of every other file
    DIR/README.md               the notebook cells
    DIR/competition.json        the competition's kit metadata (classes, class names, id column,
                                submission format); DIR/sample_submission.csv: the sample's head
    DIR/runs/<run>/             one folder per run of the tree (a blend and all its members):
        recipe.yaml, summary.json   (a blend's members[].path rewritten to runs/<member>),
        provenance.json         (train runs: mixed precision, device, versions, git sha)
        <model>/model.safetensors + config.json   the models test.csv averages (model.pt's
                                    weights and config: normalisation stats, input size, classes)
    DIR/wheels/kaggle_kit-<version>-py3-none-any.whl   `pip wheel --no-deps` of this kit

An export reads exactly like the run folder it came from (runtree.load_tree), so `kit predict`
has one code path for both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kaggle_kit import KitError, __version__
from kaggle_kit.rundir import RunDir, export_model
from kaggle_kit.runtree import EXPORT_FORMAT, open_source
from kaggle_kit.workspace import read_json, sha256_file, write_json, write_text

README = """# {run}: a kit export ({kind} run of `{comp}`, kit {version})

Upload this folder as a Kaggle dataset (say `{slug}`), add it and the competition to a notebook,
turn the internet off, and run these two cells:

```
!pip install --no-index --find-links /kaggle/input/{slug}/wheels kaggle_kit
!kit predict /kaggle/input/{slug} /kaggle/input/{comp}/{sample} --out /kaggle/working/submission.csv
```

The second cell predicts every Id of the competition's sample submission (its images are found in
`/kaggle/input/{comp}/{test_dir}`; `--image-dir` names another folder) with the models, TTA views
and blend weights that made the run's test.csv, and writes a validated `submission.csv`.
`pip` installs kit only: torch, timm and kit's other dependencies come from the Kaggle image
(if pip names a missing one, add `--no-deps` or put that package's wheel in `wheels/`).
`kit predict` checks every file of this folder against manifest.json before it starts.
"""


def export(run: Path, out: Path | None = None, *, data_dir: Path = Path("data"),
           runs_dir: Path = Path("runs")) -> dict:
    """Write the export of `run` (a train or blend run, or a run name under runs_dir) to `out`
    (default exports/<run>): built in a temp folder next to it, then renamed, so a failed export
    leaves nothing half-written. An existing export at `out` is replaced; any other folder is
    refused. Returns {"out", "files", "bytes", "wheel", "seconds"}."""
    t0 = time.time()
    src = open_source(Path(run), Path(data_dir), Path(runs_dir))
    if src["export"] is not None:
        raise KitError(f"{run}: is already an export; upload it as it is")
    tree = src["tree"]
    out = Path(out) if out is not None else Path("exports") / tree["name"]
    if out.exists() and not (out / "manifest.json").is_file():
        raise KitError(f"{out}: exists and is not a kit export; choose another --out")
    if out.exists() and (extra := _foreign_files(out)):
        raise KitError(f"{out}: an earlier export, but {extra[0]} (+{len(extra) - 1} more) is not "
                       "one of its files; move them away or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        top = _write_tree(tree, tmp, {})
        meta = {k: v for k, v in src["meta"].items() if k not in ("files", "shipped_files", "file_check", "cache", "source", "index", "origin")}
        write_json(tmp / "competition.json", meta)
        src["sample"].to_csv(tmp / "sample_submission.csv", index=False)
        wheel = build_wheel(tmp / "wheels")
        write_text(tmp / "README.md", README.format(
            run=tree["name"], kind=tree["kind"], comp=meta.get("name"), version=__version__,
            slug=f"kit-{tree['name']}".lower().replace("_", "-"),
            sample=Path(meta.get("sample_submission", "sample_submission.csv")).name,
            test_dir=meta.get("test_dir") or "test"))
        files = {p.relative_to(tmp).as_posix(): sha256_file(p)
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / "manifest.json", {
            "format": EXPORT_FORMAT, "kit_version": __version__, "run": top, "kind": tree["kind"],
            "competition": meta.get("name"), "classes": tree["classes"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": out, "files": len(files) + 1, "bytes": size, "wheel": out / "wheels" / wheel,
            "seconds": round(time.time() - t0, 1)}


def _foreign_files(out: Path) -> list[str]:
    """Files under an earlier export `out` that its manifest.json does not list (a user's notes,
    a second run copied in): replacing the export would delete them."""
    listed = set(read_json(out / "manifest.json").get("files") or {}) | {"manifest.json"}
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).as_posix() not in listed)


def _write_tree(tree: dict, dest: Path, done: dict) -> str:
    """Write `tree`'s run folders under dest/runs/ (each run once); returns its relative folder."""
    key = str(Path(tree["root"]).resolve())
    if key in done:
        return done[key]
    name, k = tree["name"], 1
    while (dest / "runs" / name).exists():  # two runs of one name (in different runs dirs)
        k += 1
        name = f"{tree['name']}-{k}"
    rel = done[key] = f"runs/{name}"
    folder = dest / rel
    folder.mkdir(parents=True)
    run, out = RunDir(tree["root"]), RunDir(folder)
    summary = run.summary()
    if tree["kind"] == "blend":
        for m, member in zip(summary["members"], tree["members"], strict=True):
            m["path"] = _write_tree(member, dest, done)
    else:
        shutil.copyfile(run.recipe_path, out.recipe_path)
        if run.provenance_path.is_file():  # the precision test.csv was predicted under
            keep = ("mixed_precision", "device", "versions", "git")
            out.write_provenance({k: v for k, v in run.provenance().items() if k in keep})
        for model_dir in tree["models"]:
            export_model(model_dir, out.fold_dir(model_dir.name))
    out.write_summary(summary)
    return rel


def build_wheel(dest: Path) -> str:
    """`pip wheel --no-deps` of this kaggle_kit's source into `dest` (offline: no build isolation,
    the installed setuptools builds it). Built from a temp copy so the source tree stays clean.
    Returns the wheel's file name."""
    src = Path(__file__).resolve().parents[1]
    if not (src / "pyproject.toml").is_file():
        raise KitError(f"{src}: kaggle_kit's source (pyproject.toml) is not here, so no wheel can "
                       "be built; export from a clone installed with `pip install -e .`")
    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src / "kaggle_kit", copy / "kaggle_kit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for f in ("pyproject.toml", "README.md", "LICENSE"):
            if (src / f).is_file():
                shutil.copyfile(src / f, copy / f)
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                            "--no-build-isolation", "-q", "-w", str(dest), str(copy)],
                           capture_output=True, text=True)
    wheels = sorted(p.name for p in dest.glob("kaggle_kit-*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise KitError(f"pip wheel of {src} failed: {last}; is setuptools installed?")
    return wheels[0]
