"""Loopback HTTP servers that behave like the checkpoint bucket and the Hugging Face Hub.

Both listen on ``127.0.0.1`` on a free port, run in a background thread, log every request
and can be told to misbehave per path. Tests use them, and so does the notebooks' offline
smoke mode::

    from augreg_nb.loopback import FakeBucket, FakeHub

    with FakeBucket(folder) as bucket:                   # serves folder/<name> at bucket.url
        os.environ["AUGREG_NB_BUCKET_URL"] = bucket.url
        bucket.set("x.npz", status=403)                  # refuse, like the real bucket
        bucket.set("y.npz", cut_after=1000, times=1)     # first answer breaks after 1000 bytes
        bucket.set("z.npz", delay=0.5)                   # a slow body
        bucket.set("l.npz", redirect="/l.npz")           # a redirect (here: a loop)
        ...
        bucket.requests                                  # [Request(method, path, headers)]

    with FakeHub() as hub:                               # HF_ENDPOINT=hub.url
        hub.add_file("timm/vit_tiny_patch16_224.augreg_in21k", "model.safetensors", data)
        hub.files("me/model")                            # what uploads committed there

The bucket answers like Google Cloud Storage's public URL: ``Content-Length``, ``ETag``,
``Last-Modified``, ``x-goog-hash: md5=...``, ``Range`` requests (206 with
``Content-Range``, 416 past the end) and ``If-Range`` (the whole object, 200, when the
validator no longer matches), XML error bodies. The Hub answers
``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` with the headers
``huggingface_hub.hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``) and 404s carrying ``X-Error-Code``. It also takes
uploads as ``huggingface_hub.HfApi.create_repo`` and ``upload_folder`` send them (``POST
/api/repos/create``, ``/api/models/{repo_id}/preupload/{revision}`` and ``/commit/{revision}``
with an NDJSON body): every file is asked for as a regular (base64) file, so no LFS or Xet
storage is involved, and a write without ``Authorization`` is refused with 401 as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_GCS_ERRORS = {
    403: ("AccessDenied", "Access denied.",
          "Anonymous caller does not have storage.objects.get access to the Google Cloud "
          "Storage object. Permission 'storage.objects.get' denied on resource (or it may "
          "not exist)."),
    404: ("NoSuchKey", "The specified key does not exist.", ""),
    500: ("InternalError", "We encountered an internal error. Please try again.", ""),
    503: ("ServiceUnavailable", "Service unavailable. Please try again.", ""),
}


@dataclass
class Behaviour:
    """How the server answers one path (the defaults serve the file normally)."""

    status: int = 200  # answer this status instead of the file (403, 404, 500, ...)
    times: int | None = None  # misbehave for this many requests, then serve normally
    cut_after: int | None = None  # announce the full length, close after this many bytes
    delay: float = 0.0  # seconds to sleep before each chunk of the body (a slow server)
    chunk: int = 64 * 1024  # bytes per chunk of the body
    ignore_range: bool = False  # answer Range requests with 200 and the whole body
    ignore_if_range: bool = False  # honour Range even when If-Range names another version
    redirect: str | None = None  # answer 302 with this Location


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    path: str
    headers: dict = field(compare=False)


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 in a daemon thread; a context manager."""

    def __init__(self):
        self.requests: list[Request] = []
        self._behaviours: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self):
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True,
                                        name=f"{type(self).__name__}-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- behaviour and log
    def set(self, path: str, **behaviour) -> None:
        """Make requests for ``path`` (relative to :attr:`url`) behave as :class:`Behaviour`."""
        with self._lock:
            self._behaviours["/" + path.lstrip("/")] = Behaviour(**behaviour)

    def reset(self) -> None:
        """Forget every behaviour and the request log."""
        with self._lock:
            self._behaviours.clear()
            self.requests.clear()

    def _take_behaviour(self, path: str) -> Behaviour:
        with self._lock:
            b = self._behaviours.get(path)
            if b is None:
                return Behaviour()
            if b.times is not None:
                b.times -= 1
                if b.times <= 0:
                    del self._behaviours[path]
            return b

    def _log(self, method: str, path: str, headers) -> None:
        with self._lock:
            self.requests.append(Request(method, path, dict(headers.items())))

    # -- content, overridden by the subclasses
    def lookup(self, path: str) -> tuple[bytes | None, dict, dict]:
        """(body or None, headers for 200/206 answers, headers for a 404)."""
        raise NotImplementedError

    def error_body(self, status: int) -> tuple[bytes, str]:
        return f"HTTP {status}".encode(), "text/plain"

    def write(self, path: str, headers, body: bytes) -> tuple[int, dict]:
        """(status, JSON answer) for a POST; servers that take no writes answer 405."""
        return 405, {"error": f"{self.__class__.__name__} takes no POST to {path}"}


class _Handler(BaseHTTPRequestHandler):
    owner: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep the server quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def do_POST(self):
        path = unquote(urlsplit(self.path).path)
        self.owner._log(self.command, path, self.headers)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload = self.owner.write(path, self.headers, body)
        data = json.dumps(payload).encode()
        self._send_headers(status, {"Content-Type": "application/json",
                                    "Content-Length": str(len(data))})
        self.wfile.write(data)

    def _answer(self, head: bool) -> None:
        owner = self.owner
        path = unquote(urlsplit(self.path).path)
        owner._log(self.command, path, self.headers)
        behaviour = owner._take_behaviour(path)
        if behaviour.redirect is not None:
            return self._send_headers(302, {"Location": behaviour.redirect,
                                            "Content-Length": "0"})
        body, headers, missing_headers = owner.lookup(path)
        if behaviour.status not in (200, 206) or body is None:
            status = behaviour.status if behaviour.status not in (200, 206) else 404
            return self._error(status, head, missing_headers if body is None else {})
        size = len(body)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if (rng and if_range is not None and not behaviour.ignore_if_range
                and if_range not in (headers.get("ETag"), headers.get("Last-Modified"))):
            rng = None  # another version than the client holds: send all of it
        if rng and not behaviour.ignore_range:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m and m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size:
                    return self._send_headers(416, {"Content-Range": f"bytes */{size}",
                                                    "Content-Length": "0"})
                status = 206
        out = {**headers, "Content-Length": str(end - start + 1), "Accept-Ranges": "bytes"}
        if status == 206:
            out["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send_headers(status, out)
        if not head:
            self._send_body(body[start:end + 1], behaviour)

    def _send_headers(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send_body(self, data: bytes, behaviour: Behaviour) -> None:
        limit = len(data) if behaviour.cut_after is None else min(behaviour.cut_after, len(data))
        try:
            for i in range(0, limit, behaviour.chunk):
                if behaviour.delay:
                    if self.owner._stop.wait(behaviour.delay):
                        return
                self.wfile.write(data[i:min(i + behaviour.chunk, limit)])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def _error(self, status: int, head: bool, extra: dict) -> None:
        body, ctype = self.owner.error_body(status)
        self._send_headers(status, {**extra, "Content-Type": ctype,
                                    "Content-Length": str(len(body))})
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


class FakeBucket(_Server):
    """The bucket's public HTTPS URL, serving the files of ``root`` (read at each request)."""

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = Path(root)

    def lookup(self, path: str):
        file = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in file.parents or not file.is_file():
            return None, {}, {}
        data = file.read_bytes()
        md5 = hashlib.md5(data)
        return data, {"Content-Type": "application/octet-stream",
                      "ETag": f'"{md5.hexdigest()}"',
                      "Last-Modified": formatdate(file.stat().st_mtime, usegmt=True),
                      "x-goog-hash": f"md5={base64.b64encode(md5.digest()).decode()}"}, {}

    def error_body(self, status: int) -> tuple[bytes, str]:
        code, message, details = _GCS_ERRORS.get(status, ("Error", f"HTTP {status}", ""))
        extra = f"<Details>{details}</Details>" if details else ""
        xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
               f"<Message>{message}</Message>{extra}</Error>")
        return xml.encode(), "application/xml; charset=UTF-8"


class FakeHub(_Server):
    """The Hugging Face Hub's file endpoint for the repositories added with :meth:`add_file`."""

    def __init__(self):
        super().__init__()
        self._repos: dict[str, dict[str, bytes]] = {}

    def add_file(self, repo_id: str, filename: str, data: bytes | str | Path) -> None:
        """Serve ``data`` (bytes or a file path) as ``filename`` of model repo ``repo_id``."""
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        with self._lock:
            self._repos.setdefault(repo_id, {})[filename] = data

    def commit(self, repo_id: str) -> str:
        """The repository's (deterministic) commit hash, as sent in ``X-Repo-Commit``."""
        files = self._repos[repo_id]
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        return h.hexdigest()

    def lookup(self, path: str):
        m = re.fullmatch(r"/(?:models/)?(.+?)/resolve/([^/]+)/(.+)", path)
        if m is None:
            return None, {}, {"X-Error-Code": "RepoNotFound"}
        repo_id, revision, filename = m.groups()
        files = self._repos.get(repo_id)
        if files is None:
            return None, {}, {"X-Error-Code": "RepoNotFound",
                              "X-Error-Message": "Repository not found"}
        commit = self.commit(repo_id)
        if revision not in ("main", commit) or filename not in files:
            code = "EntryNotFound" if revision in ("main", commit) else "RevisionNotFound"
            return None, {}, {"X-Error-Code": code, "X-Repo-Commit": commit}
        data = files[filename]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        return data, {"Content-Type": "application/octet-stream", "ETag": etag,
                      "X-Linked-Etag": etag, "X-Linked-Size": str(len(data)),
                      "X-Repo-Commit": commit}, {}

    def error_body(self, status: int) -> tuple[bytes, str]:
        return b'{"error": "HTTP %d"}' % status, "application/json"

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files of ``repo_id`` (added or uploaded), by name."""
        with self._lock:
            return dict(self._repos.get(repo_id, {}))

    def write(self, path: str, headers, body: bytes) -> tuple[int, dict]:
        if not headers.get("Authorization", "").startswith("Bearer "):
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = "/".join(p for p in (req.get("organization"), req["name"]) if p)
            with self._lock:
                if repo_id in self._repos:
                    return 409, {"error": "You already created this model repo",
                                 "url": f"{self.url}/{repo_id}"}
                self._repos[repo_id] = {}
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if path == "/api/validate-yaml":  # the model card's metadata block
            return self._validate_card(json.loads(body)["content"])
        m = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/]+)", path)
        if m is None or m.group(1) not in self._repos:
            return 404, {"error": "Repository not found"}
        repo_id, action = m.group(1), m.group(2)
        if action == "preupload":
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False}
                                   for f in json.loads(body)["files"]]}
        added = {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unexpected encoding {value.get('encoding')!r}"}
                added[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] != "header":
                return 400, {"error": f"this stand-in takes regular files only, not {item['key']}"}
        with self._lock:
            self._repos[repo_id].update(added)
        commit = self.commit(repo_id)
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{commit}",
                     "commitOid": commit, "pullRequestUrl": None}

    @staticmethod
    def _validate_card(content: str) -> tuple[int, dict]:
        import yaml  # a dependency of huggingface_hub

        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        if m is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(m.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"errors": [], "warnings": []}
