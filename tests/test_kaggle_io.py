"""kaggle_io against the local Kaggle API double, with the REAL kaggle client over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kaggle_kit import KitError, kaggle_io
from tests.conftest import REPO, SHARED_COMPS, requires_shared
from tests.fx_kaggle import CONFIG_DIR, TEST_KEY, TEST_USER
from tests.kaggle_double import KaggleDouble


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_success_then_noop_then_force(kaggle_double, tmp_path):
    dest = tmp_path / "dl"
    path = kaggle_io.download_competition("tiny", dest)
    assert path == dest / "tiny.zip"
    assert sha(path) == sha(kaggle_double.folder / "tiny.zip")
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.zip"]  # no partial/staging left
    assert len(kaggle_double.downloads) == 1

    assert kaggle_io.download_competition("tiny", dest) == path  # valid zip there: no request
    assert len(kaggle_double.downloads) == 1
    kaggle_io.download_competition("tiny", dest, force=True)
    assert len(kaggle_double.downloads) == 2
    assert sha(path) == sha(kaggle_double.folder / "tiny.zip")


@requires_shared
def test_download_shared_competition(kaggle_double, tmp_path):
    path = kaggle_io.download_competition("animals15", tmp_path)
    assert sha(path) == sha(SHARED_COMPS / "animals15.zip")


def test_killed_download_is_never_the_final_file_and_rerun_resumes(kaggle_double, tmp_path):
    """A download killed mid-way (the double holds the connection after half the bytes; the
    process is killed) leaves only the partial in the staging folder; a rerun asks for the
    missing bytes only (Range, If-Range = the ETag seen before)."""
    dest = tmp_path / "dl"
    size = (kaggle_double.folder / "tiny.zip").stat().st_size
    kaggle_double.stall_downloads(0.5)
    code = ("import sys; from pathlib import Path; from kaggle_kit import kaggle_io\n"
            "kaggle_io.download_competition('tiny', Path(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial_path = dest / ".tiny.download" / "tiny.zip"
    try:
        for _ in range(600):  # until the client wrote its first 1 MiB chunk (or 60 s)
            if partial_path.exists() and partial_path.stat().st_size > 0 or proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
        kaggle_double.release()
    assert not (dest / "tiny.zip").exists()  # the partial is never the final file
    partial = partial_path.stat().st_size
    assert 0 < partial < size

    path = kaggle_io.download_competition("tiny", dest, retries=0)
    assert sha(path) == sha(kaggle_double.folder / "tiny.zip")
    ranged = [d for d in kaggle_double.downloads if d["range"]]  # finishing order varies
    assert len(ranged) == 1, kaggle_double.downloads
    resumed = ranged[0]
    assert resumed["status"] == 206 and resumed["range"] == f"bytes={partial}-"
    assert resumed["if_range"] == kaggle_double.etag(kaggle_double.folder / "tiny.zip")
    assert resumed["sent"] == size - partial
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.zip"]


def test_server_error_on_the_api_call_is_retried(kaggle_double, tmp_path):
    """The client does not retry its DownloadDataFiles call itself; kit calls it again."""
    kaggle_double.fail_next(503, method="DownloadDataFiles")
    path = kaggle_io.download_competition("tiny", tmp_path, retries=1, backoff_s=0.0)
    assert sha(path) == sha(kaggle_double.folder / "tiny.zip")
    assert kaggle_double.calls.count("DownloadDataFiles") == 2


def test_cut_download_recovers_within_one_call(kaggle_double, tmp_path):
    kaggle_double.cut_downloads(1)
    path = kaggle_io.download_competition("tiny", tmp_path)  # the client retries once (~2 s)
    assert sha(path) == sha(kaggle_double.folder / "tiny.zip")


@pytest.mark.parametrize("setup, expected", [
    (lambda d: d.fail_next(401), r"rejected your credentials \(401.*KAGGLE_USERNAME.*kaggle\.json"),
    (lambda d: d.rules_not_accepted.add("tiny"),
     r"accept the competition rules at https://www\.kaggle\.com/competitions/tiny/rules"),
    (lambda d: d.fail_next(500), r"Kaggle answered HTTP 500 .*try again later"),
    (lambda d: d.fail_next(400, "Data download is closed"), r"\(400\): Data download is closed"),
])
def test_download_http_errors(kaggle_double, tmp_path, setup, expected):
    setup(kaggle_double)
    with pytest.raises(KitError, match=expected):
        kaggle_io.download_competition("tiny", tmp_path / "dl", retries=0)
    assert not (tmp_path / "dl" / "tiny.zip").exists()


def test_download_unknown_competition(kaggle_double, tmp_path):
    with pytest.raises(KitError, match=r"competition 'no-such-comp' not found on Kaggle \(404\)"):
        kaggle_io.download_competition("no-such-comp", tmp_path, retries=0)


def test_wrong_key_is_401_from_the_server(kaggle_double, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "not-the-key")
    with pytest.raises(KitError, match="401"):
        kaggle_io.list_submissions("tiny")


def test_no_credentials_names_both_ways(no_kaggle_creds, tmp_path):
    for call in (lambda: kaggle_io.download_competition("tiny", tmp_path),
                 lambda: kaggle_io.list_submissions("tiny"),
                 lambda: kaggle_io.submit_file("tiny", tmp_path / "x.csv", "m")):
        with pytest.raises(KitError) as e:
            call()
        msg = str(e.value)
        assert "no Kaggle credentials" in msg
        assert "KAGGLE_USERNAME" in msg and "KAGGLE_KEY" in msg and "~/.kaggle/kaggle.json" in msg


CREDENTIAL_FORMS = ["env key", "kaggle.json", "token env", "token env file", "access_token file",
                    "notebook token", "kaggle auth login"]


def _give_credentials(form: str, double: KaggleDouble, monkeypatch) -> str:
    """Set up one credential form the client accepts (and nothing else); return its secret."""
    home, token = Path(os.environ["HOME"]), double.issue_token()
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    if form != "env key":
        monkeypatch.delenv("KAGGLE_USERNAME")
        monkeypatch.delenv("KAGGLE_KEY")
    if form == "env key":
        return TEST_KEY
    if form == "kaggle.json":  # where the client looks: KAGGLE_CONFIG_DIR (else ~/.kaggle)
        (CONFIG_DIR / "kaggle.json").write_text(json.dumps({"username": TEST_USER, "key": TEST_KEY}))
        (CONFIG_DIR / "kaggle.json").chmod(0o600)
        return TEST_KEY
    if form == "token env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", token)
    elif form == "token env file":
        (home / "token.txt").write_text(token + "\n")
        monkeypatch.setenv("KAGGLE_API_TOKEN", str(home / "token.txt"))
    elif form == "access_token file":
        (home / ".kaggle" / "access_token").write_text(token)
    elif form == "notebook token":  # what a Kaggle notebook sets
        (home / "v1_token").write_text(token)
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
        monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://localhost/proxy")
        monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(home / "v1_token"))
    else:  # `kaggle auth login`: a refresh token, an expired access token
        token = "refresh-" + token
        double.refresh_tokens.add(token)
        (home / ".kaggle" / "credentials.json").write_text(json.dumps(
            {"refresh_token": token, "access_token": "old", "username": TEST_USER,
             "access_token_expiration": "2020-01-01T00:00:00+00:00", "scopes": []}))
    return token


@pytest.mark.parametrize("form", CREDENTIAL_FORMS)
def test_every_credential_form_the_client_accepts_reaches_the_server(kaggle_double, monkeypatch,
                                                                     tmp_path, form):
    """Each form passes kit's own check and reaches the double as the auth it stands for (the
    double answers 401 to anything else), and its secret is scrubbed from kit's messages."""
    secret = _give_credentials(form, kaggle_double, monkeypatch)
    assert kaggle_io.list_submissions("tiny") == []
    assert kaggle_double.auths == ["basic" if form in ("env key", "kaggle.json") else "bearer"]
    kaggle_double.fail_next(500, f"echo {secret}")
    with pytest.raises(KitError) as e:
        kaggle_io.list_submissions("tiny")
    assert "500" in str(e.value) and secret not in str(e.value)


def test_unknown_bearer_token_is_401(kaggle_double, monkeypatch):
    """A token the server never issued (credentials.json's unexpired access token is used as is)."""
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    (Path(os.environ["HOME"]) / ".kaggle").mkdir()
    (Path(os.environ["HOME"]) / ".kaggle" / "credentials.json").write_text(json.dumps(
        {"refresh_token": "r-unknown", "access_token": "a-unknown", "username": TEST_USER,
         "access_token_expiration": "2099-01-01T00:00:00+00:00", "scopes": []}))
    with pytest.raises(KitError, match=r"rejected your credentials \(401"):
        kaggle_io.list_submissions("tiny")
    assert kaggle_double.auths == ["bad"]


def test_kaggle_json_in_home_by_a_fresh_process(kaggle_double, tmp_path):
    """The usual setup: ~/.kaggle/kaggle.json, no variables; the client, first imported in a
    fresh process, finds it there (KAGGLE_CONFIG_DIR unset)."""
    home = Path(os.environ["HOME"])
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": TEST_USER, "key": TEST_KEY}))
    (home / ".kaggle" / "kaggle.json").chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")}
    code = "from kaggle_kit import kaggle_io; print(kaggle_io.list_submissions('tiny'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    assert kaggle_double.auths == ["basic"]


def test_invalid_token_is_one_line(kaggle_double, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_never-issued")
    with pytest.raises(KitError, match=r"credentials incomplete, unreadable or expired: run `kaggle"):
        kaggle_io.list_submissions("tiny")
    assert kaggle_double.calls == ["IntrospectToken"]


@pytest.mark.slow  # the client retries a failed write 5 times itself (2+4+8+16+32 s)
def test_disk_full_is_named(kaggle_double, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full absent: cannot make a real ENOSPC")
    staging = tmp_path / ".tiny.download"  # where download_competition streams the bytes
    staging.mkdir()
    (staging / "tiny.zip").symlink_to("/dev/full")  # every write: OSError(ENOSPC)
    with pytest.raises(KitError, match="disk full while downloading tiny.zip"):
        kaggle_io.download_competition("tiny", tmp_path, retries=0)
    assert not (tmp_path / "tiny.zip").exists()


def test_list_submissions_shape(kaggle_double, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("Id,Category\n3,cat\n10,dog\n7,fox\n1,dog\n22,cat\n5,fox\n")
    sub = kaggle_io.submit_file("tiny", csv, "all right")
    assert kaggle_double.uploads == 1
    (got,) = kaggle_io.list_submissions("tiny")
    assert got["id"] == sub["id"] and got["status"] == "complete" and got["public_score"] == 1.0
    assert set(got) == {"id", "status", "public_score", "error", "date", "description"}
    assert got["description"] == "all right" and got["error"] is None


@pytest.mark.parametrize("case", ["401", "403", "404", "nocreds"])
def test_kit_fetch_errors_one_line_and_key_never_printed(kaggle_double, tmp_path, monkeypatch, case):
    """`kit fetch` in a real subprocess: exit 1, one `error:` line, the key nowhere."""
    comp, expected = "tiny", {"401": "401", "403": "competitions/tiny/rules", "404": "404",
                              "nocreds": "no Kaggle credentials"}[case]
    if case == "401":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone-else")
    elif case == "403":
        kaggle_double.rules_not_accepted.add("tiny")
    elif case == "404":
        comp = "no-such-comp"
    else:
        monkeypatch.delenv("KAGGLE_USERNAME")
    out = subprocess.run([sys.executable, "-m", "kaggle_kit", "fetch", comp, "--data-dir",
                          str(tmp_path / "data")], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert expected in out.stderr
    assert TEST_KEY not in out.stdout + out.stderr
    assert not (tmp_path / "data" / comp).exists()  # nothing half-written
    assert not (tmp_path / "data" / ".downloads").exists()  # nor an empty downloads folder


def test_key_never_printed_in_a_traceback(kaggle_double, tmp_path):
    """Even uncaught (a traceback with the exception chain) after a cut download."""
    kaggle_double.fail_next(503, times=9)
    code = ("import sys; from pathlib import Path; from kaggle_kit import kaggle_io\n"
            "kaggle_io.download_competition('tiny', Path(sys.argv[1]), retries=1, backoff_s=0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=REPO, env=os.environ.copy(), timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr and "KitError" in out.stderr
    assert TEST_KEY not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- kit fetch end to end


def _kit(*args: str):
    from typer.testing import CliRunner

    from kaggle_kit.cli import app

    return CliRunner().invoke(app, list(args))


def test_kit_fetch_then_submit_through_the_double(kaggle_double, tmp_path):
    """`kit fetch digits` downloads with the real client through a dropped connection; a rerun is
    a no-op; a run predicting the hidden labels then scores 1.0 through `kit submit`."""
    data = tmp_path / "data"
    kaggle_double.cut_downloads(1)  # the client's own retry (~2 s later) resumes it
    result = _kit("fetch", "digits", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert kaggle_double.downloads[0]["cut"]  # then resumed with a ranged request (any order)
    assert [d["status"] for d in kaggle_double.downloads[1:] if d["range"]] == [206]
    meta = json.loads((data / "digits" / "competition.json").read_text())
    assert len(meta["classes"]) == 10 and meta["n_test"] == 359
    n_downloads = len(kaggle_double.downloads)
    assert _kit("fetch", "digits", "--data-dir", str(data)).exit_code == 0
    assert len(kaggle_double.downloads) == n_downloads  # verified, nothing downloaded again

    from kaggle_kit.demo_data import demo_solution
    from kaggle_kit.rundir import RunDir

    sol = demo_solution()
    run = RunDir(tmp_path / "runs" / "oracle")
    run.root.mkdir(parents=True)
    probs = pd.get_dummies(sol.set_index("Id")["Category"]).astype(float)[meta["classes"]]
    run.write_test(probs, meta["classes"])
    run.write_summary({"run": "oracle", "kind": "train", "competition": "digits",
                       "cv": {"accuracy": 1.0}})
    result = _kit("submit", str(run.root), "--data-dir", str(data),
                  "--submissions-dir", str(tmp_path / "subs"), "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "public score 1.00000" in result.output


@requires_shared
@pytest.mark.slow  # 8-15 s here (21 MB + 9,000 PNG decodes), more on a busy machine
def test_kit_fetch_animals15_from_the_double(kaggle_double, tmp_path):
    data = tmp_path / "data"
    result = _kit("fetch", "animals15", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    meta = json.loads((data / "animals15" / "competition.json").read_text())
    assert (len(meta["classes"]), meta["n_train"], meta["n_test"]) == (15, 7200, 1800)
    assert not list((data / ".downloads").glob(".*.download"))  # no staging left behind


# ----------------------------------------------------------------------------- the double itself


def test_double_lists_data_files_to_the_real_client(kaggle_double):
    files = kaggle_io._api().competition_list_files("tiny").files
    assert sorted(f.name for f in files) == ["padding.bin", "sample_submission.csv"]
    assert {f.name: f.total_bytes for f in files}["padding.bin"] == 3_000_000


def test_double_scores_and_explains_a_bad_file(kaggle_double, tmp_path):
    """Bypassing kit's validation: Kaggle's own reason comes back in list_submissions."""
    csv = tmp_path / "short.csv"
    csv.write_text("Id,Category\n3,cat\n")
    sub = kaggle_io.submit_file("tiny", csv, "too short")
    (got,) = kaggle_io.list_submissions("tiny")
    assert got["id"] == sub["id"] and got["status"] == "error" and got["public_score"] is None
    assert got["error"] == "Submission must have 6 rows with the solution's Id values; found 1 rows"


def test_double_daily_limit_with_retry_after(kaggle_double, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("Id,Category\n3,cat\n10,dog\n7,fox\n1,dog\n22,cat\n5,fox\n")
    kaggle_double.daily_limit = 1
    kaggle_io.submit_file("tiny", csv, "first")
    with pytest.raises(KitError, match=r"daily submission limit .*allowance \(1\).*\(in 6\.5 h\)"):
        kaggle_io.submit_file("tiny", csv, "second")


def test_double_as_proxy_when_port_80_is_taken(kaggle_double, kaggle_files, monkeypatch):
    """The fallback used where port 80 is busy or needs root (a GitHub runner): a second double
    on a free port, reached through HTTP_PROXY with the client's URLs unchanged."""
    with socket.socket() as busy:  # a port surely taken: port 80 may free up mid-run on a shared
        busy.bind(("127.0.0.1", 0))  # machine (seen: the second double got it, proxy None)
        busy.listen()
        second = KaggleDouble(kaggle_files, username=TEST_USER, key=TEST_KEY,
                              port=busy.getsockname()[1])
        second.start(wait_s=0, fallback=True)
    try:
        assert second.proxy is not None
        monkeypatch.setenv("HTTP_PROXY", second.proxy)
        monkeypatch.setenv("http_proxy", second.proxy)
        assert kaggle_io.list_submissions("tiny") == []
        assert second.calls == ["ListSubmissions"] and kaggle_double.calls == []
    finally:
        second.stop()


def test_unreachable_kaggle(kaggle_double, tmp_path, monkeypatch):
    """Nothing listening (a closed port as the proxy): 'could not reach', nothing written."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.setenv("http_proxy", closed)
    with pytest.raises(KitError, match=r"could not reach Kaggle while downloading tiny\.zip"):
        kaggle_io.download_competition("tiny", tmp_path / "dl", retries=0)
    assert not (tmp_path / "dl" / "tiny.zip").exists()
