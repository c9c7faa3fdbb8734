"""Hypernetwork training: exact resumption, learning signal, checkpoints that load safely, and the pieces.

Real tiny Qwen2 (tests/conftest.py `model_cache`), real AdamW, real safetensors checkpoints; CPU, fixed seed.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from p2p.config import TrainConfig
from p2p.hyper.checkpoint import (
    HyperMeta,
    latest_checkpoint,
    load_hypernetwork,
    load_train_state,
    read_meta,
    save_hypernetwork,
)
from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.hyper.train import train_hypernetwork
from p2p.lora.hooks import LoraShape, adapters_applied, find_targets, freeze
from p2p.models.loading import load_causal_lm
from p2p.training import IGNORE, Sample, draw_batch, encode, left_pad, lm_loss, task_weights, warmup_linear

LORA = LoraShape(rank=4, alpha=8.0, dropout=0.05)
SHAPE = HyperShape(latent=32, head_in=32)
DIM = 8


def settings(**overrides) -> TrainConfig:
    base = dict(dir="unused", checkpoints="unused", steps=6, tasks_per_batch=2, samples_per_task=2, grad_accum=2,
                lr=5e-3, weight_decay=0.01, warmup=0.2, grad_clip=1.0, label_smoothing=0.1, l2_adapters=1e-3,
                neftune_alpha=5.0, max_length=64, loss="completion", min_samples_per_task=0, checkpoint_every=2,
                user_fraction=1.0, cluster_fraction=1.0)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def base(model_cache):
    model, tokenizer = load_causal_lm("tiny-random-qwen2", model_cache)
    return freeze(model), tokenizer


def planted_samples(n_users: int = 6, per_user: int = 3) -> dict[str, list[Sample]]:
    """Two tasks; each user's answer is fixed by a one-hot profile, so only the profile can tell it."""
    answers = ["red", "blue", "green"]
    samples: dict[str, list[Sample]] = {"A": [], "B": []}
    for u in range(n_users):
        embedding = np.zeros(DIM, dtype=np.float32)
        embedding[u % 3] = 3.0
        for task in samples:
            for q in range(per_user):
                samples[task].append(Sample(task, f"u{u}", f"{task}-u{u}-q{q}", f"Task {task}: say a colour ({q}).",
                                            answers[u % 3], embedding))
    return samples


def fresh(model, seed: int = 0) -> tuple[HyperNetwork, HyperMeta]:
    layout = find_targets(model, LORA.targets)
    torch.manual_seed(seed)
    hyper = HyperNetwork(DIM, layout, LORA, SHAPE, ("A", "B"))
    meta = HyperMeta(base_llm="tiny-random-qwen2", embedder="none", embedder_kind="sentence", embed_instruction=False,
                     embed_dim=DIM, lora=LORA, shape=SHAPE, layers=layout.layers, shapes=layout.shapes,
                     tasks=("A", "B"), seed=0)
    return hyper, meta


def weights(hyper: HyperNetwork) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hyper.state_dict().items()}


class Killed(Exception):
    pass


def test_a_killed_and_resumed_run_ends_with_the_same_weights(base, tmp_path):
    model, tokenizer = base
    samples = planted_samples()
    tc = settings()

    hyper, meta = fresh(model)
    whole = train_hypernetwork(model, tokenizer, hyper, meta, samples, tc, tmp_path / "whole", seed=0, progress=False)
    uninterrupted = weights(hyper)

    def kill_at_step_5(step: int, metrics: dict) -> None:
        if step == 5:  # after the step-4 checkpoint: step 5's work is lost, as in a real crash
            raise Killed

    hyper, meta = fresh(model)
    with pytest.raises(Killed):
        train_hypernetwork(model, tokenizer, hyper, meta, samples, tc, tmp_path / "killed", seed=0,
                           on_step=kill_at_step_5, progress=False)
    assert latest_checkpoint(tmp_path / "killed").name == "step-000004"

    hyper, meta = fresh(model, seed=123)  # a different init: everything must come from the checkpoint
    resumed = train_hypernetwork(model, tokenizer, hyper, meta, samples, tc, tmp_path / "killed", seed=0,
                                 progress=False)
    assert resumed.resumed_from == 4
    for name, value in weights(hyper).items():
        assert torch.equal(value, uninterrupted[name]), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]


def test_activation_checkpointing_computes_the_same_training(base, tmp_path):
    """Recomputing the decoder layers in backward (GPU memory saver) replays the LoRA hooks and their dropout masks:
    the same losses, gradients and weights; the base model is left without checkpointing afterwards."""
    model, tokenizer = base
    runs = {}
    for flag in (False, True):
        hyper, meta = fresh(model)
        result = train_hypernetwork(model, tokenizer, hyper, meta, planted_samples(),
                                    settings(steps=3, gradient_checkpointing=flag), tmp_path / str(flag), seed=0,
                                    progress=False)
        runs[flag] = weights(hyper), result.history
        assert not model.is_activation_checkpointing
    for name, value in runs[True][0].items():
        torch.testing.assert_close(value, runs[False][0][name], rtol=1e-4, atol=1e-5, msg=name)
    for key in ("loss", "grad_norm"):
        assert [h[key] for h in runs[True][1]] == pytest.approx([h[key] for h in runs[False][1]], rel=1e-5)


def test_checkpoints_are_pruned_and_reload_without_pickle(base, tmp_path):
    model, tokenizer = base
    hyper, meta = fresh(model)
    train_hypernetwork(model, tokenizer, hyper, meta, planted_samples(), settings(steps=6), tmp_path, seed=0,
                       progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000006"]
    state = load_train_state(tmp_path / "step-000006")  # weights_only=True inside: no arbitrary objects
    assert state["step"] == 6 and len(state["history"]) == 6
    loaded, loaded_meta = load_hypernetwork(tmp_path / "step-000006", hyper.layout)
    assert loaded_meta == meta
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, hyper.state_dict()[name])


def test_training_learns_to_use_the_profile(base, tmp_path):
    """After training, the loss with each user's own profile is lower than with another user's.

    The tiny random model's logits are nearly uniform (loss ~ ln(vocab) = 10.8) and q/v adapters on its two layers
    can move them only a little, so the margins are small in absolute terms; a hypernetwork that ignored the
    profile would score own == other exactly.
    """
    model, tokenizer = base
    samples = planted_samples()
    hyper, meta = fresh(model)
    tc = settings(steps=40, lr=1e-2, grad_accum=1, tasks_per_batch=2, samples_per_task=4, neftune_alpha=0.0,
                  label_smoothing=0.0, checkpoint_every=100)
    train_hypernetwork(model, tokenizer, hyper, meta, samples, tc, tmp_path, seed=0, progress=False)
    rows = samples["A"]
    batch = left_pad([encode(tokenizer, s, max_length=64, completion_only=True) for s in rows],
                     tokenizer.pad_token_id, "cpu")
    own = torch.from_numpy(np.stack([s.embedding for s in rows]))
    other = torch.roll(own, shifts=3, dims=0)  # users u and u+1 have different colours (rows are 3 per user)

    def loss(profiles: torch.Tensor) -> float:
        with torch.no_grad(), adapters_applied(model, hyper.layout, LORA, hyper(profiles, "A")):
            return float(lm_loss(model, batch, 0.0))

    with torch.no_grad():
        base_loss = float(lm_loss(model, batch, 0.0))
    print(f"loss: own profile {loss(own):.3f}, another user's {loss(other):.3f}, base model {base_loss:.3f}")
    assert loss(own) < loss(other) - 0.15
    assert loss(own) < base_loss - 0.3


def test_lm_loss_equals_a_plain_per_sample_cross_entropy(base):
    """The logits_to_keep shortcut and left padding give the textbook per-sample mean loss."""
    model, tokenizer = base
    rows = [Sample("A", "u", "q1", "Say yes.", "yes indeed", None),
            Sample("A", "u", "q2", "A much longer prompt that needs padding on the other rows.", "no", None)]
    encoded = [encode(tokenizer, s, max_length=64, completion_only=True) for s in rows]
    batch = left_pad(encoded, tokenizer.pad_token_id, "cpu")
    expected = []
    for e in encoded:
        with torch.no_grad():
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1]
        target = torch.tensor(e.labels[1:])
        expected.append(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE))
    with torch.no_grad():
        got = lm_loss(model, batch, 0.0)
    torch.testing.assert_close(got, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)


def test_encode_masks_the_prompt_and_truncates_from_the_left(base):
    _, tokenizer = base
    sample = Sample("A", "u", "q", "word " * 200, "the answer", None)
    full = encode(tokenizer, sample, max_length=10_000, completion_only=True)
    answer = [t for t in full.labels if t != IGNORE]
    assert tokenizer.decode(answer).startswith("the answer")
    cut = encode(tokenizer, sample, max_length=32, completion_only=True)
    assert len(cut.input_ids) == 32 and cut.input_ids == full.input_ids[-32:]
    causal = encode(tokenizer, sample, max_length=10_000, completion_only=False)
    assert causal.labels == causal.input_ids


def test_batches_mix_tasks_by_sqrt_size_and_are_reproducible():
    sizes = {"big": 400, "small": 100, "empty": 0}
    weights = task_weights(sizes)
    assert weights == pytest.approx({"big": 2 / 3, "small": 1 / 3})
    drawn = [t for step in range(300) for t, _ in draw_batch(sizes, 0, step, 0, 4, 1)]
    assert drawn.count("big") / len(drawn) == pytest.approx(2 / 3, abs=0.04)
    assert draw_batch(sizes, 0, 7, 1, 4, 2) == draw_batch(sizes, 0, 7, 1, 4, 2)
    assert draw_batch(sizes, 0, 7, 1, 4, 2) != draw_batch(sizes, 0, 8, 1, 4, 2)
    assert all(0 <= i < sizes[t] for t, i in draw_batch(sizes, 1, 0, 0, 50, 3))


def test_warmup_then_linear_decay():
    factor = warmup_linear(10, 0.2)
    assert [round(factor(s), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_checkpoint_meta_round_trips_and_a_foreign_base_model_is_refused(base, tmp_path):
    model, _ = base
    hyper, meta = fresh(model)
    save_hypernetwork(tmp_path / "ckpt", hyper, meta)
    assert read_meta(tmp_path / "ckpt") == meta
    data = json.loads((tmp_path / "ckpt" / "p2p.json").read_text())
    data["layers"] = [0, 1, 2]
    (tmp_path / "ckpt" / "p2p.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="trained for tiny-random-qwen2 with layers"):
        load_hypernetwork(tmp_path / "ckpt", hyper.layout)
    with pytest.raises(FileNotFoundError, match="not a P2P checkpoint"):
        read_meta(tmp_path / "nothing")


def test_a_micro_step_split_by_task_gives_the_one_batch_loss_and_gradients(base):
    """Each task's rows padded to their own length (`task_parts`) must train exactly as the one padded batch does:
    the same loss terms and the same gradient in every hypernetwork parameter."""
    from p2p.hyper.train import micro_step, task_parts

    model, tokenizer = base
    samples = planted_samples()
    rows = samples["A"][:2] + [dataclasses.replace(s, prompt=s.prompt + " Think of the whole list of colours first.")
                               for s in samples["B"][:3]]  # task B's prompts longer, as LaMP-2M's are than LaMP-3's
    tasks = [s.task for s in rows]
    encoded = [encode(tokenizer, s, max_length=64, completion_only=True) for s in rows]
    assert len({len(e.input_ids) for e in encoded}) > 1  # padding differs between the two ways
    profiles = torch.from_numpy(np.stack([s.embedding for s in rows]))
    tc = settings(neftune_alpha=0.0, label_smoothing=0.0)
    results = []
    for parts in (task_parts(encoded, tasks, tokenizer.pad_token_id, "cpu"),
                  [(list(range(len(rows))), left_pad(encoded, tokenizer.pad_token_id, "cpu"))]):
        hyper, _ = fresh(model)
        hyper.eval()  # no dropout: the two runs must see the same adapters
        terms = micro_step(model, hyper, hyper, parts, profiles, tasks, tc, 1.0)
        results.append((terms, {name: p.grad.clone() for name, p in hyper.named_parameters() if p.grad is not None}))
    (split, split_grads), (whole, whole_grads) = results
    assert len(task_parts(encoded, tasks, tokenizer.pad_token_id, "cpu")) == 2
    for key in ("loss", "ce", "l2"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5)
    assert split_grads.keys() == whole_grads.keys() and split_grads
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, whole_grads[name], atol=1e-6, rtol=1e-4)
