"""The `p2p` command line: real commands on real files; bad input ends in one line, exit 2, no partial output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from p2p.cli import app
from p2p.data import synth

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project: params.yaml (smoke preset, LaMP-2M only) and a synthetic raw LaMP-2M directory."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preset"] = "smoke"
    raw["presets"]["smoke"]["data"]["sources"] = [{"dataset": "synth", "tasks": ["LaMP-2M"]}]
    raw["presets"]["smoke"]["split"]["embedder"] = "tfidf"  # the model stages are tested in test_pipeline
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    synth.generate(tmp_path / "data/raw/synth", seed=0, users=40, history_items=6, queries_per_user=2,
                   tasks=("LaMP-2M",))
    return tmp_path


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def _questions(project: Path) -> tuple[Path, list]:
    path = project / "data/raw/synth/LaMP-2M/train_questions.json"
    return path, json.loads(path.read_text())


def test_prepare_then_split_write_canonical_records_and_splits(project):
    params = str(project / "params.yaml")
    result = _invoke("prepare", "--params", params)
    assert result.exit_code == 0, result.output
    assert "synth/LaMP-2M" in result.output
    prepared = project / "data/prepared/synth/LaMP-2M.jsonl"
    assert len(prepared.read_text().splitlines()) == 40

    result = _invoke("split", "--params", params)
    assert result.exit_code == 0, result.output
    split = json.loads((project / "data/splits/synth/LaMP-2M.json").read_text())
    assert not set(split["train"]) & (set(split["random_test"]) | set(split["ood_test"]))
    assert (project / "reports/splits/summary.md").read_text().startswith("# User splits")
    assert (project / "reports/splits/silhouette.png").read_bytes().startswith(b"\x89PNG")


def test_stage_runs_a_stages_recipe_without_prefect_and_writes_what_dvc_repro_writes(project, tmp_path_factory):
    """`p2p stage NAME` (the recipe alone) writes the same split as the stage's other door, `p2p split`."""
    params = str(project / "params.yaml")
    for name in ("prepare", "split"):
        result = _invoke("stage", name, "--params", params)
        assert result.exit_code == 0, result.output
    split = (project / "data/splits/synth/LaMP-2M.json").read_bytes()
    assert (project / "reports/splits/summary.md").read_text().startswith("# User splits")
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(project, other, dirs_exist_ok=True)
    (other / "data/splits/synth/LaMP-2M.json").unlink()
    assert _invoke("split", "--params", str(other / "params.yaml")).exit_code == 0
    assert (other / "data/splits/synth/LaMP-2M.json").read_bytes() == split

    result = _invoke("stage", "tune", "--params", params)
    assert result.exit_code == 2 and "unknown stage 'tune'" in result.output and result.output.count("\n") == 1


def _break_profile(q):
    del q[3]["profile"]


def _wrong_type(q):
    q[3]["profile"][1]["tag"] = 7


def _empty_history(q):
    q[3]["profile"] = []


def _huge_item(q):
    q[3]["profile"][0]["description"] = "x" * 300_000


@pytest.mark.parametrize("mutate, expected", [
    (_break_profile, "field 'profile'"),
    (_wrong_type, "field 'profile[1].tag'"),
    (_empty_history, "field 'profile'"),
    (_huge_item, "field 'profile[0].description'"),
])
def test_bad_records_fail_with_one_line_naming_file_record_and_field(project, mutate, expected):
    path, questions = _questions(project)
    mutate(questions)
    path.write_text(json.dumps(questions))
    result = _invoke("prepare", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}")
    assert questions[3]["id"] in lines[0] or "item 3" in lines[0]
    assert expected in lines[0]
    assert not (project / "data/prepared").exists() or not any((project / "data/prepared").rglob("*.jsonl"))


def test_truncated_and_non_utf8_files_fail_cleanly(project):
    path, _ = _questions(project)
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    result = _invoke("prepare", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2 and "malformed JSON" in result.stderr and str(path) in result.stderr

    path.write_bytes(text.replace(b"comedy", b"com\xe9dy", 1))
    result = _invoke("prepare", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2 and "not UTF-8" in result.stderr and "record line 1" in result.stderr
    assert not any(project.rglob("*.jsonl"))


#: `p2p data synth ARGS...` that waits (for a SIGKILL) once its first file is written.
PAUSED_SYNTH = """
import sys
from p2p.cli import app
from p2p.data import synth
write_json = synth.write_json
def write_then_wait(path, obj, **kwargs):
    write_json(path, obj, **kwargs)
    print("wrote", path, flush=True)
    sys.stdin.readline()
synth.write_json = write_then_wait
app()
"""
SYNTH_ARGS = ["--users", "40", "--history-items", "6", "--queries-per-user", "2", "--task", "LaMP-2M"]


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def test_a_synth_killed_midway_leaves_the_old_dataset_whole_and_prepare_reads_it(project):
    params, synth_dir = str(project / "params.yaml"), project / "data/raw/synth"
    assert _invoke("prepare", "--params", params).exit_code == 0
    prepared = project / "data/prepared/synth/LaMP-2M.jsonl"
    seed0, before = prepared.read_bytes(), _tree(synth_dir)

    run = subprocess.Popen([sys.executable, "-c", PAUSED_SYNTH, "data", "synth", "--out", str(synth_dir),
                            "--seed", "1", *SYNTH_ARGS], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    try:
        assert run.stdout.readline().startswith("wrote ")
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    assert _tree(synth_dir) == before
    assert _invoke("prepare", "--params", params).exit_code == 0
    assert prepared.read_bytes() == seed0

    done = subprocess.run([sys.executable, "-m", "p2p.cli", "data", "synth", "--out", str(synth_dir), "--seed", "1",
                           *SYNTH_ARGS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in synth_dir.parent.iterdir()) == ["synth"]  # the killed run's temporary is swept
    assert _invoke("prepare", "--params", params).exit_code == 0
    assert prepared.read_bytes() != seed0


def test_prepare_refuses_files_of_two_generations_with_one_line_naming_the_file(project, tmp_path):
    other = synth.generate(tmp_path / "seed1", seed=1, users=40, history_items=6, queries_per_user=2,
                           tasks=("LaMP-2M",))["LaMP-2M"]
    mixed = project / "data/raw/synth/LaMP-2M/train_outputs.json"
    shutil.copyfile(other / "train_outputs.json", mixed)  # the same question ids, the golds of other questions
    result = _invoke("prepare", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {mixed}: does not belong with the other files here"), line
    assert not any((project / "data").rglob("*.jsonl"))


def test_split_of_one_file_with_given_embeddings_and_bad_shape(project, tmp_path):
    import numpy as np

    assert _invoke("prepare", "--params", str(project / "params.yaml")).exit_code == 0
    records = project / "data/prepared/synth/LaMP-2M.jsonl"
    good = tmp_path / "emb.npy"
    np.save(good, np.random.default_rng(0).normal(size=(40, 8)))
    out = tmp_path / "split.json"
    result = _invoke("split", "--params", str(project / "params.yaml"), "--records", str(records),
                     "--embeddings", str(good), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["report"]["embedder"] == "given"

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((39, 8)))
    out.unlink()
    result = _invoke("split", "--params", str(project / "params.yaml"), "--records", str(records),
                     "--embeddings", str(bad), "--out", str(out))
    assert result.exit_code == 2 and "one row per record (40)" in result.stderr
    assert not out.exists()


def test_eval_metrics_prints_json_last_line_and_rejects_mismatched_ids(tmp_path):
    golds = {"task": "LaMP_3", "golds": [{"id": "a", "output": "5"}, {"id": "b", "output": "1"}]}
    preds = {"task": "LaMP_3", "golds": [{"id": "a", "output": "4"}, {"id": "b", "output": "nonsense"}]}
    (tmp_path / "g.json").write_text(json.dumps(golds))
    (tmp_path / "p.json").write_text(json.dumps(preds))
    result = _invoke("eval-metrics", "--task", "LaMP-3", "--predictions", str(tmp_path / "p.json"),
                     "--golds", str(tmp_path / "g.json"))
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    # a: |4-5| = 1; b: unparsable -> the extreme farthest from gold 1, i.e. 5.0, error 4.
    assert metrics["mae"] == pytest.approx(2.5)
    assert metrics["rmse"] == pytest.approx(((1 + 16) / 2) ** 0.5)

    preds["golds"].pop()
    (tmp_path / "p.json").write_text(json.dumps(preds))
    result = _invoke("eval-metrics", "--task", "LaMP-3", "--predictions", str(tmp_path / "p.json"),
                     "--golds", str(tmp_path / "g.json"))
    assert result.exit_code == 2 and "b" in result.stderr


def test_data_synth_command_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = _invoke("data", "synth", "--out", str(tmp_path / name), "--seed", "3", "--users", "12",
                         "--history-items", "3", "--queries-per-user", "1", "--params", str(ROOT / "params.yaml"))
        assert result.exit_code == 0, result.output
    for file in (tmp_path / "a").rglob("*.json"):
        assert file.read_bytes() == (tmp_path / "b" / file.relative_to(tmp_path / "a")).read_bytes()


def test_data_fetch_unreachable_fails_fast_naming_url_and_path(tmp_path):
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    result = _invoke("data", "fetch", "personal_reddit", "--raw-dir", str(tmp_path), "--mirror",
                     f"http://127.0.0.1:{port}", "--params", str(ROOT / "params.yaml"))
    assert result.exit_code == 2
    assert time.monotonic() - start < 15
    assert "synthetic_dataset.jsonl" in result.stderr and str(tmp_path) in result.stderr
    assert not any(tmp_path.rglob("*.jsonl"))


def test_console_script_runs():
    exe = Path(sys.executable).parent / "p2p"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(exe), "config", "--params", str(ROOT / "params.yaml"), "--preset", "paper"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Qwen/Qwen2.5-7B-Instruct" in out.stdout
