"""scripts/bootstrap.sh without a network: each installer is tried in turn against a package index where nothing
listens, so the run shows which one it took, that uv was handed pip's settings, and that a failed install ends with
the log's last lines. (`make test` itself runs the script for real on a fresh clone.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap(tmp_path: Path, path_dirs: list[Path], **extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run a copy of the script on a copy of the project's install files, with pip's settings from the
    environment only (an index at a dead port, no config files, no find-links) and `path_dirs` before a PATH
    without uv. Returns the run and the dead index's URL."""
    for rel in ("scripts/bootstrap.sh", "constraints.txt", "pyproject.toml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    index = f"http://127.0.0.1:{free_port()}/simple"
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "uv").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env |= {"PATH": os.pathsep.join(map(str, [*path_dirs, *path])), "PYTHON": sys.executable,
            "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index, "PIP_RETRIES": "0", "PIP_NO_CACHE_DIR": "1",
            "UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_HTTP_RETRIES": "0", **extra}
    done = subprocess.run(["bash", str(tmp_path / "scripts/bootstrap.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, index


def _failed_in_pip(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: pip install torch==2.13.0 failed; the last lines of .venv/install.log:" in done.stderr
    assert not (tmp_path / ".venv/.installed").exists()


def test_without_uv_it_says_so_and_installs_with_pip(tmp_path):
    """No uv on PATH and none to download: one line says pip installs instead; pip's failure shows the log."""
    done, index = _bootstrap(tmp_path, [])
    assert "uv could not be had (see .venv/install.log); installing with pip instead." in done.stderr
    _failed_in_pip(done, tmp_path)
    log = (tmp_path / ".venv/install.log").read_text()
    assert f"The user requested (constraint) uv=={_pinned_uv()}" in log  # the pinned uv was asked for ...
    assert not (tmp_path / ".venv/uv/bin/uv").exists()  # ... and not had
    assert log.count(f"Looking in indexes: {index}") == 2  # for uv, then for torch


def _pinned_uv() -> str:
    [pin] = [line.split("==")[1] for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.startswith("uv==")]
    return pin


def _uv_binary() -> Path:
    """The uv bootstrap.sh installed beside this environment, or one on PATH; a skip where there is none."""
    found = Path(sys.prefix) / "uv" / "bin" / "uv"
    if not found.exists() and shutil.which("uv"):
        found = Path(shutil.which("uv"))
    if not found.exists():
        pytest.skip("no uv here (scripts/bootstrap.sh puts one in .venv/uv)")
    return found


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_uv_on_path_gets_pips_index_and_pip_takes_over_when_it_fails(tmp_path, installer):
    """uv on PATH (as new as the pin) is used as it is, with the index pip would use; its failure is said in one
    line and pip installs instead. P2P_INSTALLER=pip goes to pip directly."""
    uv = _uv_binary()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").symlink_to(uv)
    done, index = _bootstrap(tmp_path, [bin_dir], P2P_INSTALLER=installer)
    _failed_in_pip(done, tmp_path)
    log = (tmp_path / ".venv/install.log").read_text()
    assert not (tmp_path / ".venv/uv").exists()  # the uv on PATH was taken, none installed
    said = "uv could not install (see .venv/install.log); installing with pip instead."
    if installer == "uv":
        assert said in done.stderr
        assert log.startswith(f"error: Failed to fetch: {index}/torch/")  # uv asked pip's index, first for torch
    else:
        assert said not in done.stderr and "Failed to fetch" not in log
    assert f"Looking in indexes: {index}" in log  # then pip
