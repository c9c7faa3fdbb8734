"""MT-LoRA: one LoRA trained on every training user's (input, output) pairs, without any user context.

The paper's task-level adaptation without personalisation, matched to P2P so that the profile is the only
difference between the two: the same train users and prompts, the same sqrt-mixed micro-batches of
`tasks_per_batch` x `samples_per_task` drawn by the same seeded rule, the same number of optimizer steps and
gradient accumulation, the same loss (mode, label smoothing), L2 penalty on A and B, NEFTune noise, weight decay,
warmup and schedule, and clipping: every `train` setting but the learning rate, which is the LoRA's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2p.baselines.lora_training import LoraRecipe, LoraRun, Step, train_lora
from p2p.lora.hooks import LoraShape, TargetLayout
from p2p.training import Sample, draw_batch, encode

if TYPE_CHECKING:
    from p2p.config import MtLoraConfig, TrainConfig


def mixed_steps(samples: dict[str, list[Sample]], tc: TrainConfig, seed: int) -> tuple[list[Sample], list[Step]]:
    """P2P's batches over the same samples, flattened: (all samples, per step its micro-batches of indices)."""
    names = sorted(samples)
    offsets, flat = {}, []
    for task in names:
        offsets[task] = len(flat)
        flat += samples[task]
    sizes = {task: len(samples[task]) for task in names}
    steps = [[[offsets[t] + i for t, i in draw_batch(sizes, seed, step, micro, tc.tasks_per_batch,
                                                     tc.samples_per_task)]
              for micro in range(tc.grad_accum)] for step in range(tc.steps)]
    return flat, steps


def recipe(mt: MtLoraConfig, tc: TrainConfig) -> LoraRecipe:
    """P2P's optimizer, schedule and regularisers with MT-LoRA's learning rate."""
    return LoraRecipe(lr=mt.lr, weight_decay=tc.weight_decay, warmup=tc.warmup, schedule=tc.schedule,
                      grad_clip=tc.grad_clip, label_smoothing=tc.label_smoothing, l2=tc.l2_adapters,
                      neftune_alpha=tc.neftune_alpha)


def train_mt_lora(model: Any, tokenizer: Any, layout: TargetLayout, lora: LoraShape, samples: dict[str, list[Sample]],
                  mt: MtLoraConfig, tc: TrainConfig, seed: int, progress: bool = True,
                  checkpoint: Path | None = None) -> LoraRun:
    """Train the multi-task LoRA on `samples` (task -> samples) exactly as P2P trains (`tc`), at `mt.lr`; `model`
    must be frozen. With `checkpoint`, resume from and save to that file."""
    flat, steps = mixed_steps(samples, tc, seed)
    encoded = [encode(tokenizer, s, max_length=tc.max_length, completion_only=tc.loss == "completion") for s in flat]
    return train_lora(model, tokenizer, layout, lora, encoded, steps, recipe(mt, tc), seed=seed, progress=progress,
                      desc="mt-lora", checkpoint=checkpoint, checkpoint_every=mt.checkpoint_every)
