"""The loopback Hub answers the real huggingface_hub / datasets clients like the Hub does."""

import hashlib
import os
import subprocess
import sys
import urllib.request

import datasets
import httpx2
import pytest
from huggingface_hub import (
    HfApi,
    PyTorchModelHubMixin,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def test_environment_points_at_the_loopback_hub(hub, hub_env):
    import huggingface_hub.constants as constants

    assert constants.ENDPOINT == hub.endpoint == datasets.config.HF_ENDPOINT
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert os.environ["HF_TOKEN"] == hub.token == hub_env["HF_TOKEN"]
    assert urllib.request.getproxies()["https"] == hub.endpoint


def test_whoami_create_and_info(hub, hub_repo):
    api = HfApi()
    assert api.whoami()["name"] == hub.user

    model, data, space = hub_repo("model"), hub_repo("data"), hub_repo("space")
    url = api.create_repo(model)
    assert url.repo_id == model and url.startswith(hub.endpoint)
    assert api.create_repo(data, repo_type="dataset").repo_type == "dataset"
    api.create_repo(space, repo_type="space", space_sdk="gradio")
    api.create_repo(model, exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(model)
    assert err.value.response.status_code == 409

    info = api.model_info(model)
    assert info.sha == hub.head(model) and [s.rfilename for s in info.siblings] == [
        ".gitattributes"
    ]
    assert api.dataset_info(data).id == data and api.space_info(space).id == space
    assert hub.exists(data, "dataset") and not hub.exists(data, "model")

    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub_repo("absent"))
    with pytest.raises(RevisionNotFoundError):
        api.model_info(model, revision="no-such-branch")


def test_upload_then_download_exact_bytes(hub, hub_repo, tmp_path):
    api = HfApi()
    repo = hub_repo("files")
    api.create_repo(repo)
    weights = os.urandom(200_000)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "model.safetensors").write_bytes(weights)
    (tmp_path / "config.json").write_text('{"latent_dim": 8}')
    first = api.upload_folder(folder_path=tmp_path, repo_id=repo, commit_message="add weights")
    second = api.upload_file(path_or_fileobj=b"v2 notes\n", path_in_repo="notes.txt", repo_id=repo)
    assert first.oid != second.oid == hub.head(repo)

    stored = hub.files(repo)
    assert stored["nested/model.safetensors"] == weights
    assert hub.lfs_files(repo) == {"nested/model.safetensors"}
    assert [c["title"] for c in hub.commits(repo)][:2] == ["Upload notes.txt with huggingface_hub",
                                                          "add weights"]  # fmt: skip

    path = hf_hub_download(repo, "nested/model.safetensors")
    assert open(path, "rb").read() == weights
    assert open(hf_hub_download(repo, "notes.txt"), "rb").read() == b"v2 notes\n"
    meta = get_hf_file_metadata(hf_hub_url(repo, "nested/model.safetensors"))
    assert meta.commit_hash == second.oid and meta.size == len(weights)
    assert meta.etag == hashlib.sha256(weights).hexdigest()  # LFS files: etag is the sha256

    # Older commits stay readable by sha; a newer commit replaces the file on main.
    api.upload_file(path_or_fileobj=b"v3", path_in_repo="notes.txt", repo_id=repo)
    old = hf_hub_download(repo, "notes.txt", revision=second.oid)
    assert open(old, "rb").read() == b"v2 notes\n"
    assert open(hf_hub_download(repo, "notes.txt"), "rb").read() == b"v3"

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.bin")
    api.delete_file("notes.txt", repo_id=repo)
    api.delete_folder("nested", repo_id=repo)
    assert sorted(hub.files(repo)) == [".gitattributes", "config.json"]

    # Range requests (streaming) get 206 and the right slice.
    url = hf_hub_url(repo, "config.json")
    with httpx2.Client() as client:
        part = client.get(url, headers={"Range": "bytes=2-7"})
    assert part.status_code == 206 and part.content == b'{"latent_dim": 8}'[2:8]


def test_tree_pagination_and_paths_info(hub, hub_repo):
    api = HfApi()
    repo = hub_repo("tree")
    parts = {f"data/sub/part-{i}.txt": b"%d" % i for i in range(5)}
    hub.create_repo(repo, files={**parts, "data/top.txt": b"t", "a.md": b"#"})
    hub.tree_page_size = 2

    everything = {e.path for e in api.list_repo_tree(repo, recursive=True)}
    assert everything == {".gitattributes", "a.md", "data", "data/sub", "data/top.txt", *parts}
    top = [(type(e).__name__, e.path) for e in api.list_repo_tree(repo, path_in_repo="data")]
    assert top == [("RepoFolder", "data/sub"), ("RepoFile", "data/top.txt")]
    # A nested path travels %2F-encoded.
    inside = [e.path for e in api.list_repo_tree(repo, path_in_repo="data/sub")]
    assert inside == sorted(parts)
    assert any("data%2Fsub" in path and "cursor=" in path for _, path, _ in hub.requests)

    infos = api.get_paths_info(repo, ["a.md", "data/sub", "nope"], expand=True)
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "a.md"),
        ("RepoFolder", "data/sub"),
    ]
    assert infos[0].last_commit.oid == hub.head(repo)
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="nowhere"))


def test_dataset_configs_push_repush_and_load(hub, hub_repo):
    repo = hub_repo("dsprites-like")
    foreign_before = len(hub.foreign_requests)
    shapes = datasets.Dataset.from_dict(
        {"shape": [0, 1, 2], "name": ["square", "ellipse", "heart"]}
    )
    pairs = datasets.Dataset.from_dict({"a": [1, 2], "b": [3, 4]})
    shapes.push_to_hub(repo, config_name="shapes")
    pairs.push_to_hub(repo, config_name="pairs", split="test")
    pairs_files = {p: b for p, b in hub.files(repo, "dataset").items() if p.startswith("pairs/")}
    assert len(pairs_files) == 1 and hub.lfs_files(repo, "dataset") >= set(pairs_files)

    # Re-push one config: the other one stays byte for byte.
    shapes2 = datasets.Dataset.from_dict({"shape": [2, 2], "name": ["heart", "heart"]})
    shapes2.push_to_hub(repo, config_name="shapes")
    stored = hub.files(repo, "dataset")
    assert {p: b for p, b in stored.items() if p.startswith("pairs/")} == pairs_files
    card = stored["README.md"].decode()
    assert "config_name: shapes" in card and "config_name: pairs" in card

    loaded = datasets.load_dataset(repo, "shapes")
    assert list(loaded) == ["train"] and loaded["train"].to_dict() == shapes2.to_dict()
    assert datasets.load_dataset(repo, "pairs", split="test").to_dict() == pairs.to_dict()
    streamed = datasets.load_dataset(repo, "pairs", split="test", streaming=True)
    assert list(streamed) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]

    assert hub.unknown_requests == []
    assert hub.foreign_requests[foreign_before:] == []


def test_failed_commit_is_reported_and_leaves_the_repo_unchanged(hub, hub_repo):
    repo = hub_repo("fails")
    table = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    table.push_to_hub(repo)
    before = hub.files(repo, "dataset")

    hub.fail_next(1, status=500, match=r"POST /api/datasets/.*/commit/")
    with pytest.raises(HfHubHTTPError) as err:
        datasets.Dataset.from_dict({"x": [9]}).push_to_hub(repo)
    assert err.value.response.status_code == 500
    assert hub.files(repo, "dataset") == before

    datasets.Dataset.from_dict({"x": [9]}).push_to_hub(repo)
    assert datasets.load_dataset(repo, split="train").to_dict() == {"x": [9]}


def test_writes_need_a_valid_token(hub, hub_repo, no_hf_token):
    public = hub_repo("public")
    hub.create_repo(public, files={"hello.txt": b"hi"})
    # Reading a public repo works without a token.
    assert open(hf_hub_download(public, "hello.txt"), "rb").read() == b"hi"

    with pytest.raises(HfHubHTTPError, match="must be authenticated") as err:
        HfApi().create_repo(hub_repo("anon"))
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        HfApi(token="hf_not_the_token").upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=public
        )
    with pytest.raises(HfHubHTTPError):
        datasets.Dataset.from_dict({"x": [1]}).push_to_hub(hub_repo("anon-data"))
    assert hub.files(public) == {".gitattributes": hub.files(public)[".gitattributes"],
                                 "hello.txt": b"hi"}  # fmt: skip

    private = hub_repo("private")
    hub.create_repo(private, files={"secret.txt": b"s"}, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(private)
    assert HfApi(token=hub.token).model_info(private).private is True


def test_model_mixin_roundtrip(hub, hub_repo):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module, PyTorchModelHubMixin):
        def __init__(self, width: int = 3):
            super().__init__()
            self.linear = torch.nn.Linear(width, 2)

    torch.manual_seed(0)
    model = Tiny(width=4)
    repo = hub_repo("tiny-model")
    model.push_to_hub(repo)
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files(repo))
    assert "model.safetensors" in hub.lfs_files(repo)

    loaded = Tiny.from_pretrained(repo)
    assert loaded.linear.in_features == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_unreachable_endpoint_fails_fast(unreachable_hub):
    with pytest.raises(Exception) as err:
        HfApi(endpoint=unreachable_hub.endpoint).model_info("someone/model")
    assert "onnect" in type(err.value).__name__ + str(err.value)
    assert unreachable_hub.env["HF_ENDPOINT"] == unreachable_hub.endpoint


def test_other_hosts_are_refused_not_reached(hub):
    before = len(hub.foreign_requests)
    # An explicit proxy, so nothing here depends on the environment to stay on 127.0.0.1.
    with httpx2.Client(proxy=hub.endpoint, trust_env=False) as client:
        response = client.get("http://example.invalid/some/file")
    assert response.status_code == 502
    assert hub.foreign_requests[before:] == [("GET", "http://example.invalid/some/file")]
    del hub.foreign_requests[before:]  # expected here: keep it out of the run's summary


def test_subprocess_reaches_the_hub_through_hub_env(hub, hub_env, hub_repo):
    repo = hub_repo("from-subprocess")
    hub.create_repo(repo, files={"in.txt": b"from the parent"})
    script = (
        "import sys\n"
        "from huggingface_hub import HfApi, hf_hub_download\n"
        "repo = sys.argv[1]\n"
        "text = open(hf_hub_download(repo, 'in.txt'), 'rb').read()\n"
        "HfApi().upload_file(path_or_fileobj=text + b' and back', path_in_repo='out.txt',"
        " repo_id=repo)\n"
    )
    env = {**os.environ, **hub_env}
    subprocess.run([sys.executable, "-c", script, repo], env=env, check=True, timeout=120)
    assert hub.files(repo)["out.txt"] == b"from the parent and back"
