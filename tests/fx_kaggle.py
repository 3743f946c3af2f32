"""Fixtures for the Kaggle seam: the local Kaggle API double (real HTTP on 127.0.0.1:80, the port
the official client uses under KAGGLE_API_ENVIRONMENT=LOCALHOST), credential environments, and a
tiny hand-written competition + run for submission tests.

- `kaggle_server` (module; its folder `kaggle_files` is built once per session): the running double
  serving `<comp>.zip` from a tmp folder holding `tiny.zip`, the demo zip as `demo.zip` and
  `digits.zip` (+ solutions); animals15 / cifar10-mini from SHARED_COMPS when present. On port 80,
  or, when port 80 is busy/not allowed, on a free port acting as HTTP proxy for http://localhost.
- `kaggle_double` (function): the server reset to a clean state + env pointing the real client at
  it (KAGGLE_API_ENVIRONMENT=LOCALHOST, KAGGLE_USERNAME, KAGGLE_KEY, HOME -> empty tmp dir,
  HTTP_PROXY only in proxy mode).
- `no_kaggle_creds`: HOME -> empty tmp dir, every KAGGLE_* credential variable unset.
- `CONFIG_DIR`: KAGGLE_CONFIG_DIR for the whole session (where the client reads kaggle.json),
  emptied before each test that uses a fixture above.
- `tiny_comp` / `tiny_run`: data/tiny/ (competition.json + sample_submission.csv) and runs/tiny-run/
  (summary.json + test.csv) written by hand in tmp_path.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_kit.rundir import RunDir
from kaggle_kit.workspace import CompetitionDir, write_json
from tests.kaggle_double import KaggleDouble, PortBusy

TEST_USER = "kit-test-user"
TEST_KEY = "kt-0123456789abcdef-SECRET-KEY"  # tests assert this string is never printed
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
CRED_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USER",
             "KAGGLE_API_V1_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL",
             "XDG_CONFIG_HOME")

# KaggleApi reads KAGGLE_API_ENVIRONMENT and KAGGLE_CONFIG_DIR once, when `kaggle` is first
# imported, and kaggle_io never sets them on the client: fix both for the whole session before
# any test imports it. LOCALHOST: no test can reach the real Kaggle; CONFIG_DIR: a developer's
# own ~/.kaggle/kaggle.json never leaks into a test (tests write theirs here).
CONFIG_DIR = Path(tempfile.mkdtemp(prefix="kit-kaggle-config-"))
atexit.register(shutil.rmtree, CONFIG_DIR, True)
os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
os.environ["KAGGLE_CONFIG_DIR"] = str(CONFIG_DIR)

TINY_CLASSES = ["cat", "dog", "fox"]
TINY_IDS = [str(i) for i in (3, 10, 7, 1, 22, 5)]  # not sorted: order comes from the sample
TINY_SOLUTION = ["cat", "dog", "fox", "dog", "cat", "fox"]


def write_tiny_comp(data_dir: Path, name: str = "tiny", probs: bool = False) -> CompetitionDir:
    """data_dir/<name>/ with competition.json (schema: docs/design.md section 1) and sample_submission.csv.

    probs=True makes the sample ask for one probability column per class instead of a label.
    """
    root = Path(data_dir) / name
    (root / "files").mkdir(parents=True, exist_ok=True)  # Kaggle's files, apart from kit's
    cols = ["Id", *TINY_CLASSES] if probs else ["Id", "Category"]
    sample = pd.DataFrame({"Id": TINY_IDS})
    for c in cols[1:]:
        sample[c] = 0.0 if probs else "cat"
    sample.to_csv(root / "files" / "sample_submission.csv", index=False)
    write_json(root / "competition.json", {
        "name": name, "source": "files", "id_col": "Id", "label_col": "Category", "labels_csv": "train.csv",
        "train_dir": "train", "test_dir": "test", "ext": ".png",
        "sample_submission": "sample_submission.csv", "submission_columns": cols,
        "classes": TINY_CLASSES, "n_train": 0, "n_test": len(TINY_IDS),
        "image_sizes": {"32x32": len(TINY_IDS)}, "folds": {"k": 2, "seed": 0, "sha256": ""},
        "files": {}, "cache": {},
    })
    return CompetitionDir(root)


def write_tiny_run(runs_dir: Path, comp: str = "tiny", name: str = "tiny-run",
                   predicted: list[str] | None = None, cv: float = 0.75) -> RunDir:
    """runs_dir/<name>/ with summary.json and test.csv whose argmax is `predicted` (default: the
    solution with the last Id wrong, i.e. accuracy 5/6 against TINY_SOLUTION)."""
    predicted = predicted or [*TINY_SOLUTION[:-1], "cat"]
    run = RunDir(Path(runs_dir) / name)
    run.root.mkdir(parents=True, exist_ok=True)
    probs = np.full((len(TINY_IDS), len(TINY_CLASSES)), 0.1)
    for i, label in enumerate(predicted):
        probs[i, TINY_CLASSES.index(label)] = 0.8
    test = pd.DataFrame(probs, columns=TINY_CLASSES, index=pd.Index(TINY_IDS, name="Id")).iloc[::-1]
    run.write_test(test, TINY_CLASSES)  # reversed Id order: build_submission must reorder
    run.write_summary({"run": name, "kind": "blend", "method": "greedy", "competition": comp,
                       "classes": TINY_CLASSES, "metric": "accuracy",
                       "cv": {"accuracy": cv, "log_loss": 0.9, "accuracy_std": 0.01}})
    return run


def write_tiny_zip(folder: Path, name: str = "tiny") -> Path:
    """folder/<name>.zip (a sample_submission + 3 MB of padding: the client writes 1 MiB chunks, so a
    download cut halfway leaves a non-empty partial to resume) and
    folder/<name>.solution.csv for the double's scoring."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(folder / f"{name}.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("sample_submission.csv", "Id,Category\n" + "".join(f"{i},cat\n" for i in TINY_IDS))
        zf.writestr("padding.bin", rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes())
    pd.DataFrame({"Id": TINY_IDS, "Category": TINY_SOLUTION}).to_csv(
        folder / f"{name}.solution.csv", index=False)
    return folder / f"{name}.zip"


def _serve_dir(tmp: Path) -> Path:
    """A folder of competition zips for the double: tiny, demo + digits (the demo under a slug
    that `kit fetch` downloads), and links to the shared competitions (if present)."""
    from tests.conftest import SHARED_COMPS

    write_tiny_zip(tmp)
    try:
        from kaggle_kit import demo_data
        demo_data.build_demo_zip(tmp)
        demo_data.demo_solution().to_csv(tmp / "demo.solution.csv", index=False)
        # `kit fetch demo` is built offline; under another slug it is downloaded from the double
        shutil.copy(tmp / "demo.zip", tmp / "digits.zip")
        shutil.copy(tmp / "demo.solution.csv", tmp / "digits.solution.csv")
    except ImportError:
        pass
    for z in SHARED_COMPS.glob("*.zip") if SHARED_COMPS.exists() else []:
        (tmp / z.name).symlink_to(z)
    return tmp


@pytest.fixture(scope="session")
def kaggle_files(tmp_path_factory) -> Path:
    """The folder the double serves (built once per session)."""
    return _serve_dir(tmp_path_factory.mktemp("kaggle_files"))


@pytest.fixture(scope="module")
def kaggle_server(kaggle_files):
    """The local Kaggle API double, held for one test module at a time.

    It takes 127.0.0.1:80, where KaggleApi sends everything under KAGGLE_API_ENVIRONMENT=LOCALHOST.
    Port 80 is shared by every test session on the machine and needs root, so when it stays busy
    for KIT_TEST_PORT_WAIT seconds (default 10) or is not allowed (a GitHub runner), the double
    binds a free port and `kaggle_double` routes the client to it with HTTP_PROXY (same requests,
    same URLs). Skips, saying why, only if no port at all can be bound.
    """
    server = KaggleDouble(kaggle_files, username=TEST_USER, key=TEST_KEY)
    try:
        server.start(wait_s=float(os.environ.get("KIT_TEST_PORT_WAIT", "10")), fallback=True)
    except (PortBusy, OSError) as e:
        pytest.skip(f"local Kaggle API double not started: {e}")
    yield server
    server.stop()


def _clean_env(monkeypatch, home: Path) -> None:
    for var in CRED_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(CONFIG_DIR))
    for leftover in CONFIG_DIR.iterdir():  # another test's kaggle.json
        leftover.unlink()
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def kaggle_double(kaggle_server, monkeypatch, tmp_path):
    """The double, reset (no faults, no submissions, zero counters), with the real client's env
    pointing at it; restored after the test."""
    kaggle_server.reset()
    _clean_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", TEST_USER)
    monkeypatch.setenv("KAGGLE_KEY", TEST_KEY)
    for var in PROXY_VARS:  # port 80: straight to the double; else through it as the proxy
        monkeypatch.delenv(var, raising=False)
    if kaggle_server.proxy:
        monkeypatch.setenv("HTTP_PROXY", kaggle_server.proxy)
        monkeypatch.setenv("http_proxy", kaggle_server.proxy)
    yield kaggle_server
    kaggle_server.reset()


@pytest.fixture
def no_kaggle_creds(monkeypatch, tmp_path):
    """No credentials anywhere: HOME is an empty dir and every KAGGLE_* credential var is unset
    (KAGGLE_API_ENVIRONMENT=LOCALHOST so nothing could reach the real Kaggle anyway)."""
    _clean_env(monkeypatch, tmp_path / "empty_home")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    return tmp_path / "empty_home"


@pytest.fixture
def tiny_comp(tmp_path) -> CompetitionDir:
    """data/tiny/ in tmp_path: 3 classes, 6 test Ids, label-style sample submission."""
    return write_tiny_comp(tmp_path / "data")


@pytest.fixture
def tiny_run(tmp_path, tiny_comp) -> RunDir:
    """runs/tiny-run/ in tmp_path over `tiny_comp`: accuracy 5/6 against TINY_SOLUTION."""
    return write_tiny_run(tmp_path / "runs")


__all__ = ["CONFIG_DIR", "kaggle_files", "kaggle_server", "kaggle_double", "no_kaggle_creds", "tiny_comp", "tiny_run",
           "TEST_USER", "TEST_KEY", "TINY_CLASSES", "TINY_IDS", "TINY_SOLUTION",
           "write_tiny_comp", "write_tiny_run", "write_tiny_zip"]
