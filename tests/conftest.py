"""Fixtures shared by several test files (keep each one small and clearly named)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Tests never reach the Hugging Face hub or send telemetry, whichever way pytest is started.
for _key, _value in {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                     "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

#: The real public data beside the checkout (../shared/data); never copied into the repo.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


#: The test file whose first test builds the shared smoke project (tests/smoke.py; the same file's later tests work on
#: copies of it), and the files that only read it. `make test` runs the first at once and the readers last.
SMOKE_BUILDER = "test_pipeline.py"
SMOKE_READERS = ("test_real_shape.py", "test_privacy_stage.py", "test_paper.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order in which `make test` hands whole test files to its pytest-xdist workers (`--dist loadfile
    --no-loadscope-reorder`): the shared smoke build's file first, then the other files with end-to-end (`slow`)
    tests, then the rest, and the smoke build's readers last, so the longest start at once on different workers and
    no worker waits on the build while it has other work."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.path.name == SMOKE_BUILDER:
            return 0
        if item.path.name in SMOKE_READERS:
            return 3
        return 1 if item.path in slow_files else 2

    items.sort(key=rank)  # stable: the order within each group is kept


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory: pytest.TempPathFactory, prefect_api: str):
    """The smoke-preset project after one `dvc repro` (synthetic tasks and LaMP-4/5 dev files), built once per test
    run for every worker (tests/smoke.py). Read it, never change it: `smoke_copy` gives a copy to change."""
    from smoke import shared_dir
    from smoke import smoke_build as build

    if shutil.which("dvc", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("dvc is not installed in this environment")
    try:
        return build(shared_dir(tmp_path_factory.getbasetemp()), prefect_api)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def smoke_copy(smoke_build, tmp_path: Path, prefect_api: str) -> tuple[Path, dict[str, str]]:
    """A copy of the built smoke project (git, DVC cache, outputs, MLflow store) for a test that changes it, and
    the environment its stages run in, reporting to this worker's Prefect server."""
    repo = tmp_path / "smoke"
    shutil.copytree(smoke_build.repo, repo, symlinks=True)
    return repo, project_env(repo, PREFECT_API_URL=prefect_api)


@pytest.fixture
def shared_data_dir() -> Path:
    """The shared real-data directory, or a skip where this machine does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not present at {SHARED_DATA}")
    return SHARED_DATA


#: The project's model cache (gitignored): converted/built models persist across test runs, so the GGUF
#: conversion (~20 s) and the tiny model build (~7 s) happen once per machine.
MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


def free_port() -> int:
    """A port nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_url() -> str:
    """An OpenAI-style base_url where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until `url` answers 200; fails the test with the server's log if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            pytest.fail(f"{process.args[:3]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def project_copy(repo: Path, sources: list[dict] | None = None, **env_extra: str) -> dict[str, str]:
    """Copy the project's files (tracked, and untracked but not ignored) into `repo`, set to the smoke preset on
    the shared model cache (and on `sources` when given); returns the environment its stages run in: this venv's
    tools, the copy on PYTHONPATH, DVC without analytics or a shared site cache, Prefect at home in the copy, and
    nothing inherited of PREFECT_, MLFLOW_ or DVC_ settings."""
    root = MODEL_CACHE.parents[1]
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        if (root / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, repo / rel)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preset"] = "smoke"
    params["model"]["cache_dir"] = str(MODEL_CACHE)  # reuse built and converted models across copies
    if sources is not None:
        params["presets"]["smoke"]["data"]["sources"] = sources
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project_env(repo, **env_extra)


def project_env(repo: Path, **env_extra: str) -> dict[str, str]:
    """The environment a project copy at `repo` runs its stages in (see `project_copy`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_"))}
    bin_dir = Path(sys.executable).parent
    return env | {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(repo),
                  "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo / ".dvc_site_cache"),
                  "PREFECT_HOME": str(repo / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | env_extra


def git_commit(repo: Path, env: dict[str, str], message: str) -> None:
    """`git init` (when needed), add everything, commit as a test user."""
    def git(*args: str) -> None:
        done = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=repo,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"git {args[0]} failed: {done.stderr[-2000:]}"

    if not (repo / ".git").exists():
        git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", message)


@contextlib.contextmanager
def running_server(command: list[str], health: str, cwd: Path, env: dict, log: Path, seconds: float = 120):
    """A server process (its own session, output to `log`) from the moment `health` answers 200 (within `seconds`)
    until the block ends; then its whole process group is stopped."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for_http(health, process, log, seconds)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The API URL of one real `prefect server` on 127.0.0.1, shared by every test that runs stages under
    `dvc repro`: set as PREFECT_API_URL, it spares each stage process a temporary server of its own (~10 s
    apiece on 2 cores), as `make run` (scripts/repro.sh) does. Its database is in a temporary PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api,
            "PREFECT_UI_API_URL": api}  # its dashboard asks its own API (the browser test loads it)
    command = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
               str(port)]
    with running_server(command, f"{api}/health", home, env, home / "server.log", seconds=300):
        yield api


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server on loopback for this test process (tests/postgres.py); each test takes a fresh
    database from it (`postgres.new_database()`). Skips, saying why, where there are no PostgreSQL binaries."""
    from postgres import postgres_server

    try:
        with postgres_server(free_port()) as server:
            yield server
    except LookupError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def served_model(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base_url, model directory) of a real `transformers serve` process on the converted SmolLM2-135M-Instruct.

    Session-scoped: starting it takes seconds and several test files (OpenAIBackend, judge) need one; it idles
    between them and is stopped at the end of the session.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        pytest.skip(f"`transformers serve` needs the serving extra (pip install 'transformers[serving]'): {err}")
    from p2p.models.loading import resolve_model  # here, not at the top: the hub settings above come first

    model_dir = resolve_model(SMOLLM, model_cache)
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, log_path, seconds=90)
        yield f"http://127.0.0.1:{port}/v1", model_dir
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


TINY = "tiny-random-qwen2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def build_smoke_checkpoint(out: Path, model_cache: Path) -> Path:
    """A checkpoint directory as the train stage writes it, for the tiny base and MiniLM (384-d): untrained, but with
    non-zero heads, so every adapter is non-zero and depends on the profile text."""
    import torch

    from p2p.hyper.checkpoint import HyperMeta, save_hypernetwork
    from p2p.hyper.hypernet import HyperNetwork, HyperShape
    from p2p.lora.hooks import LoraShape, find_targets, freeze
    from p2p.models.loading import load_causal_lm

    model, _ = load_causal_lm(TINY, model_cache)
    lora = LoraShape()
    layout = find_targets(freeze(model), lora.targets)
    shape = HyperShape(32, 32)
    torch.manual_seed(0)
    hyper = HyperNetwork(384, layout, lora, shape, ("LaMP-2M",))
    with torch.no_grad():
        for head in hyper.heads.values():
            torch.nn.init.normal_(head.weight, std=0.02)  # trained-like: B depends on the profile
    meta = HyperMeta(base_llm=TINY, embedder=MINILM, embedder_kind="sentence", embed_instruction=False,
                     embed_dim=384, lora=lora, shape=shape, layers=layout.layers, shapes=layout.shapes,
                     tasks=("LaMP-2M",), seed=0)
    return save_hypernetwork(out, hyper, meta)


@dataclass(frozen=True)
class P2PServer:
    """A running `p2p serve` process: its root URL, the bearer key it wants, its log, the checkpoint it serves."""

    url: str
    key: str
    log: Path
    checkpoint: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"


def http_json(url: str, method: str, path: str, body: bytes | None = None, key: str | None = None,
              headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, Any, dict]:
    """One HTTP request to the server at `url` with http.client (JSON content type, `key` as a bearer key; `headers`
    override): (status, response headers, parsed JSON body or {})."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key is not None else {}) \
        | (headers or {})
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.headers, json.loads(data) if data else {}


@contextlib.contextmanager
def p2p_serve(root: Path, model_cache: Path, args: list[str], env: dict[str, str], name: str = "serve",
              seconds: float = 180) -> Iterator[tuple[str, Path, Path]]:
    """A real `p2p serve` process on 127.0.0.1 over the smoke checkpoint (built in `root/p2p` once) with `args` and
    `env`, from its first healthy answer until the block ends: (its URL, its log, the checkpoint)."""
    checkpoint = root / "p2p"
    if not checkpoint.exists():
        build_smoke_checkpoint(checkpoint, model_cache)
    port, log = free_port(), root / f"{name}.log"
    command = [sys.executable, "-m", "p2p.cli", "serve", "--checkpoint", str(checkpoint), "--cache-dir",
               str(model_cache), "--port", str(port), "--device", "cpu",
               "--profiles-db", str(root / f"{name}.db"), *args]
    url = f"http://127.0.0.1:{port}"
    with running_server(command, f"{url}/health", Path(__file__).parents[1],
                        {**os.environ, "HF_HUB_OFFLINE": "1", **env}, log, seconds):
        yield url, log, checkpoint


@pytest.fixture(scope="session")
def p2p_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real `p2p serve` on 127.0.0.1 over the smoke checkpoint, shared by the server's and the playground's
    tests: 4 rows per batch and 2 queue places (so a full queue is easy to reach), a 200 kB body cap, a key."""
    key = "test-key-0123456789"
    args = ["--api-key-env", "P2P_TEST_SERVE_KEY", "--max-batch", "4", "--max-queue", "2",
            "--max-body-bytes", "200000", "--max-tokens", "3500"]
    root = tmp_path_factory.mktemp("p2p_serve")
    with p2p_serve(root, model_cache, args, {"P2P_TEST_SERVE_KEY": key}, name="profiles") as (url, log, checkpoint):
        yield P2PServer(url, key, log, checkpoint)
