"""The per-row LoRA core is exact: hooks == PEFT LoRA, exported adapters reload in PEFT, rows stay independent.

Everything runs on the tiny random Qwen2 (2 layers, q_proj 64->64, v_proj 64->32) in fp32 on the CPU against real
PEFT, so any difference in formula, scaling (rsLoRA), weight layout, padding or KV-cache handling shows up.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from p2p.hyper.hypernet import HyperNetwork, HyperShape, resolve_task
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied, find_targets, freeze
from p2p.lora.peft import CONFIG_NAME, WEIGHTS_NAME, export_adapter
from p2p.models.loading import load_causal_lm
from p2p.models.presets import TINY_RANDOM

LORA = LoraShape(targets=("q_proj", "v_proj"), rank=4, alpha=8.0, dropout=0.05, rslora=True)
EMBED_DIM = 16
HYPER = HyperShape(latent=32, head_in=32)
TASKS = ("LaMP-2M", "LaMP-3")
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(model_cache):
    """(base model in eval mode, tokenizer, layout); tests that change the model work on a deepcopy."""
    model, tokenizer = load_causal_lm(TINY_RANDOM, model_cache)
    return model, tokenizer, find_targets(model, LORA.targets)


def random_adapters(layout: TargetLayout, batch: int, *, a_std: float = 0.1, b_std: float = 0.1,
                    seed: int = 0) -> Adapters:
    """Random A and B, both non-zero (B = 0 would make every comparison trivially pass)."""
    gen = torch.Generator().manual_seed(seed)
    n, r = len(layout.layers), LORA.rank
    a = {k: torch.randn(batch, n, r, d_in, generator=gen) * a_std for k, (d_in, _) in layout.shapes.items()}
    b = {k: torch.randn(batch, n, d_out, r, generator=gen) * b_std for k, (_, d_out) in layout.shapes.items()}
    return Adapters(a, b)


def peft_model(base: torch.nn.Module, layout: TargetLayout, adapters: Adapters, row: int) -> torch.nn.Module:
    """PEFT LoRA on a fresh copy of `base`, with row `row`'s A and B copied into lora_A / lora_B by module name."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, target_modules=list(LORA.targets), use_rslora=True,
                        lora_dropout=LORA.dropout, init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for kind, names in layout.names.items():
            for position, name in enumerate(names):
                module = model.base_model.model.get_submodule(name)
                module.lora_A["default"].weight.copy_(adapters.a[kind][row, position])
                module.lora_B["default"].weight.copy_(adapters.b[kind][row, position])
    return model.eval()


def random_tokens(tokenizer, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random ordinary token ids (never a special token such as pad/eos)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, len(tokenizer), (rows, length), generator=gen)


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) as the tokenizer makes them for generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def test_hooks_equal_peft_lora_row_by_row(tiny):
    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, 3)
    ids = random_tokens(tokenizer, 3, 12)
    base = model(ids).logits
    with adapters_applied(model, layout, LORA, adapters):
        hooked = model(ids).logits
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())  # hooks removed
    torch.testing.assert_close(model(ids).logits, base, atol=0, rtol=0)
    for i in range(3):
        reference = peft_model(model, layout, adapters, i)(ids[i:i + 1]).logits[0]
        assert (reference - base[i]).abs().max() > 1e-3  # the adapter really changes the output
        torch.testing.assert_close(hooked[i], reference, atol=ATOL, rtol=0)


@torch.no_grad()
def test_hooks_equal_peft_lora_with_left_padding(tiny):
    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, 3, seed=1)
    lengths = [12, 7, 4]
    rows = [random_tokens(tokenizer, 1, n, seed=10 + n)[0] for n in lengths]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate computes them for left padding
    with adapters_applied(model, layout, LORA, adapters):
        hooked = model(ids, attention_mask=mask, position_ids=position_ids).logits
    for i, n in enumerate(lengths):
        reference = peft_model(model, layout, adapters, i)(rows[i][None]).logits[0]
        torch.testing.assert_close(hooked[i, -n:], reference, atol=ATOL, rtol=0)


@torch.no_grad()
def test_exported_adapter_reloads_in_peft_with_the_hooks_logits(tiny, tmp_path):
    from peft import PeftModel

    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, 3, seed=2)
    ids = random_tokens(tokenizer, 3, 10, seed=2)
    with adapters_applied(model, layout, LORA, adapters):
        hooked = model(ids).logits
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / WEIGHTS_NAME).write_text("an earlier export of ours: replaced whole")
    out = export_adapter(tmp_path / "adapter", layout, LORA, adapters, base_model=TINY_RANDOM, row=1)
    assert out == tmp_path / "adapter" and sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary directory left behind
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["use_rslora"] is True and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["r"] == LORA.rank and config["lora_alpha"] == LORA.alpha
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), out).eval()
    torch.testing.assert_close(reloaded(ids[1:2]).logits[0], hooked[1], atol=ATOL, rtol=0)
    assert (reloaded(ids[1:2]).logits[0] - model(ids[1:2]).logits[0]).abs().max() > 1e-3


@torch.no_grad()
def test_fresh_hypernetwork_gives_the_base_model(tiny):
    model, tokenizer, layout = tiny
    torch.manual_seed(0)
    hyper = HyperNetwork(EMBED_DIM, layout, LORA, HYPER, TASKS).eval()
    adapters = hyper(torch.randn(3, EMBED_DIM), "LaMP-2M")
    for kind, (d_in, d_out) in layout.shapes.items():
        assert adapters.a[kind].shape == (3, len(layout.layers), LORA.rank, d_in)
        assert adapters.b[kind].shape == (3, len(layout.layers), d_out, LORA.rank)
        assert torch.count_nonzero(adapters.b[kind]) == 0
        assert adapters.a[kind].abs().min(dim=-1).values.gt(0).all()  # A is a real (non-zero) LoRA init
    ids = random_tokens(tokenizer, 3, 9, seed=3)
    with adapters_applied(model, layout, LORA, adapters):
        hooked = model(ids).logits
    assert torch.equal(hooked, model(ids).logits)


@torch.no_grad()
def test_input_scaling_standardises_each_task_by_its_own_statistics_and_keeps_step_zero_at_the_base(tiny):
    model, tokenizer, layout = tiny
    hyper = perturbed_hypernetwork(layout).eval()
    reviews = torch.randn(50, EMBED_DIM) * torch.linspace(0.1, 3.0, EMBED_DIM) + 5.0
    reviews[:, 0] = 2.0  # a coordinate constant within a task is only centred
    movies = torch.randn(30, EMBED_DIM) - 5.0
    query = torch.randn(2, EMBED_DIM)
    hyper.fit_input_scaling({"LaMP-3": reviews, "LaMP-2M": movies})
    row = TASKS.index("LaMP-3")
    assert hyper.input_std[row, 0] == 1.0 and hyper.input_mean[row, 0] == 2.0
    for task, training in (("LaMP-3", reviews), ("LaMP-2M", movies)):
        mean, std = hyper.input_mean[TASKS.index(task)], hyper.input_std[TASKS.index(task)]
        standardised = (training - mean) / std
        varies = slice(1, None) if task == "LaMP-3" else slice(None)
        torch.testing.assert_close(standardised[:, varies].mean(0), torch.zeros_like(mean[varies]), atol=1e-4,
                                   rtol=0)
        torch.testing.assert_close(standardised[:, varies].std(0, correction=0), torch.ones_like(std[varies]),
                                   atol=1e-4, rtol=0)
        plain = perturbed_hypernetwork(layout).eval()  # same weights, identity scaling
        torch.testing.assert_close(hyper(query, task).b["v_proj"], plain((query - mean) / std, task).b["v_proj"])
    mixed = hyper(query, ["LaMP-3", "LaMP-2M"]).b["v_proj"]  # one task per row: each row its own statistics
    torch.testing.assert_close(mixed[0], hyper(query[:1], "LaMP-3").b["v_proj"][0])
    torch.testing.assert_close(mixed[1], hyper(query[1:], "LaMP-2M").b["v_proj"][0])
    fresh = HyperNetwork(EMBED_DIM, layout, LORA, HYPER, TASKS)
    fresh.fit_input_scaling({"LaMP-3": reviews, "LaMP-2M": movies})
    assert all(torch.count_nonzero(b) == 0 for b in fresh(query, "LaMP-3").b.values())


def test_input_statistics_golden_values_per_task(tiny):
    """By hand: task A rows (1, 2) and (3, 2) give mean (2, 2), std (1, 1: the constant coordinate is only
    centred); task B rows (10, 0), (10, 4), (10, 8) give mean (10, 4), std (1: constant, sqrt(32/3))."""
    _, _, layout = tiny
    hyper = HyperNetwork(2, layout, LORA, HYPER, ("A", "B"))
    hyper.fit_input_scaling({"B": torch.tensor([[10.0, 0.0], [10.0, 4.0], [10.0, 8.0]]),
                             "A": torch.tensor([[1.0, 2.0], [3.0, 2.0]])})
    torch.testing.assert_close(hyper.input_mean, torch.tensor([[2.0, 2.0], [10.0, 4.0]]))
    torch.testing.assert_close(hyper.input_std, torch.tensor([[1.0, 1.0], [1.0, math.sqrt(32 / 3)]]))
    pooled_std = torch.tensor([[1.0, 2.0], [3.0, 2.0], [10.0, 0.0], [10.0, 4.0], [10.0, 8.0]]).std(0, correction=0)
    assert pooled_std[0] > 3.9  # pooled, the offset between the tasks made the first coordinate spread 4x wider
    with pytest.raises(ValueError, match="exactly the tasks"):
        hyper.fit_input_scaling({"A": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="task B: no training sample"):
        hyper.fit_input_scaling({"A": torch.ones(2, 2), "B": torch.ones(0, 2)})


def test_a_task_the_hypernetwork_was_not_trained_on_is_a_one_line_error(tiny):
    _, _, layout = tiny
    hyper = HyperNetwork(EMBED_DIM, layout, LORA, HYPER, TASKS)
    with pytest.raises(ValueError, match=r"^the hypernetwork was not trained on task 'LaMP-7'.*\(trained: LaMP-2M, "
                                         r"LaMP-3\)$"):
        hyper(torch.randn(1, EMBED_DIM), "LaMP-7")
    with pytest.raises(ValueError, match="2 task names for 1 profile embeddings"):
        hyper(torch.randn(1, EMBED_DIM), ["LaMP-2M", "LaMP-3"])
    assert resolve_task(("LaMP-2M",), None) == "LaMP-2M"  # one task: it may go unsaid
    with pytest.raises(ValueError, match="say which task"):
        resolve_task(TASKS, None)
    with pytest.raises(ValueError, match="distinct task names"):
        HyperNetwork(EMBED_DIM, layout, LORA, HYPER, ("A", "A"))


def perturbed_hypernetwork(layout: TargetLayout, seed: int = 0) -> HyperNetwork:
    """A hypernetwork as after some training: non-zero head weights, so B depends on the profile."""
    torch.manual_seed(seed)
    hyper = HyperNetwork(EMBED_DIM, layout, LORA, HYPER, TASKS)
    with torch.no_grad():
        for head in hyper.heads.values():
            torch.nn.init.normal_(head.weight, std=0.02)
    return hyper


@torch.no_grad()
def test_changing_one_profile_changes_only_that_row(tiny):
    model, tokenizer, layout = tiny
    hyper = perturbed_hypernetwork(layout).eval()
    embeddings = torch.randn(3, EMBED_DIM, generator=torch.Generator().manual_seed(4))
    ids = random_tokens(tokenizer, 3, 9, seed=4)
    adapters = hyper(embeddings, "LaMP-2M")
    assert all(torch.count_nonzero(b) > 0 for b in adapters.b.values())
    with adapters_applied(model, layout, LORA, adapters) as hooks:
        before = model(ids).logits
        for i in range(3):
            changed = embeddings.clone()
            changed[i] = torch.randn(EMBED_DIM, generator=torch.Generator().manual_seed(40 + i))
            hooks.set(hyper(changed, "LaMP-2M"))
            after = model(ids).logits
            assert not torch.allclose(after[i], before[i], atol=1e-6, rtol=0), f"row {i} did not change"
            for j in set(range(3)) - {i}:
                assert torch.equal(after[j], before[j]), f"changing row {i} changed row {j}"


def test_gradients_reach_the_hypernetwork_and_not_the_base_model(tiny):
    model, tokenizer, layout = tiny
    model = freeze(copy.deepcopy(model)).train()
    ids = random_tokens(tokenizer, 3, 9, seed=5)
    embeddings = torch.randn(3, EMBED_DIM, generator=torch.Generator().manual_seed(5))

    def loss_of(hyper: HyperNetwork) -> torch.Tensor:
        with adapters_applied(model, layout, LORA, hyper(embeddings, "LaMP-2M")):
            logits = model(ids).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    # Step 0 (B = 0): only B can learn first, through the head bias; A gets no gradient yet.
    fresh = HyperNetwork(EMBED_DIM, layout, LORA, HYPER, TASKS).train()
    loss_of(fresh).backward()
    for kind, (d_in, _) in layout.shapes.items():
        grad = fresh.heads[kind].bias.grad
        assert torch.count_nonzero(grad[LORA.rank * d_in:]) > 0 and torch.count_nonzero(grad[:LORA.rank * d_in]) == 0

    # After some training (non-zero heads) every hypernetwork parameter learns; the base model never does.
    hyper = perturbed_hypernetwork(layout, seed=1).train()
    loss_of(hyper).backward()
    for name, param in hyper.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, f"no gradient for {name}"
    for kind, (d_in, _) in layout.shapes.items():  # both halves of every head: the A rows and the B rows
        for grad in (hyper.heads[kind].weight.grad, hyper.heads[kind].bias.grad):
            assert torch.count_nonzero(grad[:LORA.rank * d_in]) > 0 and torch.count_nonzero(grad[LORA.rank * d_in:]) > 0
    for name, param in model.named_parameters():
        assert not param.requires_grad and param.grad is None, f"base parameter {name} would train"


@torch.no_grad()
def test_batched_generation_with_kv_cache_equals_generating_each_row_alone_with_peft(tiny):
    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, 3, a_std=0.3, b_std=0.5, seed=6)
    rows = [random_tokens(tokenizer, 1, n, seed=60 + n)[0] for n in (8, 5, 3)]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with adapters_applied(model, layout, LORA, adapters):
        batched = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1]:]
    base = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1]:]
    assert batched.shape == (3, 8)
    for i, row in enumerate(rows):
        alone = peft_model(model, layout, adapters, i).generate(input_ids=row[None],
                                                               attention_mask=torch.ones_like(row[None]), **settings)
        assert batched[i].tolist() == alone[0, len(row):].tolist(), f"row {i}"
        assert batched[i].tolist() != base[i].tolist(), f"row {i}: the adapter did not change the generation"


@torch.no_grad()
def test_mismatched_adapters_and_unknown_targets_raise(tiny):
    model, tokenizer, layout = tiny
    ids = random_tokens(tokenizer, 3, 6, seed=7)
    with adapters_applied(model, layout, LORA, random_adapters(layout, 2)):
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*adapters for 2 rows"):
            model(ids)
    wrong_rank = LoraShape(rank=LORA.rank + 1)
    with pytest.raises(ValueError, match="q_proj"):
        with adapters_applied(model, layout, wrong_rank, random_adapters(layout, 3)):
            pass
    with pytest.raises(ValueError, match="k_proj_typo"):
        find_targets(model, ("q_proj", "k_proj_typo"))


@torch.no_grad()
def test_lora_dropout_acts_only_in_training_mode(tiny):
    model, tokenizer, layout = tiny
    model = copy.deepcopy(model)
    adapters = random_adapters(layout, 3, seed=8)
    ids = random_tokens(tokenizer, 3, 9, seed=8)
    with adapters_applied(model, layout, LORA, adapters):
        model.train()  # the tiny Qwen2 has no dropout of its own (attention_dropout 0): only the LoRA input's
        assert not torch.equal(model(ids).logits, model(ids).logits)
        model.eval()
        assert torch.equal(model(ids).logits, model(ids).logits)
