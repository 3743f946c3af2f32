"""A local double of the Kaggle API for the competition endpoints kit uses (tests, and trying
`kit fetch` offline). It is a real HTTP server; the REAL `kaggle` client talks to it.

With KAGGLE_API_ENVIRONMENT=LOCALHOST, kaggle 2.2.5 / kagglesdk send
`POST http://localhost/api/v1/competitions.CompetitionApiService/<Method>` (port 80) with a JSON
body (camelCase field names) and either HTTP basic auth KAGGLE_USERNAME:KAGGLE_KEY or
`Authorization: Bearer <access token>`; anything else is answered 401. Error responses are
JSON {"code": <status>, "message": ...}; the client raises requests.HTTPError(message).

Tokens (`issue_token()` -> an access token; `refresh_tokens` for `kaggle auth login`'s
credentials.json), served without auth like Kaggle's:
  security.OAuthService/IntrospectToken  {token} -> {"active", "username"}  (the client checks an
                      access token from KAGGLE_API_TOKEN / ~/.kaggle/access_token this way)
  users.AccountService/GenerateAccessToken {refreshToken, ...} -> {"token", "expiresIn",
                      "userName"} (401 for an unknown refresh token)

  ListDataFiles       {competitionName, pageSize, pageToken} -> {"files": [{"ref", "name",
                      "totalBytes", "creationDate"}], "nextPageToken"}  (the zip's entries)
  DownloadDataFiles   {competitionName} -> 302 Location: /files/<comp>.zip (the client follows it
                      as GET, streams the body; Range + If-Range resume, ETag, Last-Modified)
  StartSubmissionUpload {competitionName, fileName, contentLength, lastModifiedEpochSeconds}
                      -> {"token", "createUrl"}; the client then PUTs the file to createUrl
  CreateSubmission    {competitionName, blobFileTokens, submissionDescription}
                      -> {"message", "ref"}  (ref = submission id)
  ListSubmissions     {competitionName, sortBy, group, page, pageSize}
                      -> {"submissions": [{"ref", "date", "description", "fileName", "status":
                      PENDING|COMPLETE|ERROR, "publicScore" (str), "errorDescription"}], ...}

Competitions are `<comp>.zip` files in a folder; `<comp>.solution.csv` (Id,<label>) there, if
present, scores submissions (accuracy); else they end in ERROR "no solution". A submission stays
PENDING for `score_after_polls` ListSubmissions calls (None: until `finish_scoring()`).
Faults: `fail_next(status, ...)`, `rules_not_accepted.add(comp)`, `cut_downloads(n)`,
`stall_downloads()` + `release()`,
`daily_limit`. Counters: `uploads`, `calls`, `downloads`, `auths`.

Port 80 needs root and is shared by everything on the machine: `start(fallback=True)` then binds a
free port and serves as the HTTP proxy for http://localhost instead (HTTP_PROXY=`self.proxy`).

Standalone: python -m tests.kaggle_double --dir ../shared/competitions [--port 80]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import hashlib
import io
import itertools
import json
import secrets
import threading
import time
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

API = "/api/v1/competitions.CompetitionApiService/"
TOKEN_API = ("/api/v1/security.OAuthService/IntrospectToken",
             "/api/v1/users.AccountService/GenerateAccessToken")
RULES_MESSAGE = "You must accept this competition's rules before you'll be able to download files."
LIMIT_MESSAGE = ("Submission not allowed: Your team has used its daily Submission allowance ({n}) "
                 "today, please try again tomorrow UTC ({hours:.1f} hours from now).")
DEFAULT_MESSAGES = {400: "Bad request", 401: "Unauthenticated", 403: RULES_MESSAGE,
                    404: "Not found", 429: LIMIT_MESSAGE, 500: "Internal server error"}


class PortBusy(RuntimeError):
    """The port stayed in use (another test session's double?) for the whole wait."""


class KaggleDouble:
    """The server and its state. All state changes go through `self.lock`."""

    def __init__(self, folder: Path, username: str = "kit-user", key: str | None = None,
                 host: str = "127.0.0.1", port: int = 80):
        self.folder, self.username = Path(folder), username
        self.key = key or secrets.token_hex(16)
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.proxy: str | None = None  # set by start() when serving as a proxy
        self._etags: dict[Path, tuple[float, str]] = {}
        self.reset()

    # ------------------------------------------------------------------ control (tests call these)
    def reset(self) -> None:
        """No faults, no submissions, counters at zero, scoring after 1 poll."""
        with self.lock:
            self.faults: list[dict] = []
            self.rules_not_accepted: set[str] = set()
            self.cuts_left = 0
            self.stall_fraction: float | None = None
            self.released = getattr(self, "released", None) or threading.Event()
            self.released.set()
            self.cut_fraction = 0.5
            self.daily_limit: int | None = None
            self.score_after_polls: int | None = 1
            self.submissions: list[dict] = []
            self.blobs: dict[str, bytes] = {}
            self.uploads = 0  # PUTs received
            self.access_tokens: set[str] = set()  # accepted as `Authorization: Bearer <token>`
            self.refresh_tokens: set[str] = set()  # GenerateAccessToken turns these into access tokens
            self.auths: list[str] = []  # "basic" | "bearer" | "none" | "bad", per API call
            self.calls: list[str] = []  # API method names, in order
            self.downloads: list[dict] = []  # {"file", "range", "status", "sent"} per GET
            self._refs = itertools.count(1001)

    def fail_next(self, status: int, message: str | None = None, method: str | None = None,
                  times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next `times` API calls (of `method`, e.g. "CreateSubmission", or any) with
        HTTP `status` and JSON {"code": status, "message": message or a Kaggle-like default}."""
        msg = message or DEFAULT_MESSAGES.get(status, "error").format(n=5, hours=6.5)
        with self.lock:
            self.faults.append({"status": status, "message": msg, "method": method,
                                "times": times, "retry_after": retry_after})

    def issue_token(self) -> str:
        """A new access token for `self.username` (as Kaggle's settings page or a notebook gives)."""
        token = "KGAT_" + secrets.token_hex(16)
        with self.lock:
            self.access_tokens.add(token)
        return token

    def stall_downloads(self, fraction: float = 0.5) -> None:
        """The next file download sends `fraction` of its bytes, then holds the connection open
        until `release()` (a download killed mid-way: the test kills the client)."""
        with self.lock:
            self.stall_fraction = fraction
            self.released.clear()

    def release(self) -> None:
        self.released.set()

    def cut_downloads(self, n: int = 1, fraction: float = 0.5) -> None:
        """The next `n` file downloads send `fraction` of the bytes they promise, then hang up."""
        with self.lock:
            self.cuts_left, self.cut_fraction = n, fraction

    def finish_scoring(self) -> None:
        """Score every pending submission now (a poll that timed out can then be refreshed)."""
        with self.lock:
            for sub in self.submissions:
                if sub["status"] == "PENDING":
                    self._score(sub)

    @property
    def url(self) -> str:
        """Where the client sends requests: KaggleApi knows only http://localhost (port 80)."""
        return "http://localhost"

    def start(self, wait_s: float = 60.0, fallback: bool = False) -> KaggleDouble:
        """Bind host:port (retrying every second while busy, up to wait_s) and serve in a thread.

        fallback=True: if the port stays busy, or binding it is not allowed (port 80 needs root),
        bind a free port instead and serve as the HTTP proxy for http://localhost: `self.proxy`
        is then the value for HTTP_PROXY (requests honours it; the client's URLs are unchanged).
        """
        deadline = time.monotonic() + wait_s
        while self._httpd is None:
            try:
                self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
            except OSError as e:
                busy = e.errno == errno.EADDRINUSE and time.monotonic() < deadline
                if busy:
                    time.sleep(1.0)
                elif fallback and e.errno in (errno.EADDRINUSE, errno.EACCES):
                    self._httpd = ThreadingHTTPServer((self.host, 0), _Handler)
                else:
                    raise PortBusy(f"{self.host}:{self.port} busy or not allowed for "
                                   f"{wait_s:.0f} s ({e.strerror})") from e
        bound = self._httpd.server_address[1]
        self.proxy = None if bound == 80 else f"http://{self.host}:{bound}"
        self._httpd.daemon_threads = True
        self._httpd.double = self
        threading.Thread(target=self._httpd.serve_forever, daemon=True,
                         name="kaggle-double").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ------------------------------------------------------------------ state helpers
    def _take_fault(self, method: str) -> dict | None:
        with self.lock:
            for fault in self.faults:
                if fault["method"] in (None, method):
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _zip(self, comp: str) -> Path | None:
        path = self.folder / f"{comp}.zip"
        return path if comp and "/" not in comp and path.exists() else None

    def etag(self, path: Path) -> str:
        mtime = path.stat().st_mtime
        if self._etags.get(path, (None,))[0] != mtime:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            self._etags[path] = (mtime, f'"{h.hexdigest()[:32]}"')
        return self._etags[path][1]

    def _score(self, sub: dict) -> None:
        """Accuracy of the uploaded CSV against <comp>.solution.csv, or an ERROR with a reason."""
        sol_path = self.folder / f"{sub['competition']}.solution.csv"
        sub["status"] = "ERROR"
        if not sol_path.exists():
            sub["errorDescription"] = "no solution for this competition on the local double"
            return
        sol = pd.read_csv(sol_path, dtype=str, keep_default_na=False)
        try:
            got = pd.read_csv(io.BytesIO(sub["blob"]), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            sub["errorDescription"] = f"Could not parse submission file: {e}"
            return
        id_col, label_col = sol.columns[:2]
        if list(got.columns[:1]) != [id_col] or label_col not in got.columns:
            sub["errorDescription"] = f"Submission must have columns {id_col},{label_col}"
            return
        if len(got) != len(sol) or set(got[id_col]) != set(sol[id_col]):
            sub["errorDescription"] = (f"Submission must have {len(sol)} rows with the solution's "
                                       f"{id_col} values; found {len(got)} rows")
            return
        merged = sol.merge(got[[id_col, label_col]], on=id_col, suffixes=("", "_sub"))
        accuracy = float((merged[label_col] == merged[f"{label_col}_sub"]).mean())
        sub.update(status="COMPLETE", publicScore=f"{accuracy:.5f}", errorDescription=None)


class _Handler(BaseHTTPRequestHandler):
    """One request. HTTP/1.0: every response closes its connection (a cut is a plain hang-up)."""

    server_version = "KaggleDouble/1.0"

    @property
    def double(self) -> KaggleDouble:
        return self.server.double

    def log_message(self, fmt, *args) -> None:  # quiet: tests read the client's output
        pass

    def parse_request(self) -> bool:
        """Also accept proxy-style absolute URLs (`POST http://localhost/api/...`)."""
        ok = super().parse_request()
        if ok and self.path.startswith("http://"):
            parts = urlsplit(self.path)
            self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        return ok

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, retry_after: str | None = None) -> None:
        self._json(status, {"code": status, "message": message},
                   {"Retry-After": retry_after} if retry_after else None)

    def _auth_kind(self) -> str:
        """"basic" (the right username:key), "bearer" (a token issued here), "none" or "bad"."""
        auth = self.headers.get("Authorization", "")
        want = base64.b64encode(f"{self.double.username}:{self.double.key}".encode()).decode()
        if auth == f"Basic {want}":
            return "basic"
        if auth.startswith("Bearer ") and auth[7:] in self.double.access_tokens:
            return "bearer"
        return "bad" if auth else "none"

    def _token_api(self, path: str, req: dict) -> None:
        """IntrospectToken / GenerateAccessToken (no auth needed, as on Kaggle)."""
        d = self.double
        if path.endswith("IntrospectToken"):
            active = req.get("token") in d.access_tokens
            return self._json(200, {"active": active} | ({"username": d.username} if active else {}))
        if req.get("refreshToken") not in d.refresh_tokens:
            return self._error(401, "Unauthenticated: invalid refresh token")
        token = d.issue_token()
        self._json(200, {"token": token, "expiresIn": 43200, "userName": d.username})

    # ------------------------------------------------------------------ API (POST)
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self._body()
        if self.path.split("?")[0] in TOKEN_API:
            with self.double.lock:
                self.double.calls.append(self.path.rsplit("/", 1)[-1])
            return self._token_api(self.path, json.loads(body or b"{}"))
        if not self.path.startswith(API):
            return self._error(404, f"unknown endpoint {self.path}")
        method = self.path[len(API):].split("?")[0]
        with self.double.lock:
            self.double.calls.append(method)
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON")
        auth = self._auth_kind()
        with self.double.lock:
            self.double.auths.append(auth)
        if auth not in ("basic", "bearer"):
            return self._error(401, "Unauthenticated: invalid username, key or token")
        fault = self.double._take_fault(method)
        if fault:
            return self._error(fault["status"], fault["message"], fault["retry_after"])
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return self._error(404, f"method {method} not served by the local double")
        comp = req.get("competitionName", "")
        if self.double._zip(comp) is None:
            return self._error(404, f"Competition '{comp}' not found")
        if comp in self.double.rules_not_accepted:
            return self._error(403, RULES_MESSAGE)
        return handler(comp, req)

    def _api_DownloadDataFiles(self, comp: str, req: dict) -> None:  # noqa: N802
        self.send_response(302)
        self.send_header("Location", f"/files/{comp}.zip?token={secrets.token_hex(4)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _api_ListDataFiles(self, comp: str, req: dict) -> None:  # noqa: N802
        import zipfile

        with zipfile.ZipFile(self.double._zip(comp)) as zf:
            files = [{"ref": i.filename, "name": i.filename, "totalBytes": i.file_size,
                      "creationDate": datetime(*i.date_time).isoformat() + ".000Z"}
                     for i in zf.infolist() if not i.is_dir()]
        self._json(200, {"files": files, "nextPageToken": ""})

    def _api_StartSubmissionUpload(self, comp: str, req: dict) -> None:  # noqa: N802
        token = secrets.token_hex(8)
        with self.double.lock:
            self.double.blobs[token] = b""
        self._json(200, {"token": token, "createUrl": f"{self.double.url}/upload/{token}"})

    def _api_CreateSubmission(self, comp: str, req: dict) -> None:  # noqa: N802
        d = self.double
        with d.lock:
            blob = d.blobs.pop(req.get("blobFileTokens", ""), None)
            today = [s for s in d.submissions if s["competition"] == comp]
            if d.daily_limit is not None and len(today) >= d.daily_limit:
                return self._error(429, LIMIT_MESSAGE.format(n=d.daily_limit, hours=6.5), "23400")
            if blob is None:
                return self._error(400, "Submission blob token not found; upload the file first")
            sub = {"ref": next(d._refs), "competition": comp, "blob": blob, "polls": 0,
                   "status": "PENDING", "description": req.get("submissionDescription", ""),
                   "date": datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z",
                   "publicScore": None, "errorDescription": None}
            d.submissions.append(sub)
        self._json(200, {"message": f"Successfully submitted to {comp}", "ref": sub["ref"]})

    def _api_ListSubmissions(self, comp: str, req: dict) -> None:  # noqa: N802
        d, out = self.double, []
        with d.lock:
            for sub in reversed(d.submissions):  # newest first, as Kaggle sorts by date
                if sub["competition"] != comp:
                    continue
                sub["polls"] += 1
                if sub["status"] == "PENDING" and d.score_after_polls is not None \
                        and sub["polls"] >= d.score_after_polls:
                    d._score(sub)
                out.append({k: sub[k] for k in ("ref", "date", "description", "status",
                                                "publicScore", "errorDescription")
                            if sub[k] is not None} | {"fileName": "submission.csv"})
        self._json(200, {"submissions": out[: int(req.get("pageSize") or 20)],
                         "nextPageToken": ""})

    # ------------------------------------------------------------------ upload (PUT) + file (GET)
    def do_PUT(self) -> None:  # noqa: N802
        data = self._body()
        token = self.path.rsplit("/", 1)[-1]
        with self.double.lock:
            if not self.path.startswith("/upload/") or token not in self.double.blobs:
                return self._error(404, "upload URL expired or unknown")
            self.double.blobs[token] = data
            self.double.uploads += 1
        self._json(200, {})

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.split("?")[0].removeprefix("/files/").removesuffix(".zip")
        path = self.double._zip(name) if self.path.startswith("/files/") else None
        if path is None:
            return self._error(404, "Not found")
        size, etag = path.stat().st_size, self.double.etag(path)
        start, rng = 0, self.headers.get("Range", "")
        if rng.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(rng[6:].split("-")[0] or 0)
        if start >= size > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        with self.double.lock:
            cut = self.double.cuts_left > 0
            self.double.cuts_left -= cut
            fraction = self.double.cut_fraction
            stall, self.double.stall_fraction = self.double.stall_fraction, None
            if stall is not None:
                cut, fraction = True, stall
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
        self.end_headers()
        limit = start + int((size - start) * fraction) if cut else size
        sent = self._send_file(path, start, limit)
        if stall is not None:
            self.wfile.flush()
            self.double.released.wait(60)
        with self.double.lock:
            self.double.downloads.append({"file": path.name, "range": rng or None,
                                          "if_range": self.headers.get("If-Range"),
                                          "status": 206 if start else 200, "sent": sent,
                                          "cut": cut})

    def _send_file(self, path: Path, start: int, stop: int) -> int:
        sent = 0
        with open(path, "rb") as f, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            f.seek(start)
            while sent < stop - start:
                block = f.read(min(1 << 16, stop - start - sent))
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
        return sent


def main(argv: list[str] | None = None) -> None:
    """Serve a folder of <comp>.zip files until Ctrl-C, printing the env to point kit at it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="folder of <comp>.zip (+ .solution.csv)")
    p.add_argument("--port", type=int, default=80,
                   help="80: the client reaches it directly; another port: set HTTP_PROXY to it")
    p.add_argument("--user", default="kit-user")
    p.add_argument("--key", default=None, help="default: a random one, printed below")
    args = p.parse_args(argv)
    d = KaggleDouble(args.dir, args.user, args.key, port=args.port).start(wait_s=0)
    comps = sorted(z.stem for z in args.dir.glob("*.zip"))
    proxy = f" HTTP_PROXY={d.proxy}" if d.proxy else ""
    print(f"local Kaggle API double for {d.url} on port {d._httpd.server_address[1]} serving "
          f"{comps}; in another shell:\n  export KAGGLE_API_ENVIRONMENT=LOCALHOST "
          f"KAGGLE_USERNAME={d.username} KAGGLE_KEY={d.key}{proxy}\n"
          f"  (or, for a token: KAGGLE_API_TOKEN={d.issue_token()} instead of the two)\n"
          f"  kit fetch {comps[0] if comps else '<comp>'}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    d.stop()


if __name__ == "__main__":
    main()
