"""Fixtures shared by several test files (keep each one small and clearly named)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub or send telemetry, whichever way pytest is started.
for _key, _value in {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                     "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

#: The real public data beside the checkout (../shared/data); never copied into the repo.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
