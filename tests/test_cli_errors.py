"""Every bad input to a `p2p` command is one line on stderr naming the file (record, field), exit status 2, and no
output touched (issue 18). Each case runs the real command line in a subprocess, as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from p2p.data import synth

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = "data/raw/synth/LaMP-2M/train_questions.json"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project: params.yaml (smoke preset, synth LaMP-2M, TF-IDF splits) and its raw files."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["preset"] = "smoke"
    raw["presets"]["smoke"]["data"]["sources"] = [{"dataset": "synth", "tasks": ["LaMP-2M"]}]
    raw["presets"]["smoke"]["split"]["embedder"] = "tfidf"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    synth.generate(tmp_path / "data/raw/synth", seed=0, users=12, history_items=3, queries_per_user=1,
                   tasks=("LaMP-2M",))
    return tmp_path


def _cli(*args, cwd: Path = ROOT, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """`python -m p2p.cli ARGS` from the project root. `unprivileged`: without root's right to read and write any
    file (so that file modes bite as they do for a user; root ignores them)."""
    command = [sys.executable, "-m", "p2p.cli", *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be tested")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _one_line(done: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of a refused command (exit status 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (done.returncode,
                                                                                         done.stderr[-2000:])
    return lines[0]


def _hashes(root: Path) -> dict[str, str]:
    """Every file under `root` but the project's lock -> its content hash ("link" for a symbolic link)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name == ".p2p.lock":
            continue
        if path.is_symlink() or not path.exists():
            out[str(path)] = "link"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _params(project: Path, text: str) -> Path:
    path = project / "bad.yaml"
    path.write_text(text)
    return path


# --- item 3: tracebacks become one line ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("seed: [0\n", "record line 2: not valid YAML"),
    ("- smoke\n- cpu\n", "expected a mapping of sections, got a list"),
    ("preset: smoke\npresets:\n  smoke: fast\n", "field 'presets.smoke': expected a mapping of overrides"),
    ("preset: smoke\npresets: smoke\n", "field 'presets': expected a mapping"),
])
def test_malformed_params_yaml_is_one_line_naming_the_file(project, text, expected):
    path = _params(project, text)
    line = _one_line(_cli("config", "--params", path))
    assert line.startswith(f"error: {path}: ") and expected in line


def test_unreadable_input_and_unwritable_output_are_one_line_naming_the_path(project):
    params = project / "params.yaml"
    questions = project / QUESTIONS
    before = _hashes(project)
    questions.chmod(0)
    try:
        line = _one_line(_cli("prepare", "--params", params, unprivileged=True))
    finally:
        questions.chmod(0o644)
    assert line == f"error: {questions}: permission denied"

    (project / "data").chmod(0o555)  # data/prepared cannot be made
    try:
        line = _one_line(_cli("prepare", "--params", params, unprivileged=True))
    finally:
        (project / "data").chmod(0o755)
    assert line == f"error: {project / 'data/prepared'}: permission denied"
    assert _hashes(project) == before


def test_blocked_output_directories_name_the_file_in_the_way(project):
    (project / "data/prepared").write_text("not a directory\n")
    out = project / "synth-out"
    out.write_text("an existing file\n")
    before = _hashes(project)
    line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
    assert line == f"error: {project / 'data/prepared'}: is a file, where a directory is needed"

    line = _one_line(_cli("data", "synth", "--out", out, "--users", "3", "--history-items", "2",
                          "--queries-per-user", "1", "--task", "LaMP-2M"))
    assert line == f"error: {out}: exists and is not a directory; remove it or choose another path"  # io.write_dir
    assert out.read_text() == "an existing file\n" and _hashes(project) == before


def test_json_nested_past_the_recursion_limit_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    golds = tmp_path / "golds.json"
    golds.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "a", "output": "5"}]}))
    line = _one_line(_cli("eval-metrics", "--task", "LaMP-3", "--predictions", deep, "--golds", golds))
    assert line.startswith(f"error: {deep}: ") and "nested too deeply" in line


def _checkpoint(path: Path, base_llm: str = "no-such-org/no-such-model") -> Path:
    """A checkpoint directory as the train stage writes it: p2p.json and hypernetwork.safetensors."""
    import torch
    from safetensors.torch import save_file

    from p2p.hyper.checkpoint import META, WEIGHTS, HyperMeta
    from p2p.hyper.hypernet import HyperShape
    from p2p.lora.hooks import LoraShape

    path.mkdir(parents=True)
    meta = HyperMeta(base_llm=base_llm, embedder="sentence-transformers/all-MiniLM-L6-v2", embedder_kind="sentence",
                     embed_instruction=False, embed_dim=384, lora=LoraShape(), shape=HyperShape(32, 32),
                     layers=(0, 1), shapes={"q_proj": (64, 64)}, tasks=("LaMP-2M",), seed=0)
    (path / META).write_text(json.dumps(meta.to_json()))
    save_file({"w": torch.zeros(64, 64)}, path / WEIGHTS)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_hypernetwork_file_is_one_line_before_any_model_loads(tmp_path, model_cache, damage):
    from p2p.hyper.checkpoint import WEIGHTS

    checkpoint = _checkpoint(tmp_path / "ckpt", base_llm="tiny-random-qwen2")
    weights = checkpoint / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 4)
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films.\n")
    line = _one_line(_cli("personalize", "--query", "hi", "--profile", profile, "--checkpoint", checkpoint,
                          "--cache-dir", model_cache, "--device", "cpu"))
    assert line.startswith(f"error: {weights}: not a readable safetensors file")


# --- item 4: eval-metrics always prints strict JSON ------------------------------------------------------------------


def _strict_json(line: str):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON: {line}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("prediction", ["nan", "NaN", "inf", "-Infinity", "1e999"])
def test_a_non_finite_rating_prediction_is_unparsable_and_the_line_is_strict_json(tmp_path, prediction):
    golds, predictions = tmp_path / "golds.json", tmp_path / "predictions.json"
    golds.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "a", "output": "5"}, {"id": "b", "output": "2"}]}))
    predictions.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "a", "output": prediction},
                                                                   {"id": "b", "output": "2"}]}))
    done = _cli("eval-metrics", "--task", "LaMP-3", "--predictions", predictions, "--golds", golds)
    assert done.returncode == 0, done.stderr
    metrics = _strict_json(done.stdout.strip().splitlines()[-1])
    assert metrics["mae"] == pytest.approx(2.0)  # a: the worst extreme for gold 5 is 1 (error 4); b: exact
    done = _cli("eval-metrics", "--task", "LaMP-3", "--predictions", predictions, "--golds", golds, "--style", "p2p")
    assert done.returncode == 0, done.stderr
    metrics = _strict_json(done.stdout.strip().splitlines()[-1])
    assert (metrics["n_dropped"], metrics["mae"]) == (1, 0.0)


def test_a_non_finite_gold_rating_is_bad_input_naming_file_record_and_field(tmp_path):
    golds, predictions = tmp_path / "golds.json", tmp_path / "predictions.json"
    golds.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "a", "output": "4"},
                                                             {"id": "b", "output": "NaN"}]}))
    predictions.write_text(json.dumps({"task": "LaMP_3", "golds": [{"id": "a", "output": "4"},
                                                                   {"id": "b", "output": "3"}]}))
    line = _one_line(_cli("eval-metrics", "--task", "LaMP-3", "--predictions", predictions, "--golds", golds))
    assert line == f"error: {golds}: record id b: field 'golds[1].output': 'NaN' is not a number"


# --- item 7: messages that say what is wrong -------------------------------------------------------------------------


def _loop(path: Path) -> str:
    path.symlink_to(path.name)
    return "symbolic link loop"


def _dangling(path: Path) -> str:
    path.symlink_to("gone.json")
    return "broken symbolic link (to gone.json, which does not exist)"


def _directory(path: Path) -> str:
    path.mkdir()
    return "is a directory, not a file"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "is a FIFO (named pipe), not a file"


@pytest.mark.parametrize("make", [_loop, _dangling, _directory, _fifo])
def test_a_questions_file_that_is_not_a_file_says_what_it_is(project, make):
    questions = project / QUESTIONS
    questions.unlink()
    expected = make(questions)
    before = _hashes(project)
    line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
    assert line == f"error: {questions}: {expected}"
    assert _hashes(project) == before


def test_an_empty_questions_file_says_it_is_empty(project):
    questions = project / QUESTIONS
    questions.write_text("[]")
    (project / QUESTIONS.replace("questions", "outputs")).write_text('{"task": "LaMP_2M", "golds": []}')
    line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
    assert line.startswith(f"error: {questions}: empty") and "fetch" not in line


def test_eval_metrics_on_a_directory_says_it_is_a_directory(tmp_path):
    line = _one_line(_cli("eval-metrics", "--task", "LaMP-3", "--predictions", tmp_path, "--golds", tmp_path))
    assert line == f"error: {tmp_path}: is a directory, not a file"


def test_a_non_json_checkpoint_description_and_a_non_utf8_params_file_are_named(project, tmp_path):
    from p2p.hyper.checkpoint import META

    checkpoint = _checkpoint(tmp_path / "ckpt")
    (checkpoint / META).write_text("{not json")
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films.\n")
    line = _one_line(_cli("export-adapter", "--profile", profile, "--out", tmp_path / "adapter", "--checkpoint",
                          checkpoint, "--cache-dir", tmp_path / "models"))
    assert line.startswith(f"error: {checkpoint / META}: record line 1: malformed JSON")

    params = project / "latin1.yaml"
    params.write_bytes((project / "params.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    line = _one_line(_cli("config", "--params", params))
    assert line.startswith(f"error: {params}: record line ") and "not UTF-8" in line


def test_a_preset_defined_in_params_yaml_works_everywhere(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["preset"] = "mine"
    raw["presets"]["mine"] = {**raw["presets"]["smoke"], "seed": 7}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    done = _cli("config", "--params", project / "params.yaml")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["preset"] == "mine"
    done = _cli("prepare", "--params", project / "params.yaml")
    assert done.returncode == 0, done.stderr
    assert (project / "data/prepared/synth/LaMP-2M.jsonl").is_file()


# --- item 8: bad input no longer accepted silently -------------------------------------------------------------------


def test_duplicate_keys_in_params_are_refused_with_file_and_line(project):
    text = (project / "params.yaml").read_text()
    path = _params(project, text + "seed: 3\n")
    line = _one_line(_cli("config", "--params", path))
    expected = f"error: {path}: record line {len(text.splitlines()) + 1}: not valid YAML (duplicate key 'seed'"
    assert line.startswith(expected)


def _bool_seed(raw):
    raw["seed"] = True


def _no_sources(raw):
    raw["presets"]["smoke"]["data"]["sources"] = []


@pytest.mark.parametrize("mutate, expected", [
    (_bool_seed, ": seed: Input should be a valid integer, got True"),
    (_no_sources, ": data.sources: List should have at least 1 item"),
])
def test_a_bool_for_a_number_and_no_data_sources_are_refused(project, mutate, expected):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    mutate(raw)
    path = _params(project, yaml.safe_dump(raw))
    line = _one_line(_cli("config", "--params", path))
    assert line.startswith(f"error: {path}: preset 'smoke'") and expected in line


def test_nan_in_a_profile_field_is_refused_at_read_and_nothing_is_written(project):
    questions = project / QUESTIONS
    text = questions.read_text()
    data = json.loads(text)
    data[2]["profile"][1]["rating"] = float("nan")  # an extra field the loader keeps as it is
    questions.write_text(json.dumps(data))
    line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
    assert line == f"error: {questions}: record item 2: field 'profile[1].rating': NaN is not valid JSON (numbers " \
                   f"must be finite)"
    assert not (project / "data/prepared").exists()


def test_an_oversized_profile_is_refused_before_anything_loads(tmp_path):
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films. " * 100_000)  # 1.4 MB
    line = _one_line(_cli("personalize", "--query", "hi", "--profile", profile, "--checkpoint", tmp_path / "none"))
    assert line == f"error: {profile}: 1,400,000 bytes, over the limit of 1,000,000"


# --- item 10: arguments are checked before any model loads -----------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--device", "tpu"], "error: device 'tpu': not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:x"], "error: device 'cuda:x': not a device"),
    (["--max-new-tokens", "0"], "error: max_new_tokens: expected at least 1, got 0"),
])
def test_bad_device_and_answer_length_fail_before_the_model_loads(tmp_path, extra, expected):
    checkpoint = _checkpoint(tmp_path / "ckpt")  # its base model does not exist: loading it would fail differently
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films.\n")
    line = _one_line(_cli("personalize", "--query", "hi", "--profile", profile, "--checkpoint", checkpoint,
                          "--cache-dir", tmp_path / "models", *extra))
    assert line.startswith(expected)


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films.\n")
    line = _one_line(_cli("personalize", "--query", "hi", "--profile", profile, "--checkpoint",
                          _checkpoint(tmp_path / "ckpt"), "--cache-dir", tmp_path / "models", "--device", "cuda"))
    assert line.startswith("error: device 'cuda': no CUDA GPU is visible here")


def test_export_adapter_checks_its_task_before_the_model_loads(tmp_path):
    profile = tmp_path / "profile.txt"
    profile.write_text("I like films.\n")
    line = _one_line(_cli("export-adapter", "--profile", profile, "--out", tmp_path / "adapter", "--task", "LaMP-99",
                          "--checkpoint", _checkpoint(tmp_path / "ckpt"), "--cache-dir", tmp_path / "models"))
    assert line.startswith("error: unknown task 'LaMP-99'")
    assert not (tmp_path / "adapter").exists()


# --- item 11: one writer at a time -----------------------------------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


HOLD = """import fcntl, pathlib, sys, time
lock = pathlib.Path(sys.argv[1]); lock.parent.mkdir(parents=True, exist_ok=True)
fh = open(lock, "a+"); fcntl.flock(fh, fcntl.LOCK_EX); fh.truncate(0); fh.write(" %d\\n" % __import__("os").getpid())
fh.flush(); pathlib.Path(sys.argv[2]).touch()
while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.1)
"""


#: A p2p writer: the CLI's own lock (p2p.lock.project_lock), held until a file appears.
HOLD_P2P = """import pathlib, sys, time
from p2p.lock import project_lock
lock, rwlock, ready, go = map(pathlib.Path, sys.argv[1:])
with project_lock(lock, rwlock):
    ready.touch()
    while not go.exists(): time.sleep(0.1)
"""


@pytest.mark.parametrize("dvc_project", [False, True])
def test_a_second_writer_is_refused_while_the_first_holds_the_project(project, dvc_project):
    """The first writer takes the lock as a p2p command (or, in a DVC project, as `dvc repro` does: an flock on
    .dvc/tmp/lock); `p2p prepare` meanwhile is refused with one line, writes nothing, and runs once it is free."""
    if dvc_project:
        (project / ".dvc").mkdir()
    lock = project / (".dvc/tmp/lock" if dvc_project else ".p2p.lock")
    ready, done = project / "ready", project / "done"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(ready), str(done)])
    try:
        _wait_for(ready, holder)
        line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
        assert line == (f"error: {lock}: process {holder.pid} is writing this project (`dvc repro` or another p2p "
                        f"command); run this again when it has finished")
        assert not (project / "data/prepared").exists()
    finally:
        done.touch()
        holder.wait(timeout=60)
    done_run = _cli("prepare", "--params", project / "params.yaml")
    assert done_run.returncode == 0, done_run.stderr
    assert (project / "data/prepared/synth/LaMP-2M.jsonl").is_file()


@pytest.mark.slow
def test_cli_writers_and_dvc_repro_exclude_each_other(project):
    """A real `dvc repro` running a stage refuses `p2p prepare`; a p2p writer holding the project refuses
    `dvc repro` (DVC's own message)."""
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.exists():
        pytest.skip("dvc is not installed in this environment")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(project / ".dvc_site_cache")}
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=project, check=True, env=env, timeout=120)
    ready, go = project / "stage-ready", project / "stage-go"
    wait = (f"import pathlib, time; pathlib.Path('{ready.name}').touch()\n"
            f"while not pathlib.Path('{go.name}').exists(): time.sleep(0.1)\n"
            f"pathlib.Path('held.txt').write_text('done')")
    (project / "hold.py").write_text(wait)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"hold": {
        "cmd": f"{sys.executable} hold.py", "deps": ["hold.py"], "outs": ["held.txt"]}}}))
    repro = subprocess.Popen([str(dvc), "repro", "-q"], cwd=project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, repro)
        line = _one_line(_cli("prepare", "--params", project / "params.yaml"))
        assert line.startswith(f"error: {project / '.dvc/tmp/rwlock'}: `") and "dvc" in line
        assert f"(process {repro.pid}) is running a stage of this project" in line
        assert not (project / "data/prepared").exists()
    finally:
        go.touch()
        out, err = repro.communicate(timeout=120)
    assert repro.returncode == 0, err

    ready.unlink()
    go.unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_P2P, str(project / ".dvc/tmp/lock"),
                               str(project / ".dvc/tmp/rwlock"), str(ready), str(go)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_for(ready, holder)
        (project / "hold.py").write_text(wait + "  # changed: the stage must run again\n")
        refused = subprocess.run([str(dvc), "repro"], cwd=project, env=env, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode != 0 and "Unable to acquire lock" in refused.stderr + refused.stdout
    finally:
        go.touch()
        holder.wait(timeout=60)
