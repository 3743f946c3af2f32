"""The one seam to Kaggle: the only module that imports `kaggle` (lazily: importing it authenticates).

Uses the official client (kaggle>=2.0 + kagglesdk) only through its public calls, configured only
through the environment; tests point it at a local double on http://localhost (port 80) with
KAGGLE_API_ENVIRONMENT=LOCALHOST. Every failure becomes a one-line KitError saying what to do.
Credentials (any form the client accepts) travel only inside the client's HTTP auth, and every
message is scrubbed of every key and token anyway.

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
import time
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kaggle_kit import KitError

CRED_HELP = ("run `kaggle auth login`, or set KAGGLE_API_TOKEN to a token from "
             "https://www.kaggle.com/settings/api (or save it as ~/.kaggle/access_token), or set "
             "KAGGLE_USERNAME and KAGGLE_KEY, or save {\"username\": ..., \"key\": ...} as "
             "~/.kaggle/kaggle.json (chmod 600)")
LIMIT_WORDS = ("daily submission", "submission allowance", "submission limit")


# ----------------------------------------------------------------------------- credentials
# kit accepts exactly what the client accepts, asking the client's own readers (kit's check makes
# no request; `import kaggle` itself authenticates, which checks a token with Kaggle):
# an access token (KAGGLE_API_TOKEN value or file, ~/.kaggle/access_token, the notebook's
# KAGGLE_API_V1_TOKEN file), a legacy key (KAGGLE_USERNAME/KAGGLE_KEY, kaggle.json, or a mix),
# or the OAuth ~/.kaggle/credentials.json written by `kaggle auth login`.
# KaggleApi reads KAGGLE_CONFIG_DIR (where kaggle.json is) and KAGGLE_API_ENVIRONMENT once, when
# `kaggle` is first imported (no public way to change them later; kit sets nothing on the client):
# a `kit` process has its environment from the start; tests fix both once per session.


def _client_class(printed: io.StringIO | None = None):
    """The KaggleApi class; `import kaggle` authenticates and prints help, captured in `printed`."""
    with contextlib.redirect_stdout(printed or io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def _legacy_config(printed: io.StringIO | None = None) -> dict:
    """The client's view of kaggle.json overlaid with KAGGLE_* variables ({"username", "key"...})."""
    api = _client_class(printed)()
    with contextlib.redirect_stdout(printed or io.StringIO()):  # its chmod warning: see _api
        return api.read_config_environment(api.read_config_file(quiet=True))


def _oauth_tokens() -> list[str]:
    """Refresh + access token of ~/.kaggle/credentials.json (`kaggle auth login`), if any."""
    from kagglesdk.kaggle_creds import KaggleCredentials

    try:
        data = json.loads(Path(KaggleCredentials.DEFAULT_CREDENTIALS_FILE).expanduser().read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or not data.get("refresh_token"):
        return []  # the client ignores a file without a refresh token
    return [str(data["refresh_token"]), str(data.get("access_token") or "")]


def _access_token() -> str | None:
    from kagglesdk import get_access_token_from_env

    return get_access_token_from_env()[0]


def _has_credentials() -> bool:
    """True if the client will find credentials in any form it accepts (see above)."""
    config = _legacy_config()
    return bool(_access_token() or (config.get("username") and config.get("key"))
                or _oauth_tokens())


def _secrets() -> list[str]:
    """Every credential string the client could send: never to appear in a message."""
    keys = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN"), _access_token(),
            _legacy_config().get("key"), *_oauth_tokens()]
    return [k for k in keys if isinstance(k, str) and len(k) >= 4]


def _scrub(text: str) -> str:
    """`text` with any credential replaced by ***: belt and braces, messages never hold it."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return " ".join(text.split())  # one line


def check_credentials() -> None:
    """KitError (every way to give credentials) unless the client will find some: callers check
    this before work that must not be half done (an upload, a download into a new folder)."""
    if not _has_credentials():
        raise KitError(f"no Kaggle credentials found: {CRED_HELP}")


def _pass_on_warnings(printed: str) -> None:
    """The client's own warnings (e.g. kaggle.json readable by other users) to stderr, scrubbed;
    the rest of what it prints while authenticating (help text) stays hidden."""
    for line in dict.fromkeys(printed.splitlines()):  # once each, in order
        if line.strip().lower().startswith("warning"):
            print(_scrub(line), file=sys.stderr, flush=True)


def _api(competition: str = ""):
    """An authenticated KaggleApi, configured only through the environment; KitError (every way
    to give credentials) if there are none or the client refuses them."""
    check_credentials()
    printed = io.StringIO()
    api = _client_class(printed)()
    try:
        with contextlib.redirect_stdout(printed):
            api.authenticate()
    except SystemExit:
        raise KitError(f"Kaggle credentials incomplete, unreadable or expired: {CRED_HELP}") from None
    except Exception as e:  # a token is checked with Kaggle (IntrospectToken) while authenticating
        raise _explain(e, competition, "checking your Kaggle credentials") from e
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
                         *, retries: int = 2, backoff_s: float = 2.0) -> Path:
    """Download all files of `competition` as `dest_dir/<competition>.zip`; return that path.

    Through the client's public `competition_download_files` (its progress bar; it retries a
    dropped stream itself, 5 times, resuming with HTTP Range checked against the server's ETag).
    The bytes land in `dest_dir/.<competition>.download/` and are moved onto the final name only
    once complete and a readable zip, so a partial download is never the final file; a rerun
    after a killed download resumes it. An existing valid zip is kept unless `force`.
    `retries`: further calls after a failure the client does not retry (the API call itself
    dropped or unreachable, HTTP 5xx, a short file), waiting backoff_s, 2*backoff_s... seconds.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / f"{competition}.zip"
    if final.exists() and not force and zipfile.is_zipfile(final):
        return final
    api = _api(competition)
    part_dir = dest_dir / f".{competition}.download"
    try:
        part_dir.mkdir(parents=True, exist_ok=True)
        part = _download(api, competition, part_dir, retries, backoff_s)
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


def _download(api, competition: str, part_dir: Path, retries: int, backoff_s: float) -> Path:
    """`api.competition_download_files` into part_dir, called again (backoff) after a transient
    failure; returns the downloaded file. force=False: the client resumes a partial there."""
    for attempt in range(retries + 1):
        try:
            api.competition_download_files(competition, path=str(part_dir), force=False,
                                           quiet=False)
            break
        except Exception as e:
            if attempt == retries or not _is_transient(e):
                raise
            time.sleep(backoff_s * 2 ** attempt)
    # the client names the file <competition>.<extension of the URL Kaggle redirects to>
    found = [p for p in part_dir.glob(f"{competition}.*") if not p.name.endswith(".kaggle-partial")]
    if len(found) != 1:
        raise KitError(f"{competition}: the Kaggle client left {len(found)} files in {part_dir} "
                       f"instead of one zip; delete that folder and rerun")
    return found[0]


def _is_transient(e: Exception) -> bool:
    """Worth another call: a dropped or unreachable connection, a short file, HTTP 5xx."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return status >= 500
    return _is_dropped(e) or _is_unreachable(e)


def submit_file(competition: str, csv_path: Path, message: str) -> dict:
    """Upload `csv_path` to `competition` (upload URL, PUT, CreateSubmission) with `message`.

    Returns {"id": Kaggle's submission ref as str, "message": Kaggle's reply}. KitError on
    no credentials / 401 / 403 rules / 404 / daily limit (with reset time) / 400 reason / network.
    """
    api = _api(competition)
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
    api = _api(competition)
    try:
        subs = api.competition_submissions(competition, page_size=100) or []
    except Exception as e:
        raise _explain(e, competition, f"listing submissions of {competition}") from e
    return [{"id": str(s.ref), "status": s.status.name.lower(),
             "public_score": float(s.public_score) if s.public_score else None,
             "error": s.error_description or None,
             "date": s.date.isoformat() if s.date else "", "description": s.description or ""}
            for s in subs if s is not None]
