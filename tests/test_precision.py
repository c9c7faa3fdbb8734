"""Compute precision (p2p.models.precision): native-bf16 detection, the `auto` rule, and bf16 autocast choosing the
same labels as fp32 on the real SmolLM2-135M, with and without a LoRA adapter, on held-out synthetic queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from p2p.data import synth
from p2p.lora.hooks import Adapters, LoraShape, adapters_applied, find_targets, freeze
from p2p.models.choice import label_logprobs
from p2p.models.loading import load_causal_lm
from p2p.models.precision import autocast, compute_dtype, cpu_has_native_bf16, model_compute_dtype, set_compute_dtype
from p2p.tasks import get_task
from p2p.tasks.registry import choice_labels

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Labels chosen in bf16 that must equal fp32's (the condition for keeping bf16 as the default where native).
MIN_AGREEMENT = 0.98


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw\n")  # AVX512 emulates bf16: no
    assert cpu_has_native_bf16(amx) and not cpu_has_native_bf16(plain)
    assert not cpu_has_native_bf16(tmp_path / "missing")  # no /proc (macOS, Windows): fp32


def test_auto_precision_and_the_autocast_it_enters(model_cache):
    assert compute_dtype("fp32", "cpu") == torch.float32 and compute_dtype("bf16", "cpu") == torch.bfloat16
    assert compute_dtype("auto", "cuda") == torch.bfloat16
    assert compute_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        compute_dtype("fp16", "cpu")  # type: ignore[arg-type]
    model, _ = load_causal_lm("tiny-random-qwen2", model_cache)
    assert model_compute_dtype(model) == torch.float32 and not torch.is_autocast_enabled("cpu")
    bf16, _ = load_causal_lm("tiny-random-qwen2", model_cache, precision="bf16")
    assert next(bf16.parameters()).dtype == torch.float32  # weights stay fp32: autocast only
    with autocast(bf16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(model):
        assert not torch.is_autocast_enabled("cpu")


def heldout_prompts(tmp_path, task: str, users: int) -> list[str]:
    """One query per user of a synthetic benchmark generated with a seed no pipeline preset trains on."""
    task_dir = synth.generate(tmp_path, seed=9_001, users=users, history_items=2, queries_per_user=1,
                              tasks=[task])[task]
    questions = json.loads((task_dir / "train_questions.json").read_text(encoding="utf-8"))
    return [get_task(task).build_prompt(q["input"]) for q in questions]


def test_bf16_choice_scoring_against_fp32_on_smollm2_decides_evaluation_precision(model_cache, tmp_path):
    """The gate for bf16 in evaluation: its chosen labels must match fp32's on >= 98% of held-out LaMP-2M and LaMP-3
    queries, for the base model and with a LoRA adapter on every row. Measured on the base model with 50 queries per
    task: 98% on LaMP-2M, 94% on LaMP-3 (its five ratings are often near-tied: median top-two margin 0.34 nats), so
    evaluation stays fp32 on a CPU (stages.common.base_model). This fails if evaluation were to compute in bf16
    without meeting the gate, or if bf16 autocast were broken outright (agreement far below)."""
    model, tokenizer = load_causal_lm(SMOLLM2, model_cache)
    lora = LoraShape(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.0)
    layout = find_targets(model, lora.targets)
    gen = torch.Generator().manual_seed(0)
    n = len(layout.layers)
    adapter = Adapters({k: torch.randn(1, n, lora.rank, d_in, generator=gen) / d_in ** 0.5
                        for k, (d_in, _) in layout.shapes.items()},
                       {k: torch.randn(1, n, d_out, lora.rank, generator=gen) * 0.02
                        for k, (_, d_out) in layout.shapes.items()})

    def with_adapter(rows: list[int]):
        return adapters_applied(model, layout, lora, adapter.rows([0] * len(rows)))

    agree, changed, total = 0, 0, 0
    for task in ("LaMP-2M", "LaMP-3"):
        prompts, labels = heldout_prompts(tmp_path / task, task, users=12), choice_labels(task)
        picks = {}
        for dtype in (torch.float32, torch.bfloat16):
            set_compute_dtype(model, dtype)
            for name, rows in (("base", None), ("lora", with_adapter)):
                picks[dtype, name] = label_logprobs(model, tokenizer, prompts, labels, batch_size=12,
                                                    row_context=rows).choose()
        for name in ("base", "lora"):
            agree += int((picks[torch.float32, name] == picks[torch.bfloat16, name]).sum())
            total += len(prompts)
        changed += int((picks[torch.float32, "base"] != picks[torch.float32, "lora"]).sum())
    assert total == 48  # 12 prompts per task: bf16 on a CPU without native bf16 (AVX2 only) takes minutes
    assert changed > 0  # the adapter changes answers, so the "lora" half tests something the base half does not
    assert agree / total > 0.85, f"bf16 chose the fp32 label for only {agree} of {total} prompts: autocast is broken"
    evaluation = compute_dtype("fp32", "cpu")  # what stages.common.base_model gives evaluation on a CPU
    assert agree / total >= MIN_AGREEMENT or evaluation == torch.float32, \
        f"evaluation computes in bf16 but bf16 chose the fp32 label for only {agree} of {total} prompts"


def test_evaluation_loads_fp32_and_training_its_precision(tmp_path):
    from p2p.config import load_config
    from p2p.stages.common import base_model

    cfg = load_config(preset="smoke")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": "bf16"})})
    evaluation, _, _ = base_model(cfg, Path.cwd())
    training, _, _ = base_model(cfg, Path.cwd(), training=True)
    assert model_compute_dtype(evaluation) == torch.float32 and model_compute_dtype(training) == torch.bfloat16


def test_the_generation_backend_holds_bf16_weights_when_it_computes_in_bf16_and_says_so_in_its_cache_key():
    """Summaries only generate, so their model is bf16 through and through where it computes in bf16 (autocast over
    fp32 weights would keep the attention cache in fp32); its text differs from fp32's and from autocast's, so the
    model id that keys the summaries cache says which it is."""
    from p2p.config import load_config
    from p2p.stages.common import generation_backend

    cfg = load_config(preset="smoke")
    ids = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": precision})})
        backend, _ = generation_backend(cfg, Path.cwd())
        assert {p.dtype for p in backend.model.parameters()} == {dtype}
        assert model_compute_dtype(backend.model) == dtype
        ids[precision] = backend.model_id
    assert ids["bf16"] == ids["fp32"] + ":bf16-weights"


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_generation_in_bf16_decodes_over_fp32_weights_under_autocast_and_over_bf16_weights(model_cache, weights):
    """Autocast over fp32 weights makes fp32 keys and bf16 values, which the preallocated cache cannot hold (it then
    decodes into the growing one); bf16 weights decode into the preallocated cache. Both with a shared prefix."""
    from p2p.models.decoding import TransformersBackend
    from p2p.models.generation import Sampling

    model, tokenizer = load_causal_lm("tiny-random-qwen2", model_cache, precision="bf16", dtype=weights)
    instruction = "Read the note and answer in one word, without preamble, lists or formatting of any kind. " * 3
    conversations = [[{"role": "user", "content": instruction + note}] for note in ("Bees.", "A red bicycle.", "Hm")]
    backend = TransformersBackend(model, tokenizer, "tiny", batch_size=2, progress=False)
    out = backend.generate(conversations, Sampling(max_new_tokens=4))
    assert [g.completion_tokens for g in out] == [4, 4, 4]  # a random model never stops early


def _adapter_grads(model, layout, lora: LoraShape, batch) -> tuple[float, list[torch.Tensor]]:
    """The loss of a batch through per-row adapters and its gradients with respect to them (as training takes them)."""
    from p2p.training import sample_losses

    gen = torch.Generator().manual_seed(0)
    rows, layers = batch["input_ids"].shape[0], len(layout.layers)
    a = {k: (0.1 * torch.randn(rows, layers, lora.rank, d_in, generator=gen)).requires_grad_()
         for k, (d_in, _) in layout.shapes.items()}
    b = {k: (0.1 * torch.randn(rows, layers, d_out, lora.rank, generator=gen)).requires_grad_()
         for k, (_, d_out) in layout.shapes.items()}
    with adapters_applied(model, layout, lora, Adapters(a, b)), autocast(model):
        loss = sample_losses(model, batch, 0.0).sum()
    loss.backward()
    return float(loss.detach()), [t.grad for t in (*a.values(), *b.values())]


def test_training_kernels_give_autocasts_products_and_restore_the_model(model_cache):
    """bf16 copies of the frozen weights are what autocast casts them to, so loss and every adapter gradient are
    bit-identical (with the same attention); afterwards the fp32 weights and SDPA attention are back. Eager attention
    on a CPU changes only the rounding."""
    from p2p.models.precision import training_kernels
    from p2p.training import Encoded, left_pad

    model, tokenizer = load_causal_lm("tiny-random-qwen2", model_cache, precision="bf16")
    freeze(model)
    layout, lora = find_targets(model, ("q_proj", "v_proj")), LoraShape(dropout=0.0)
    ids = [tokenizer("A short prompt and its answer", add_special_tokens=False)["input_ids"],
           tokenizer("Another, longer prompt with more words in it, and then its answer", add_special_tokens=False)
           ["input_ids"]]
    batch = left_pad([Encoded(t, [-100] * (len(t) - 2) + t[-2:]) for t in ids], tokenizer.pad_token_id, "cpu")
    weights = {name: p for name, p in model.named_parameters()}
    before = {name: p.data.clone() for name, p in weights.items()}

    sdpa_loss, sdpa_grads = _adapter_grads(model, layout, lora, batch)
    with training_kernels(model):
        assert model.config._attn_implementation == "eager"
        assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.dtype == torch.float32  # the residual stream stays fp32
        kernel_loss, kernel_grads = _adapter_grads(model, layout, lora, batch)
    assert model.config._attn_implementation == "sdpa"
    assert all(weights[name] is p and p.dtype == torch.float32 and torch.equal(p.data, before[name])
               for name, p in model.named_parameters())
    assert kernel_loss == pytest.approx(sdpa_loss, rel=2e-2)
    assert all((k - s).norm() <= 0.05 * s.norm() for k, s in zip(kernel_grads, sdpa_grads))

    model.set_attn_implementation("eager")  # the same attention both ways: only the weight copies differ
    eager_loss, eager_grads = _adapter_grads(model, layout, lora, batch)
    with training_kernels(model):
        copied_loss, copied_grads = _adapter_grads(model, layout, lora, batch)
    assert copied_loss == eager_loss
    assert all(torch.equal(c, e) for c, e in zip(copied_grads, eager_grads))

    fp32, _ = load_causal_lm("tiny-random-qwen2", model_cache)
    with training_kernels(freeze(fp32)):  # fp32 training keeps fp32 weights
        assert fp32.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
