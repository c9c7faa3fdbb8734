"""`p2p personalize`, `p2p export-adapter` and `p2p bench` on a real checkpoint: tiny Qwen2 base, real MiniLM
embedder, real PEFT. The hypernetwork is untrained but has non-zero heads, so every adapter is non-zero and depends
on the profile text."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, build_smoke_checkpoint
from safetensors.torch import load_file
from typer.testing import CliRunner

from p2p.cli import app
from p2p.data.synth import QUERY_PREFIXES
from p2p.hyper.personalize import Personalizer
from p2p.lora.hooks import adapters_applied
from p2p.lora.peft import CONFIG_NAME, WEIGHTS_NAME
from p2p.models.loading import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "I love dystopian science fiction and slow thought-provoking films; I never watch romantic comedies."
OTHER_PROFILE = "Give me loud action movies with car chases, explosions and a twist ending every time."
TIMING = re.compile(r"^adapter made in \d+(\.\d+)? s\b")
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(model_cache, tmp_path_factory) -> Path:
    """A checkpoint directory as the train stage writes it, for the tiny base and MiniLM (384-d)."""
    return build_smoke_checkpoint(tmp_path_factory.mktemp("ckpt") / "p2p", model_cache)


@pytest.fixture
def profile(tmp_path) -> Path:
    path = tmp_path / "profile.txt"
    path.write_text(PROFILE + "\n", encoding="utf-8")
    return path


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _personalize(checkpoint: Path, profile: Path, model_cache: Path, *extra: str):
    result = _invoke("personalize", "--checkpoint", checkpoint, "--profile", profile, "--cache-dir", model_cache,
                     "--device", "cpu", "--max-new-tokens", "8", *extra)
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip("\n").splitlines()
    assert TIMING.match(lines[-1]), result.stdout
    answer = "\n".join(lines[:-1])
    assert answer.strip(), result.stdout
    return answer


def test_personalize_prints_an_answer_and_the_adapter_time_and_is_deterministic(checkpoint, profile, model_cache):
    first = _personalize(checkpoint, profile, model_cache, "--query", "Recommend me a film for tonight.")
    second = _personalize(checkpoint, profile, model_cache, "--query", "Recommend me a film for tonight.")
    assert first == second


def test_personalize_wraps_an_official_query_in_the_task_prompt(checkpoint, profile, model_cache):
    query = QUERY_PREFIXES["LaMP-2M"] + "A lone engineer wakes on a silent generation ship run by a lying AI."
    _personalize(checkpoint, profile, model_cache, "--task", "LaMP-2M", "--query", query)

    result = _invoke("personalize", "--checkpoint", checkpoint, "--profile", profile, "--cache-dir", model_cache,
                     "--device", "cpu", "--task", "LaMP-2M", "--query", "not the official phrasing")
    assert _one_error_line(result).startswith("error: LaMP-2M: query input does not have the official phrasing")


@torch.no_grad()
def test_exported_adapter_reloads_in_peft_with_the_personalizers_logits(checkpoint, profile, model_cache,
                                                                        tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    result = _invoke("export-adapter", "--checkpoint", checkpoint, "--profile", profile, "--out", out,
                     "--cache-dir", model_cache)
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout and TINY in result.stdout

    personalizer = Personalizer.from_checkpoint(checkpoint, model_cache, device="cpu")
    adapters = personalizer.adapters(personalizer.embed([PROFILE]), None)  # its one task
    ids = personalizer.tokenizer("The movie I liked most was", return_tensors="pt")["input_ids"]
    model, layout = personalizer.model, personalizer.hyper.layout
    with adapters_applied(model, layout, personalizer.meta.lora, adapters):
        hooked = model(ids).logits
    assert (hooked - model(ids).logits).abs().max() > 1e-4  # the adapter is not a no-op

    base, _ = load_causal_lm(TINY, model_cache)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    torch.testing.assert_close(reloaded(ids).logits, hooked, atol=1e-5, rtol=0)

    other = tmp_path / "other.txt"
    other.write_text(OTHER_PROFILE, encoding="utf-8")
    result = _invoke("export-adapter", "--checkpoint", checkpoint, "--profile", other, "--out", tmp_path / "other",
                     "--cache-dir", model_cache)
    assert result.exit_code == 0, result.output
    mine, theirs = load_file(out / WEIGHTS_NAME), load_file(tmp_path / "other" / WEIGHTS_NAME)
    assert mine.keys() == theirs.keys()
    assert any(not torch.allclose(mine[k], theirs[k]) for k in mine if "lora_B" in k)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _tree(path: Path) -> dict[str, str]:
    """Every entry under `path` with the sha256 of its bytes (folders as "dir")."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def test_export_adapter_never_deletes_files_it_did_not_write(checkpoint, profile, model_cache, tmp_path):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("x\n")
    (out / "sub" / "notes.txt").write_text("y\n")
    before = _tree(out)
    export = ["export-adapter", "--checkpoint", checkpoint, "--profile", profile, "--cache-dir", model_cache, "--out"]
    line = _one_error_line(_invoke(*export, out))
    assert line.startswith(f"error: {out}: holds files this command did not write (sub/, thesis.txt)"), line
    assert "--force" in line
    assert _tree(out) == before

    adapter = tmp_path / "adapter"  # an adapter directory of ours is replaced whole, again and again
    for text in (PROFILE, OTHER_PROFILE):
        profile.write_text(text, encoding="utf-8")
        assert _invoke(*export, adapter).exit_code == 0
        assert sorted(p.name for p in adapter.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "d", "profile.txt"]  # no temporaries

    result = _invoke(*export, out, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_a_directory_without_p2p_json_is_not_a_checkpoint(profile, model_cache, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    for command in (["personalize", "--query", "hi", "--device", "cpu"], ["export-adapter", "--out", tmp_path / "out"]):
        line = _one_error_line(_invoke(*command, "--checkpoint", empty, "--profile", profile,
                                       "--cache-dir", model_cache))
        assert "not a P2P checkpoint" in line and str(empty) in line
    assert not (tmp_path / "out").exists()


def test_an_empty_profile_file_is_an_error_naming_the_file(checkpoint, model_cache, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    for command in (["personalize", "--query", "hi", "--device", "cpu"], ["export-adapter", "--out", tmp_path / "out"]):
        line = _one_error_line(_invoke(*command, "--checkpoint", checkpoint, "--profile", empty,
                                       "--cache-dir", model_cache))
        assert str(empty) in line and "empty" in line
    assert not (tmp_path / "out").exists()


def test_a_task_the_checkpoint_was_not_trained_on_is_a_one_line_error(checkpoint, profile, model_cache, tmp_path):
    """The hypernetwork standardises a profile by its task's statistics: LaMP-3 has none in a LaMP-2M checkpoint."""
    from p2p.data.synth import QUERY_PREFIXES

    review = QUERY_PREFIXES["LaMP-3"] + "It works."
    for command in (["personalize", "--query", review, "--device", "cpu"],
                    ["export-adapter", "--out", tmp_path / "out"]):
        line = _one_error_line(_invoke(*command, "--task", "LaMP-3", "--checkpoint", checkpoint, "--profile", profile,
                                       "--cache-dir", model_cache))
        assert "not trained on task 'LaMP-3'" in line and "(trained: LaMP-2M)" in line
    assert not (tmp_path / "out").exists()


def test_unknown_benchmark_lists_the_available_ones(monkeypatch):
    monkeypatch.chdir(ROOT)
    line = _one_error_line(_invoke("bench", "nosuchbench"))
    assert "nosuchbench" in line
    for name in sorted(p.stem for p in (ROOT / "bench").glob("*.py")):
        assert name in line


def test_instruction_embedders_need_the_task_and_wrap_every_section(checkpoint, model_cache):
    import dataclasses

    import numpy as np

    from p2p.profiles.embeddings import scale_rows
    from p2p.profiles.profile_text import profile_sections, profile_text
    from p2p.tasks import get_task
    from p2p.tasks.prompts import render_embedding_prompt

    personalizer = Personalizer.from_checkpoint(checkpoint, model_cache)
    text = profile_text(PROFILE, [OTHER_PROFILE], "total=2 | sci-fi=2 (100%)")
    description = get_task("LaMP-2M").description
    for pooling in ("text", "sections"):
        personalizer.meta = dataclasses.replace(personalizer.meta, embed_instruction=True, embed_pooling=pooling)
        with pytest.raises(ValueError, match="--task"):
            personalizer.embed([text])
        parts = [text] if pooling == "text" else profile_sections(text)
        rows = scale_rows(personalizer.embedder.encode([render_embedding_prompt(description, p) for p in parts]))
        expected = scale_rows(rows.mean(axis=0, keepdims=True))
        np.testing.assert_allclose(personalizer.embed([text], task="LaMP-2M"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv", [
    ["adapters", "--preset", "paper", "--users", "1,2", "--repeats", "1"],  # the 7B layout on the meta device
    ["train", "--preset", "smoke", "--random-weights", "--batch", "2", "--steps", "1", "--gradient-checkpointing"],
])
def test_gpu_benchmarks_run_on_cpu_and_end_with_their_json(argv):
    """The GPU benchmarks' code paths on CPU (a GPU measures the same code): they run and report one JSON line."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{argv[0]}.py"), *argv[1:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["preset"] == argv[2] and result["device"].startswith("cpu")
    if argv[0] == "adapters":  # the paper-size hypernetwork: ~0.43 GB of weights in bf16 (the issue's ~0.45 GB)
        assert 200 < result["hyper_params_m"] < 230 and result["ms_per_user_autocast_2"] > 0
        assert result["adapter_numbers_per_user"] == 28 * 8 * ((3584 + 3584) + (3584 + 512))
    else:
        assert result["gradient_checkpointing"] and result["step_s_hyper"] > 0 and result["peak_mb_lora"] > 0


def test_the_noise_defence_changes_the_exported_adapter_and_refuses_a_negative_scale(checkpoint, profile,
                                                                                      model_cache, tmp_path):
    def export(name: str, *extra: str) -> dict[str, torch.Tensor]:
        result = _invoke("export-adapter", "--checkpoint", checkpoint, "--profile", profile, "--out",
                         tmp_path / name, "--cache-dir", model_cache, *extra)
        assert result.exit_code == 0, result.output
        return load_file(tmp_path / name / WEIGHTS_NAME)

    clean, noisy = export("clean"), export("noisy", "--noise-scale", "1.0")
    assert any(not torch.allclose(clean[k], noisy[k]) for k in clean if "lora_B" in k)
    assert _one_error_line(_invoke("export-adapter", "--checkpoint", checkpoint, "--profile", profile, "--out",
                                   tmp_path / "bad", "--noise-scale", "-1")).startswith("error: noise scale")


def test_a_noisy_personalizer_gives_a_profile_the_same_embedding_each_time(checkpoint, model_cache):
    from p2p.profiles.noise import EmbeddingNoise

    clean = Personalizer.from_checkpoint(checkpoint, model_cache, device="cpu")
    noisy = Personalizer(clean.model, clean.tokenizer, clean.hyper, clean.meta, clean.embedder,
                         noise=EmbeddingNoise(0.5), noise_secret=b"secret")
    exact = clean.embed([PROFILE, OTHER_PROFILE])
    once, again = noisy.embed([PROFILE, OTHER_PROFILE]), noisy.embed([OTHER_PROFILE, PROFILE])
    assert torch.equal(torch.as_tensor(once), torch.as_tensor(again[::-1].copy()))  # keyed by the text, not the row
    distance = float(((once - exact) ** 2).mean() ** 0.5)
    assert 0.4 < distance < 0.6  # the noise's scale per coordinate
