"""Test-wide setup: a loopback Hugging Face Hub and a hermetic HF environment.

At import, before anything imports `huggingface_hub`, `datasets`, `gradio` or `dsvsa` (they read
these variables once, at their own import), this module starts `tests.loopback_hub.LoopbackHub`
on a free port of 127.0.0.1 and sets, in `os.environ`:

    HF_ENDPOINT=http://127.0.0.1:PORT        the loopback Hub
    HF_TOKEN=<hub.token>                     a token it accepts for writes
    HF_HUB_DISABLE_XET=1                     it serves Git LFS, not Xet (hf_xet has no fallback)
    HF_HUB_DISABLE_TELEMETRY=1, GRADIO_ANALYTICS_ENABLED=False
    HF_UPDATE_DOWNLOAD_COUNTS=False          else every load_dataset pings s3.amazonaws.com
    HF_HOME, HF_DATASETS_CACHE               a fresh temporary folder for this session
    HTTP_PROXY / HTTPS_PROXY / ALL_PROXY     the loopback Hub, which refuses to reach other hosts
    NO_PROXY=127.0.0.1,localhost,::1,0.0.0.0 so local servers (the Hub, Gradio) are reached directly
and removes HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE.

The proxy variables catch what clients aim at other hosts: `datasets` asks a dataset viewer at
`http://datasets-server.<endpoint host>/info` (a DNS lookup otherwise), which gets a 404 here;
anything else gets a 502 and is listed in `hub.foreign_requests`. At the end of the run the
terminal summary lists such refused requests, routes the loopback Hub does not serve, and its
own crashes, if there were any.

Subprocesses (an `accelerate launch`, the app) inherit `os.environ`, so they talk to the same
server while this pytest process runs; when building an environment yourself, start from
`{**os.environ, **hub_env}`.

Fixtures
--------
hub_server (session)
    The running `LoopbackHub`. Use it from session- or module-scoped fixtures.
hub (function)
    The same server; after the test, injected failures, `require_token` and `tree_page_size` are
    put back. Repositories are kept (other fixtures may have pushed data): use `hub_repo` for
    names that no other test uses. API (see `tests/loopback_hub.py`):
      .endpoint, .token, .user        "http://127.0.0.1:PORT", the accepted token, account name
      .files(repo_id, repo_type="model", revision="main") -> {path: bytes} (".gitattributes" too)
      .lfs_files(...) -> set of paths stored through LFS; .commits(...) -> [{sha, title, message}]
      .head(...) -> commit sha; .repos(repo_type=None) -> ids; .exists(repo_id, repo_type)
      .create_repo(repo_id, repo_type, files={...}) seeds a repo without HTTP
      .fail_next(n=1, status=500, match=None) the next n requests matching the regex `match`
          (on "METHOD /path?query") fail, e.g. match=r"POST /api/datasets/.*/commit/"
      .require_token = False to accept anonymous writes; .tree_page_size = 2 forces pagination
      .requests [(method, path, status)], .unknown_requests, .foreign_requests, .server_errors
      .reset() wipes every repository (other tests' too): prefer `hub_repo` names
hub_repo (function)
    Factory: `hub_repo("mnist")` -> "dsvsa-tester/mnist-1a2b3c4d", unique per call (the repo is
    not created; `push_to_hub` / `create_repo` do that).
hub_env (session)
    dict of the environment variables above (strings), for subprocesses.
no_hf_token (function)
    Removes HF_TOKEN from the environment for the test, so clients send no token (writes then get
    a 401 from the hub). Yields nothing useful.
unreachable_hub (session)
    `SimpleNamespace(endpoint=..., env=...)`: an endpoint on a port of 127.0.0.1 that refuses
    connections, and `hub_env` with HF_ENDPOINT set to it. In-process `HF_ENDPOINT` is read at
    import, so use it in a subprocess (`env=unreachable_hub.env`) or pass
    `endpoint=unreachable_hub.endpoint` to `HfApi`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_hub import LoopbackHub  # noqa: E402

_HUB = LoopbackHub().start()
_HF_HOME = Path(tempfile.mkdtemp(prefix="dsvsa-hf-home-"))
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
atexit.register(_HUB.stop)

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):  # fmt: skip
    os.environ.pop(_name, None)

HUB_ENV: dict[str, str] = {
    "HF_ENDPOINT": _HUB.endpoint,
    "HF_TOKEN": _HUB.token,
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "False",  # else datasets pings s3.amazonaws.com per load
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HOME": str(_HF_HOME),
    "HF_DATASETS_CACHE": str(_HF_HOME / "datasets"),
    "HTTP_PROXY": _HUB.endpoint,
    "HTTPS_PROXY": _HUB.endpoint,
    "ALL_PROXY": _HUB.endpoint,
    "NO_PROXY": "127.0.0.1,localhost,::1,0.0.0.0",
}
for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    HUB_ENV[_name] = HUB_ENV[_name.upper()]
os.environ.update(HUB_ENV)

if "huggingface_hub" in sys.modules or "datasets" in sys.modules:  # pragma: no cover
    import warnings

    warnings.warn(
        "huggingface_hub/datasets were imported before tests/conftest.py: they may talk to "
        "another endpoint than the loopback Hub",
        stacklevel=1,
    )


@pytest.fixture(scope="session")
def hub_server() -> LoopbackHub:
    return _HUB


@pytest.fixture
def hub(hub_server: LoopbackHub):
    yield hub_server
    hub_server.clear_failures()
    hub_server.require_token = True
    hub_server.tree_page_size = None


@pytest.fixture
def hub_repo(hub_server: LoopbackHub):
    def make(name: str = "repo") -> str:
        return f"{hub_server.user}/{name}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def hub_env() -> dict[str, str]:
    return dict(HUB_ENV)


@pytest.fixture
def no_hf_token(monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="session")
def unreachable_hub():
    # A bound socket that never listens: connections to it are refused at once, and the port
    # stays reserved for the whole session.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield SimpleNamespace(endpoint=endpoint, env={**HUB_ENV, "HF_ENDPOINT": endpoint})
    sock.close()


def pytest_terminal_summary(terminalreporter):
    lines = [f"unknown route (404): {m} {p}" for m, p in _HUB.unknown_requests]
    lines += [f"refused, other host: {m} {p}" for m, p in _HUB.foreign_requests]
    lines += [f"crash: {text}" for text in _HUB.server_errors]
    if lines:
        terminalreporter.write_sep("-", "loopback Hub")
        for line in lines:
            terminalreporter.write_line(line)
