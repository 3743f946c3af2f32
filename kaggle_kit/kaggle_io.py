"""The one seam to Kaggle: the only module that imports `kaggle` (lazily: importing it authenticates).

Uses the official client (kaggle 2.x + kagglesdk) against `POST <endpoint>/api/v1/competitions.
CompetitionApiService/<Method>`; tests point it at a local double on http://localhost (port 80) with
KAGGLE_API_ENVIRONMENT=LOCALHOST. Every failure becomes a one-line KitError saying what to do.
The key is never put in a message: credentials travel only inside the client's HTTP basic auth, and
every message is scrubbed of the key anyway.

- download_competition(competition, dest_dir, force=False) -> Path of dest_dir/<comp>.zip
- submit_file(competition, csv_path, message) -> {"id", "message"}
- list_submissions(competition) -> [{"id", "status", "public_score", "error", "date", "description"}]
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kaggle_kit import KitError

CRED_HELP = ("set the KAGGLE_USERNAME and KAGGLE_KEY environment variables, or save "
             '{"username": ..., "key": ...} as ~/.kaggle/kaggle.json (chmod 600); '
             "create a key at https://www.kaggle.com/settings/api")
LIMIT_WORDS = ("daily submission", "submission allowance", "submission limit")


# ----------------------------------------------------------------------------- credentials


def _config_dir() -> Path:
    """Where the client looks for kaggle.json (same rule as kaggle 2.x, evaluated now)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return home


def _file_creds() -> dict:
    """kaggle.json's {"username", "key"} if readable, else {}."""
    try:
        data = json.loads((_config_dir() / "kaggle.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _has_credentials() -> bool:
    """True if the client will find a legacy key (env or kaggle.json) or an access token."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    creds = _file_creds()
    if (creds.get("username") or env.get("KAGGLE_USERNAME")) and (creds.get("key") or env.get("KAGGLE_KEY")):
        return True
    token_file = Path.home() / ".kaggle" / "access_token"
    return bool(env.get("KAGGLE_API_TOKEN")) or token_file.exists()


def _secrets() -> list[str]:
    keys = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN"), _file_creds().get("key")]
    return [k for k in keys if isinstance(k, str) and len(k) >= 4]


def _scrub(text: str) -> str:
    """`text` with any credential replaced by ***: belt and braces, messages never hold it."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return " ".join(text.split())  # one line


def check_credentials() -> None:
    """KitError (both ways to give credentials) unless the client will find some: callers check
    this before work that must not be half done (an upload, a download into a new folder)."""
    if not _has_credentials():
        raise KitError(f"no Kaggle credentials found: {CRED_HELP}")


def _pass_on_warnings(printed: str) -> None:
    """The client's own warnings (e.g. kaggle.json readable by other users) to stderr, scrubbed;
    the rest of what it prints while authenticating (help text) stays hidden."""
    for line in dict.fromkeys(printed.splitlines()):  # once each, in order
        if line.strip().lower().startswith("warning"):
            print(_scrub(line), file=sys.stderr, flush=True)


def _api():
    """An authenticated KaggleApi; KitError (both ways to give credentials) if there are none."""
    check_credentials()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # `import kaggle` authenticates and prints help
        from kaggle.api.kaggle_api_extended import KaggleApi
    api = KaggleApi()
    # KaggleApi reads its config dir and LOCALHOST switch once, when `kaggle` is first imported;
    # re-evaluate them now so the environment of this call is the one that counts.
    api.config_dir = str(_config_dir())
    api.config = os.path.join(api.config_dir, "kaggle.json")
    api.args = ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []
    try:
        with contextlib.redirect_stdout(printed):
            api.authenticate()
    except SystemExit:
        raise KitError(f"Kaggle credentials incomplete or unreadable: {CRED_HELP}") from None
    finally:
        _pass_on_warnings(printed.getvalue())
    return api


# ----------------------------------------------------------------------------- errors


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _resets(response) -> str:
    """When a daily submission limit resets: Retry-After if Kaggle sent it, else 00:00 UTC."""
    now = datetime.now(timezone.utc)
    after = response.headers.get("Retry-After") if response is not None else None
    if after and after.strip().isdigit():
        at = now + timedelta(seconds=int(after))
    else:
        at = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    hours = (at - now).total_seconds() / 3600
    return f"it resets at {at:%Y-%m-%d %H:%M} UTC (in {hours:.1f} h)"


def _explain(e: Exception, competition: str, doing: str) -> KitError:
    """Map a client/network/disk exception to one actionable line (never containing the key)."""
    if any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in _chain(e)):
        return KitError(_scrub(f"disk full while {doing}; free some space and rerun"))
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    reason = re.sub(r"\s+for url: \S+", "", str(e)) or type(e).__name__
    lower = reason.lower()
    if status == 401:
        msg = f"Kaggle rejected your credentials (401 Unauthorized) while {doing}: {CRED_HELP}"
    elif status == 429 or (status in (400, 403) and any(w in lower for w in LIMIT_WORDS)):
        msg = (f"daily submission limit reached for '{competition}' ({reason}); "
               f"{_resets(response)}")
    elif status == 403:
        msg = (f"Kaggle refused access to '{competition}' (403: {reason}); accept the competition "
               f"rules at https://www.kaggle.com/competitions/{competition}/rules and rerun")
    elif status == 404:
        msg = (f"competition '{competition}' not found on Kaggle (404); check the slug in "
               f"https://www.kaggle.com/competitions/<slug>")
    elif status == 400:
        msg = f"Kaggle rejected the request while {doing} (400): {reason}"
    elif status is not None:
        msg = f"Kaggle answered HTTP {status} while {doing}: {reason}; try again later"
    elif _is_dropped(e):
        msg = (f"connection to Kaggle dropped while {doing} ({type(e).__name__}); "
               f"check the network and rerun the same command (it resumes)")
    elif _is_unreachable(e):
        msg = (f"could not reach Kaggle while {doing} ({type(e).__name__}); check the network "
               f"(and KAGGLE_API_ENVIRONMENT, if set) and rerun")
    else:
        msg = f"Kaggle client failed while {doing}: {type(e).__name__}: {reason}"
    return KitError(_scrub(msg))


def _is_dropped(e: Exception) -> bool:
    """The connection broke mid-transfer (a partial body), as opposed to never being made."""
    import requests
    import urllib3.exceptions

    cut = (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
           urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout)
    size_mismatch = isinstance(e, ValueError) and "does not match expected size" in str(e)
    return size_mismatch or any(isinstance(x, cut) for x in _chain(e))


def _is_unreachable(e: Exception) -> bool:
    import requests

    net = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)
    return any(isinstance(x, net) for x in _chain(e))


# ----------------------------------------------------------------------------- operations


def download_competition(competition: str, dest_dir: Path, force: bool = False,
                         *, retries: int = 3) -> Path:
    """Download all files of `competition` as `dest_dir/<competition>.zip`; return that path.

    Shows the client's progress bar. The bytes land in `dest_dir/.<competition>.download/` and are
    moved onto the final name only once complete and a readable zip, so a partial download is
    never the final file; a rerun after a cut connection resumes it (HTTP Range, checked against
    the server's ETag) or starts over. An existing valid zip is kept unless `force`.
    `retries`: in-process retries of a dropped download (backoff 2, 4, 8... s) before giving up.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / f"{competition}.zip"
    if final.exists() and not force and zipfile.is_zipfile(final):
        return final
    api = _api()
    part_dir = dest_dir / f".{competition}.download"
    part = part_dir / f"{competition}.zip"
    try:
        part_dir.mkdir(parents=True, exist_ok=True)
        _download(api, competition, part, retries)
        if not zipfile.is_zipfile(part):
            part.unlink()
            raise KitError(f"{competition}: Kaggle sent a file that is not a zip; rerun to retry")
        os.replace(part, final)
    except KitError:
        _remove_empty(part_dir, dest_dir)
        raise
    except Exception as e:
        _remove_empty(part_dir, dest_dir)  # a partial zip stays (the rerun resumes it)
        raise _explain(e, competition, f"downloading {competition}.zip to {dest_dir}") from e
    shutil.rmtree(part_dir, ignore_errors=True)
    return final


def _remove_empty(*folders: Path) -> None:
    """rmdir each folder that is empty (401/403/404 before any byte: no empty .downloads/ left)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _download(api, competition: str, outfile: Path, retries: int) -> None:
    """`KaggleApi.competition_download_files` step by step, with our retry count: ask
    DownloadDataFiles (-> redirect to the file), then stream it with the client's resumable
    `download_file` (progress bar, Range resume, size check)."""
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    with api.build_kaggle_client() as kaggle:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = competition
        response = kaggle.competitions.competition_api_client.download_data_files(request)
        api.download_file(response, str(outfile), kaggle.http_client(), quiet=False, resume=True,
                          max_retries=retries)


def submit_file(competition: str, csv_path: Path, message: str) -> dict:
    """Upload `csv_path` to `competition` (upload URL, PUT, CreateSubmission) with `message`.

    Returns {"id": Kaggle's submission ref as str, "message": Kaggle's reply}. KitError on
    no credentials / 401 / 403 rules / 404 / daily limit (with reset time) / 400 reason / network.
    """
    api = _api()
    try:
        resp = api.competition_submit(str(csv_path), message, competition, quiet=True)
    except Exception as e:
        raise _explain(e, competition, f"submitting {Path(csv_path).name}") from e
    if not resp.ref:
        raise KitError(_scrub(f"{csv_path}: upload to Kaggle failed ({resp.message}); "
                              f"rerun `kit submit` to try again"))
    return {"id": str(resp.ref), "message": resp.message}


def list_submissions(competition: str) -> list[dict]:
    """Your submissions to `competition`, newest first, as dicts:
    {"id": str, "status": "pending"|"complete"|"error", "public_score": float | None,
     "error": str | None, "date": ISO str, "description": str}."""
    api = _api()
    try:
        subs = api.competition_submissions(competition, page_size=100) or []
    except Exception as e:
        raise _explain(e, competition, f"listing submissions of {competition}") from e
    return [{"id": str(s.ref), "status": s.status.name.lower(),
             "public_score": float(s.public_score) if s.public_score else None,
             "error": s.error_description or None,
             "date": s.date.isoformat() if s.date else "", "description": s.description or ""}
            for s in subs if s is not None]
