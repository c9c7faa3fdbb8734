"""MT-LoRA: one LoRA trained on every training user's (input, output) pairs, without any user context.

The paper's task-level adaptation without personalisation. It sees exactly P2P's training samples (the same
train users, the same prompts, the same sqrt-mixed batches of `tasks_per_batch` x `samples_per_task`) but no
profile, so the gap between the two is what the profile adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.baselines.lora_training import LoraRun, train_lora
from p2p.hyper.data import Sample, encode
from p2p.hyper.train import draw_batch
from p2p.lora.hooks import LoraShape, TargetLayout

if TYPE_CHECKING:
    from p2p.config import MtLoraConfig, TrainConfig


def mixed_batches(samples: dict[str, list[Sample]], steps: int, seed: int, tasks_per_batch: int,
                  samples_per_task: int) -> tuple[list[Sample], list[list[int]]]:
    """P2P's batch recipe over the same samples, flattened: (all samples, index batches)."""
    names = sorted(samples)
    offsets, flat = {}, []
    for task in names:
        offsets[task] = len(flat)
        flat += samples[task]
    sizes = {task: len(samples[task]) for task in names}
    batches = [[offsets[t] + i for t, i in draw_batch(sizes, seed, step, 0, tasks_per_batch, samples_per_task)]
               for step in range(steps)]
    return flat, batches


def train_mt_lora(model: Any, tokenizer: Any, layout: TargetLayout, lora: LoraShape, samples: dict[str, list[Sample]],
                  mt: MtLoraConfig, tc: TrainConfig, seed: int, progress: bool = True,
                  checkpoint: Path | None = None) -> LoraRun:
    """Train the multi-task LoRA on `samples` (task -> samples) with the `mt_lora` settings and P2P's batch recipe,
    sequence length, loss mode, weight decay and clipping (`tc`); `model` must be frozen. With `checkpoint`, resume
    from and save to that file."""
    flat, batches = mixed_batches(samples, mt.steps, seed, tc.tasks_per_batch, tc.samples_per_task)
    encoded = [encode(tokenizer, s, max_length=tc.max_length, completion_only=tc.loss == "completion") for s in flat]
    return train_lora(model, tokenizer, layout, lora, encoded, batches, lr=mt.lr, seed=seed,
                      weight_decay=tc.weight_decay, warmup=mt.warmup, grad_clip=tc.grad_clip, progress=progress,
                      desc="mt-lora", checkpoint=checkpoint, checkpoint_every=mt.checkpoint_every)
