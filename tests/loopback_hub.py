"""A small Hugging Face Hub look-alike served on 127.0.0.1 for the test suite.

The real Hub cannot be reached from the machines this project is tested on, yet the product talks
to it with the real `huggingface_hub` and `datasets` clients (create a repo, push a dataset or a
model, download, `load_dataset`, streaming). `LoopbackHub` answers the part of the Hub HTTP API
those clients use, keeping every repository in memory, so the same client code runs end to end:

    hub = LoopbackHub().start()
    os.environ["HF_ENDPOINT"] = hub.endpoint   # before importing huggingface_hub / datasets
    os.environ["HF_TOKEN"] = hub.token
    os.environ["HF_HUB_DISABLE_XET"] = "1"     # the Xet protocol is not served
    ...
    hub.files("tester/my-data", "dataset")     # {"README.md": b"...", "data/...": b"..."}
    hub.stop()

Served (see `_Handler.ROUTES`): whoami, repo create/delete/settings, repo info (with revision),
preupload, Git LFS batch + upload, NDJSON commits (file, lfsFile, deletedFile, deletedFolder,
parentCommit checks), validate-yaml, tree listing (recursive, paginated), paths-info, commits,
refs, branches, tags, and `resolve` downloads (HEAD/GET, Range). Each commit makes a new commit
sha; branch names and full commit shas both resolve. A new repo starts with one commit holding a
`.gitattributes`, like the Hub; its `filter=lfs` patterns, the 10 MiB limit and binary content
decide which files are LFS.

The server also works as an HTTP proxy that refuses to go anywhere: with `HTTP_PROXY` /
`HTTPS_PROXY` pointed at it and `NO_PROXY=127.0.0.1,localhost`, traffic the clients aim at other
hosts lands here instead of leaving the machine. The one expected case is the dataset viewer
that `datasets` derives from the endpoint (`http://datasets-server.127.0.0.1:PORT/info`), which
gets a 404 so `datasets` falls back to the dataset card; anything else is answered 502 and kept
in `foreign_requests`.

Test hooks: `fail_next(n, status, match)` makes the next matching requests fail,
`unknown_requests` lists routes the server does not know (a client feature it should learn),
`server_errors` its own crashes, `requests` logs everything, `reset()` drops all repositories, `tree_page_size` forces
pagination, `require_token` toggles authentication of writes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import json
import logging
import re
import secrets
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

logger = logging.getLogger("loopback_hub")

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REGULAR_FILE_LIMIT = 10 * 1024 * 1024  # the Hub refuses larger non-LFS files

DEFAULT_GITATTRIBUTES = "\n".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text"
    for pattern in [
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz",
        "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
        "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp",
        "*.wav", "*.mp3", "*.flac", "*.ogg", "*.mp4", "*.webm",
    ]
) + "\n"  # fmt: skip


def _now() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """Content of one file version. For LFS files `git_oid` is the pointer file's git oid."""

    data: bytes
    lfs: bool
    sha256: str
    git_oid: str
    pointer_size: int = 0

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> _Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        if not lfs:
            return cls(data, False, sha256, _git_oid(data))
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        ).encode()
        return cls(data, True, sha256, _git_oid(pointer), len(pointer))


@dataclass(frozen=True)
class _Entry:
    blob: _Blob
    commit: str  # sha of the commit that last wrote this path


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, _Entry]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    sdk: str | None = None
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        """A branch, a tag or a full commit sha -> commit."""
        revision = unquote(revision)
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None

    def history(self, sha: str) -> list[_Commit]:
        out = []
        while sha is not None:
            commit = self.commits[sha]
            out.append(commit)
            sha = commit.parent
        return out


class HubError(Exception):
    """Raised inside handlers: becomes an HTTP error with the Hub's JSON body and headers."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class _Failure:
    remaining: int
    status: int
    pattern: re.Pattern | None
    message: str


class LoopbackHub:
    """In-memory Hub API server on 127.0.0.1 (see the module docstring).

    Args:
        port: TCP port, 0 for a free one.
        user: the account name `whoami` reports; `create_repo("name")` without a namespace
            lands there.
        token: the valid access token (a random one by default).
    """

    def __init__(self, port: int = 0, user: str = "dsvsa-tester", token: str | None = None):
        self.user = user
        self.token = token or "hf_loopback_" + secrets.token_hex(12)
        self.require_token = True  # writes without a valid token get 401
        self.tree_page_size: int | None = None  # None: the Hub's 1000 (50 with expand)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unknown_requests: list[tuple[str, str]] = []
        self.foreign_requests: list[tuple[str, str]] = []
        self.server_errors: list[str] = []  # tracebacks of crashes inside the loopback Hub
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 -> content uploaded through LFS
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackHub:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="loopback-hub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- test API

    def reset(self) -> None:
        """Forget every repository, upload, injected failure and logged request."""
        with self._lock:
            self._repos.clear()
            self._lfs.clear()
            self._failures.clear()
            self.requests.clear()
            self.unknown_requests.clear()
            self.foreign_requests.clear()
            self.server_errors.clear()
            self.require_token = True
            self.tree_page_size = None

    def fail_next(
        self, n: int = 1, status: int = 500, match: str | None = None, message: str | None = None
    ) -> None:
        """Answer the next `n` requests whose "METHOD /path?query" matches the regex `match`
        (any request when None) with `status` and a JSON error, before doing anything else.

        Note that the client retries some calls on 429/5xx (preupload, LFS batch and upload,
        tree listing): fail commits (`match=r"POST /api/.*/commit/"`) for a push that fails.
        """
        pattern = re.compile(match) if match is not None else None
        text = message or f"Injected failure ({status}) from the loopback Hub"
        with self._lock:
            self._failures.append(_Failure(n, status, pattern, text))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def repos(self, repo_type: str | None = None) -> list[str]:
        """Ids of the stored repositories (of one type if given)."""
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if repo_type in (None, rtype))

    def exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(
        self, repo_id: str, repo_type: str = "model", revision: str = "main"
    ) -> dict[str, bytes]:
        """path -> content of every file at `revision` (the initial `.gitattributes` included).
        KeyError when the repository or the revision does not exist."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_type} {repo_id} has no revision {revision!r}")
            return {path: entry.blob.data for path, entry in sorted(commit.files.items())}

    def lfs_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> set[str]:
        """Paths stored through LFS at `revision`."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            return {p for p, e in commit.files.items() if e.blob.lfs}

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[dict]:
        """Commits reachable from `revision`, newest first: dicts with sha, title, message."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            head = repo.resolve(revision)
            return [
                {"sha": c.sha, "title": c.title, "message": c.message}
                for c in repo.history(head.sha)
            ]

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        """Commit sha that `revision` points at."""
        return self.commits(repo_id, repo_type, revision)[0]["sha"]

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        files: dict[str, bytes] | None = None,
        private: bool = False,
    ) -> None:
        """Create a repository directly (no HTTP), optionally with a first commit of `files`."""
        with self._lock:
            repo = self._new_repo(repo_type, repo_id, private)
            if files:
                ops = [("put", path, _Blob.make(data, self._is_lfs(repo, path, data)))
                       for path, data in files.items()]  # fmt: skip
                self._commit(repo, "main", "Add files", "", ops)

    # ----------------------------------------------------------------------------- state

    def _new_sha(self, *parts: str) -> str:
        self._counter += 1
        text = "\0".join([str(self._counter), secrets.token_hex(8), *parts])
        return hashlib.sha1(text.encode()).hexdigest()

    def _new_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None = None):
        if (repo_type, repo_id) in self._repos:
            raise HubError(409, f"You already created this {repo_type} repo", code=None)
        repo = _Repo(repo_type, repo_id, private, _now(), sdk)
        initial = _Commit(
            sha=self._new_sha(repo_type, repo_id),
            parent=None,
            title="initial commit",
            message="",
            date=repo.created_at,
            files={},
        )
        initial.files[".gitattributes"] = _Entry(
            _Blob.make(DEFAULT_GITATTRIBUTES.encode(), lfs=False), initial.sha
        )
        repo.commits[initial.sha] = initial
        repo.branches["main"] = initial.sha
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _is_lfs(
        self, repo: _Repo, path: str, sample: bytes, size: int | None = None, commit=None
    ) -> bool:
        size = len(sample) if size is None else size
        if size == 0:
            return False
        if size >= REGULAR_FILE_LIMIT or b"\0" in sample[:512]:
            return True
        head = commit or repo.commits[repo.branches["main"]]
        attributes = head.files.get(".gitattributes")
        text = attributes.blob.data.decode(errors="replace") if attributes else ""
        name = path.rsplit("/", 1)[-1]
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0].startswith("#") or "filter=lfs" not in parts[1:]:
                continue
            pattern = parts[0]
            target = path if "/" in pattern else name
            if fnmatch.fnmatchcase(target, pattern.replace("**/", "*")):
                return True
        return False

    def _commit(self, repo: _Repo, branch: str, title: str, message: str, ops: list) -> _Commit:
        """ops: ("put", path, blob) | ("delete", path, None) | ("delete_folder", path, None)."""
        parent = repo.commits[repo.branches[branch]]
        sha = self._new_sha(repo.repo_id, parent.sha, title)
        files = dict(parent.files)
        for kind, path, blob in ops:
            if kind == "put":
                files[path] = _Entry(blob, sha)
            elif kind == "delete":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}",
                                   code="EntryNotFound")  # fmt: skip
                del files[path]
            else:
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}",
                                   code="EntryNotFound")  # fmt: skip
                for p in doomed:
                    del files[p]
        commit = _Commit(sha, parent.sha, title, message, _now(), files)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit


# --------------------------------------------------------------------------------- HTTP layer

_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_TYPES = r"(?P<types>models|datasets|spaces)"
_PREFIX = r"(?:(?P<prefix>datasets|spaces)/)?"


def _route(method: str, pattern: str):
    def deco(fn):
        fn.route = (method, re.compile("^" + pattern + "$"))
        return fn

    return deco


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    # Set in handle_one_request
    hub: LoopbackHub
    query: dict[str, list[str]]
    body: bytes

    def log_message(self, format, *args):  # noqa: A002 - keep the stdlib signature
        logger.debug("%s " + format, self.address_string(), *args)

    # ----------------------------------------------------------------------------- plumbing

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_CONNECT(self):
        # A client tunnelling TLS to some host through us: refuse, the network is off limits.
        self.hub = self.server.hub  # type: ignore[attr-defined]
        self._read_body()
        self._foreign("CONNECT", self.path)
        self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, method="GET"):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, obj, headers: dict | None = None, method="GET"):
        self._send(status, json.dumps(obj).encode(), headers, method)

    def _error(self, status: int, message: str, code: str | None = None, method="GET", extra=None):
        header_text = (
            re.sub(r"[\r\n]+", " ", message).encode("latin-1", "replace").decode("latin-1")
        )
        headers = {"X-Error-Message": header_text, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, method)

    def _foreign(self, method: str, url: str):
        hub = self.hub
        with hub._lock:
            hub.foreign_requests.append((method, url))
        logger.warning("loopback Hub refused to reach another host: %s %s", method, url)
        self._error(502, f"The loopback Hub does not reach other hosts ({url})", method=method)

    def _dispatch(self, method: str):
        hub: LoopbackHub = self.server.hub  # type: ignore[attr-defined]
        self.hub = hub
        self._status = 0
        self.body = self._read_body()
        raw = self.path
        try:
            # Proxy-style request (absolute URL): ours, the derived dataset viewer, or foreign.
            if raw.startswith(("http://", "https://")):
                parts = urlsplit(raw)
                local = {f"127.0.0.1:{hub.port}", f"localhost:{hub.port}"}
                if parts.hostname in ("datasets-server.127.0.0.1", "datasets-server.localhost"):
                    self._error(404, "The dataset viewer is not served by the loopback Hub",
                                method=method)  # fmt: skip
                    return
                if parts.netloc not in local:
                    self._foreign(method, raw)
                    return
                raw = parts.path + ("?" + parts.query if parts.query else "")
            parts = urlsplit(raw)
            self.query = parse_qs(parts.query, keep_blank_values=True)
            if self._injected_failure(method, raw):
                return
            for handler in _HANDLERS:
                route_method, regex = handler.route
                if route_method != method and not (route_method == "GET" and method == "HEAD"):
                    continue
                m = regex.match(parts.path)
                if m:
                    handler(self, method, **m.groupdict())
                    return
            with hub._lock:
                hub.unknown_requests.append((method, raw))
            logger.warning("loopback Hub: unknown route %s %s", method, raw)
            self._error(404, f"Unknown route for the loopback Hub: {method} {parts.path}",
                        method=method)  # fmt: skip
        except HubError as e:
            self._error(e.status, e.message, e.code, method=method)
        except Exception:  # a bug here must show up in the test output
            text = f"{method} {raw}\n{traceback.format_exc()}"
            with hub._lock:
                hub.server_errors.append(text)
            logger.error("loopback Hub crashed on %s", text)
            self._error(500, "Internal error in the loopback Hub", method=method)
        finally:
            with hub._lock:
                hub.requests.append((method, raw, self._status))

    def _injected_failure(self, method: str, raw: str) -> bool:
        hub = self.hub
        with hub._lock:
            for failure in hub._failures:
                if failure.pattern is None or failure.pattern.search(f"{method} {raw}"):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        hub._failures.remove(failure)
                    break
            else:
                return False
        self._error(failure.status, failure.message, method=method)
        return True

    # ----------------------------------------------------------------------------- helpers

    def _param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def _flag(self, name: str) -> bool:
        return (self._param(name, "") or "").lower() in ("1", "true", "yes")

    def _authorized(self) -> bool | None:
        """True: valid token, False: wrong token, None: no token."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        return auth.removeprefix("Bearer ").strip() == self.hub.token

    def _require_write(self):
        if not self.hub.require_token:
            return
        state = self._authorized()
        if state is None:
            raise HubError(401, "You must be authenticated to write to the Hub: pass a token")
        if state is False:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, types: str | None, repo_id: str) -> _Repo:
        """types: "models" | "datasets" | "spaces" (API routes) or the URL prefix of a repo
        ("datasets", "spaces" or None for a model)."""
        repo_type = types[:-1] if types else "model"
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self._authorized() is not True):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", code="RevisionNotFound")
        return commit

    def _branch_for_write(self, repo: _Repo, revision: str) -> str:
        branch = unquote(revision).removeprefix("refs/heads/")
        if branch not in repo.branches:
            if self._flag("create_pr"):
                raise HubError(400, "create_pr is not supported by the loopback Hub")
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        return branch

    def _tree_entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict | None:
        entry = commit.files.get(path)
        if entry is not None:
            blob = entry.blob
            out = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                out["lfs"] = {"oid": blob.sha256, "size": len(blob.data),
                              "pointerSize": blob.pointer_size}  # fmt: skip
            if expand:
                last = repo.commits[entry.commit]
                out["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
            return out
        prefix = path.rstrip("/") + "/"
        inside = [p for p in commit.files if p.startswith(prefix)]
        if not path or not inside:
            return None
        tree_oid = hashlib.sha1(
            "".join(commit.files[p].blob.git_oid + p for p in sorted(inside)).encode()
        ).hexdigest()
        out = {"type": "directory", "oid": tree_oid, "size": 0, "path": path.rstrip("/")}
        if expand:
            last = max((repo.commits[commit.files[p].commit] for p in inside), key=lambda c: c.date)
            out["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return out

    def _repo_info(self, repo: _Repo, commit: _Commit) -> dict:
        files_metadata = self._flag("blobs")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if files_metadata:
                sibling.update(size=len(entry.blob.data), blobId=entry.blob.git_oid)
                if entry.blob.lfs:
                    sibling["lfs"] = {"size": len(entry.blob.data), "sha256": entry.blob.sha256,
                                      "pointerSize": entry.blob.pointer_size}  # fmt: skip
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(e.blob.data) for e in commit.files.values()),
        }
        readme = commit.files.get("README.md")
        card = _front_matter(readme.blob.data) if readme else None
        if isinstance(card, dict):
            info["cardData"] = card
            info["tags"] = list(card.get("tags") or [])
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
            info["runtime"] = {"stage": "RUNNING", "hardware": {"current": "cpu-basic",
                               "requested": "cpu-basic"}}  # fmt: skip
        return info

    # ----------------------------------------------------------------------------- routes

    @_route("GET", r"/api/whoami-v2")
    def whoami(self, method):
        if self._authorized() is not True:
            raise HubError(401, "Invalid credentials in Authorization header")
        hub = self.hub
        self._json(200, {
            "type": "user", "id": "0" * 24, "name": hub.user, "fullname": hub.user,
            "email": f"{hub.user}@localhost", "emailVerified": True, "isPro": False,
            "orgs": [], "canPay": False, "periodEnd": None,
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": "loopback", "role": "write"}},
        }, method=method)  # fmt: skip

    @_route("POST", r"/api/repos/create")
    def create_repo(self, method):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name = payload.get("name")
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{name}"
        private = payload.get("private")
        if private is None:
            private = payload.get("visibility") == "private"
        url = f"{self.hub.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub._repos:
                message = f"You already created this {repo_type} repo"
                self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
                return
            self.hub._new_repo(repo_type, repo_id, bool(private), payload.get("sdk"))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    @_route("DELETE", r"/api/repos/delete")
    def delete_repo(self, method):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub._lock:
            if self.hub._repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", code="RepoNotFound")
        self._json(200, {})

    @_route("PUT", rf"/api/{_TYPES}/{_REPO}/settings")
    def settings(self, method, types, repo_id):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
        self._json(200, {})

    @_route("GET", rf"/api/{_TYPES}/{_REPO}(?:/revision/(?P<revision>[^/]+))?")
    def repo_info(self, method, types, repo_id, revision=None):
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            commit = self._commit_at(repo, revision or "main")
            info = self._repo_info(repo, commit)
        self._json(200, info, method=method)

    @_route("POST", r"/api/validate-yaml")
    def validate_yaml(self, method):
        payload = json.loads(self.body or b"{}")
        content = payload.get("content") or ""
        try:
            card = _front_matter(content.encode())
        except yaml.YAMLError as e:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []})
            return
        if card is not None and not isinstance(card, dict):
            self._json(400, {"errors": [{"message": "metadata must be a YAML mapping"}],
                             "warnings": []})  # fmt: skip
            return
        self._json(200, {"errors": [], "warnings": []})

    @_route("POST", rf"/api/{_TYPES}/{_REPO}/preupload/(?P<revision>[^/]+)")
    def preupload(self, method, types, repo_id, revision):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            commit = self._commit_at(repo, revision)
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in commit.files:
                gitignore = commit.files[".gitignore"].blob.data.decode(errors="replace")
            ignore = [ln.strip() for ln in (gitignore or "").splitlines()
                      if ln.strip() and not ln.startswith("#")]  # fmt: skip
            out = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item.get("size", 0))
                sample = base64.b64decode(item.get("sample", ""))
                lfs = self.hub._is_lfs(repo, path, sample, size, commit)
                existing = commit.files.get(path)
                oid = None
                if existing is not None:
                    oid = existing.blob.sha256 if existing.blob.lfs else existing.blob.git_oid
                should_ignore = any(
                    fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path.rsplit("/")[-1], pat)
                    for pat in ignore
                )
                out.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": should_ignore, "oid": oid})  # fmt: skip
        self._json(200, {"files": out, "commitOid": commit.sha})

    @_route("POST", rf"/{_PREFIX}{_REPO}\.git/info/lfs/objects/batch")
    def lfs_batch(self, method, prefix, repo_id):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        with self.hub._lock:
            self._repo(prefix, repo_id)
            if payload.get("operation") != "upload":
                raise HubError(400, "The loopback Hub only accepts LFS uploads")
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                item = {"oid": oid, "size": size, "authenticated": True}
                if oid not in self.hub._lfs:
                    href = f"{self.hub.endpoint}/_loopback/lfs/{oid}?size={size}"
                    item["actions"] = {"upload": {"href": href, "header": {}}}
                objects.append(item)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, headers)

    @_route("PUT", r"/_loopback/lfs/(?P<oid>[0-9a-f]{64})")
    def lfs_upload(self, method, oid):
        data = self.body
        size = self._param("size")
        if hashlib.sha256(data).hexdigest() != oid or (size and int(size) != len(data)):
            raise HubError(400, "Uploaded content does not match its sha256 / size")
        with self.hub._lock:
            self.hub._lfs[oid] = data
        self._send(200, b"", {"ETag": f'"{oid}"'})

    @_route("POST", rf"/api/{_TYPES}/{_REPO}/commit/(?P<revision>[^/]+)")
    def commit(self, method, types, repo_id, revision):
        self._require_write()
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            branch = self._branch_for_write(repo, revision)
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.branches[branch]:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            ops = []
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    data = base64.b64decode(value.get("content", ""))
                    if len(data) >= REGULAR_FILE_LIMIT:
                        raise HubError(400, f"{path} is larger than 10 MiB: it must use LFS")
                    ops.append(("put", path, _Blob.make(data, lfs=False)))
                elif key == "lfsFile":
                    oid = value.get("oid")
                    data = self.hub._lfs.get(oid)
                    if data is None:  # a copy of a file already in the repo
                        data = next((e.blob.data for c in repo.commits.values()
                                     for e in c.files.values() if e.blob.sha256 == oid), None)  # fmt: skip
                    if data is None:
                        raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
                    ops.append(("put", path, _Blob.make(data, lfs=True)))
                elif key == "deletedFile":
                    ops.append(("delete", path, None))
                elif key == "deletedFolder":
                    ops.append(("delete_folder", path, None))
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit = self.hub._commit(
                repo, branch, header.get("summary") or "", header.get("description") or "", ops
            )
        url = (
            f"{self.hub.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.sha}"
        )
        self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": url,
                         "pullRequestUrl": None})  # fmt: skip

    @_route("GET", rf"/api/{_TYPES}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?")
    def tree(self, method, types, repo_id, revision, path=None):
        path = unquote(path or "").strip("/")
        recursive, expand = self._flag("recursive"), self._flag("expand")
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            commit = self._commit_at(repo, revision)
            prefix = path + "/" if path else ""
            inside = [p for p in commit.files if p.startswith(prefix)]
            if path and not inside:
                raise HubError(404, f"{path} does not exist on {unquote(revision)}",
                               code="EntryNotFound")  # fmt: skip
            names = set()
            for p in inside:
                rest = p[len(prefix) :].split("/")
                depth = len(rest) if recursive else 1
                for i in range(1, depth + 1):
                    names.add(prefix + "/".join(rest[:i]))
            entries = [self._tree_entry(repo, commit, name, expand) for name in names]
            entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
            page = self.hub.tree_page_size or (50 if expand else 1000)
        start = int(self._param("cursor", "0") or 0)
        chunk = entries[start : start + page]
        headers = {}
        if start + page < len(entries):
            query = {k: v[0] for k, v in self.query.items()}
            query["cursor"] = str(start + page)
            base = f"{self.hub.endpoint}{urlsplit(self.path).path}"
            headers["Link"] = f'<{base}?{urlencode(query)}>; rel="next"'
        self._json(200, chunk, headers, method=method)

    @_route("POST", rf"/api/{_TYPES}/{_REPO}/paths-info/(?P<revision>[^/]+)")
    def paths_info(self, method, types, repo_id, revision):
        if "json" in self.headers.get("Content-Type", ""):
            payload = json.loads(self.body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            commit = self._commit_at(repo, revision)
            out = [self._tree_entry(repo, commit, p.strip("/"), expand) for p in paths]
        self._json(200, [e for e in out if e is not None])

    @_route("GET", rf"/api/{_TYPES}/{_REPO}/commits/(?P<revision>[^/]+)")
    def list_commits(self, method, types, repo_id, revision):
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            head = self._commit_at(repo, revision)
            out = [{"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
                    "authors": [{"user": self.hub.user}]} for c in repo.history(head.sha)]  # fmt: skip
        self._json(200, out, method=method)

    @_route("GET", rf"/api/{_TYPES}/{_REPO}/refs")
    def refs(self, method, types, repo_id):
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                        for b, s in sorted(repo.branches.items())]  # fmt: skip
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s}
                    for t, s in sorted(repo.tags.items())]  # fmt: skip
        self._json(200, {"branches": branches, "converts": [], "tags": tags, "pullRequests": []})

    @_route("POST", rf"/api/{_TYPES}/{_REPO}/branch/(?P<branch>[^/]+)")
    def create_branch(self, method, types, repo_id, branch):
        self._require_write()
        branch = unquote(branch)
        payload = json.loads(self.body or b"{}")
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._commit_at(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.sha
        self._json(200, {})

    @_route("DELETE", rf"/api/{_TYPES}/{_REPO}/branch/(?P<branch>[^/]+)")
    def delete_branch(self, method, types, repo_id, branch):
        self._require_write()
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            if repo.branches.pop(unquote(branch), None) is None:
                raise HubError(404, f"Invalid rev id: {unquote(branch)}", code="RevisionNotFound")
        self._json(200, {})

    @_route("POST", rf"/api/{_TYPES}/{_REPO}/tag/(?P<revision>[^/]+)")
    def create_tag(self, method, types, repo_id, revision):
        self._require_write()
        payload = json.loads(self.body or b"{}")
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            commit = self._commit_at(repo, revision)
            tag = payload.get("tag")
            if not tag:
                raise HubError(400, "A tag needs a name")
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.sha
        self._json(200, {})

    @_route("DELETE", rf"/api/{_TYPES}/{_REPO}/tag/(?P<tag>[^/]+)")
    def delete_tag(self, method, types, repo_id, tag):
        self._require_write()
        with self.hub._lock:
            repo = self._repo(types, repo_id)
            if repo.tags.pop(unquote(tag), None) is None:
                raise HubError(404, f"Invalid rev id: {unquote(tag)}", code="RevisionNotFound")
        self._json(200, {})

    @_route("GET", rf"/{_PREFIX}{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
    def resolve(self, method, prefix, repo_id, revision, path):
        path = unquote(path)
        with self.hub._lock:
            repo = self._repo(prefix, repo_id)
            commit = self._commit_at(repo, revision)
            entry = commit.files.get(path)
        if entry is None:
            self._error(404, f"{path} does not exist on {unquote(revision)}", "EntryNotFound",
                        method=method, extra={"X-Repo-Commit": commit.sha})  # fmt: skip
            return
        blob = entry.blob
        size = len(blob.data)
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.sha256 if blob.lfs else blob.git_oid}"',
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(size)
        status, body = 200, blob.data
        ranged = _parse_range(self.headers.get("Range"), size)
        if ranged == "unsatisfiable":
            self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"}, method)
            return
        if ranged is not None:
            start, end = ranged
            status, body = 206, blob.data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, body, headers, method)


def _parse_range(header: str | None, size: int):
    """'bytes=a-b' / 'bytes=a-' / 'bytes=-n' -> (start, end) inclusive, None or 'unsatisfiable'."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    if first == "":
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def _front_matter(data: bytes):
    """The YAML block at the top of a README (None when there is none)."""
    text = data.decode(errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not m:
        return None
    return yaml.safe_load(m.group(1))


_HANDLERS: list[Callable] = [
    fn for fn in vars(_Handler).values() if callable(fn) and hasattr(fn, "route")
]

__all__ = ["LoopbackHub", "DEFAULT_GITATTRIBUTES"]
