"""What every trainer of the project shares: P2P's hypernetwork (p2p.hyper.train) and the plain LoRAs of MT-LoRA
and OPPU (p2p.baselines.lora_training) train from the same samples, batches, loss, noise and schedule, so the
methods differ only in where the adapter comes from (docs/architecture.md §9).

- samples and their tokens: `Sample` (one query of one user: prompt, gold answer, profile embedding), `Encoded`
  and `encode` (the chat template; completion-only or causal-LM labels, left truncation);
- batches: `draw_batch` (tasks mixed in proportion to sqrt(size), a pure function of (seed, step, micro-batch), so
  a resumed run redraws the same), `left_pad`, `to_device`;
- the loss: `sample_losses` (each sample's mean token cross-entropy with label smoothing), `lm_loss`;
- regularisers and schedule: `neftune` (noise on the input embeddings), `warmup_linear` and `lr_schedule`;
- memory and resumption: `activation_checkpointing`, `rng_state` / `set_rng_state`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from p2p.models.generation import answer_ids

#: The label of a token the loss ignores (the prompt, with a completion-only loss; padding).
IGNORE = -100


@dataclass(frozen=True)
class Sample:
    """One query of one user: the task's prompt, the gold answer, and the profile embedding of that query (P2P
    conditions on it; MT-LoRA ignores it; OPPU's samples carry an empty one)."""

    task: str
    user_id: str
    query_id: str
    prompt: str
    target: str
    embedding: np.ndarray  # float32 (dim,)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode(tokenizer: Any, sample: Sample, *, max_length: int, completion_only: bool) -> Encoded:
    """Token ids and labels of prompt + answer; longer than max_length loses the start (left truncation)."""
    prompt, answer = answer_ids(tokenizer, sample.prompt, sample.target)
    full = prompt + answer
    labels = [IGNORE] * len(prompt) + full[len(prompt):] if completion_only else list(full)
    return Encoded(full[-max_length:], labels[-max_length:])


def task_weights(sizes: dict[str, int]) -> dict[str, float]:
    """Probability of drawing each task: proportional to sqrt(number of samples)."""
    roots = {task: math.sqrt(n) for task, n in sizes.items() if n > 0}
    total = sum(roots.values())
    return {task: r / total for task, r in roots.items()}


def draw_batch(sizes: dict[str, int], seed: int, step: int, micro: int, tasks_per_batch: int,
               samples_per_task: int) -> list[tuple[str, int]]:
    """(task, sample index) pairs of one micro-batch; depends only on its arguments, so resuming redraws the same."""
    weights = task_weights(sizes)
    names = sorted(weights)
    rng = np.random.default_rng([seed, step, micro])
    tasks = rng.choice(len(names), size=tasks_per_batch, p=[weights[n] for n in names])
    return [(names[t], int(i)) for t in tasks for i in rng.integers(0, sizes[names[t]], size=samples_per_task)]


def left_pad(encoded: Sequence[Encoded], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Left-padded batch with position ids counted from each row's first real token (as `generate` does), so every
    answer ends at the last position and the loss needs logits only for the last few positions."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[row, width - n:] = torch.tensor(e.input_ids)
        labels[row, width - n:] = torch.tensor(e.labels)
        mask[row, width - n:] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}
    return {k: to_device(v, device) for k, v in batch.items()}


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a host tensor to `device`; to a GPU from pinned memory, without blocking the host."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float) -> torch.Tensor:
    """Mean over samples of each sample's mean token cross-entropy; logits only where labels can be."""
    return sample_losses(model, batch, label_smoothing).mean()


def sample_losses(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float) -> torch.Tensor:
    """Each sample's mean token cross-entropy, (rows,): the loss of several LoRAs trained in one batch is the sum of
    each one's mean over its own rows."""
    labels = batch["labels"]
    labelled = (labels != IGNORE).any(dim=0).nonzero()
    if labelled.numel() == 0:
        raise ValueError("a batch has no labelled token; raise train.max_length")
    width = labels.shape[1]
    keep = min(width, width - int(labelled.min()) + 1)  # a labelled token is predicted from the position before it
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    shifted_logits, shifted = logits[:, :-1].float(), labels[:, width - keep + 1:]
    token = nn.functional.cross_entropy(shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted.reshape(-1),
                                        ignore_index=IGNORE, reduction="none",
                                        label_smoothing=label_smoothing).view(shifted.shape)
    counts = (shifted != IGNORE).sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a sample has no labelled token left after truncation; raise train.max_length")
    return token.sum(dim=1) / counts


@contextlib.contextmanager
def neftune(model: nn.Module, alpha: float) -> Iterator[None]:
    """Uniform noise of scale alpha / sqrt(length · dim) on the input embeddings while the model trains (NEFTune)."""
    if alpha <= 0:
        yield
        return

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.shape[1] * output.shape[2])
        return output + torch.empty_like(output).uniform_(-scale, scale)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def warmup_linear(total: int, warmup_fraction: float, schedule: str = "linear") -> Callable[[int], float]:
    """LR multiplier: linear warmup over the first fraction of steps, then linear decay to zero.

    `linear` (ours): round(total·fraction) warmup steps (at least 1), the first step already at 1/warmup.
    `hf_linear`: transformers' `get_scheduler("linear")` as the authors call it (cf-x/P2P
    scripts/train_custom_sft.py): int(total·fraction) warmup steps from a multiplier of 0 at step 0."""
    if schedule == "hf_linear":
        hf_warmup = int(total * warmup_fraction)

        def hf_factor(step: int) -> float:
            if step < hf_warmup:
                return step / max(1, hf_warmup)
            return max(0.0, (total - step) / max(1, total - hf_warmup))

        return hf_factor
    if schedule != "linear":
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (linear or hf_linear)")
    warmup = max(1, round(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def lr_schedule(optimizer: torch.optim.Optimizer, totals: Sequence[int], warmup_fraction: float,
                schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_linear` on each parameter group of `optimizer`, group i over its own `totals[i]` steps (P2P: one
    group; several LoRAs trained together: one each)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [warmup_linear(total, warmup_fraction, schedule) for total in totals])


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute the base model's decoder layers in backward (transformers' non-reentrant checkpointing) while
    inside; the model is left as it was found."""
    if not enabled or model.is_activation_checkpointing:
        yield
        return
    model.activation_checkpointing_enable()
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def rng_state() -> dict[str, Any]:
    """The global torch random streams (CPU, and every GPU's), for a checkpoint to resume dropout and noise."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
