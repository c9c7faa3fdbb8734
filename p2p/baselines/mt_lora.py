"""MT-LoRA: one LoRA trained on every training user's (input, output) pairs, without any user context.

The paper's task-level adaptation without personalisation. It sees exactly P2P's training samples (the same
train users, the same prompts, the same sqrt-mixed batches of `train.tasks_per_batch` x `train.samples_per_task`)
but no profile, so the gap between the two is what the profile adds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from p2p.baselines.lora_training import LoraRun, train_lora
from p2p.cache import content_key
from p2p.config import Config
from p2p.hyper.data import Sample, encode
from p2p.hyper.export import export_adapter
from p2p.hyper.lora import LoraShape, find_targets, freeze
from p2p.hyper.train import draw_batch
from p2p.io import write_json
from p2p.models.loading import load_causal_lm

log = logging.getLogger(__name__)


def lora_shape(cfg: Config) -> LoraShape:
    lc = cfg.lora
    return LoraShape(tuple(lc.targets), lc.rank, lc.alpha, lc.dropout)


def mixed_batches(samples: dict[str, list[Sample]], steps: int, cfg: Config) -> tuple[list[Sample], list[list[int]]]:
    """P2P's batch recipe over the same samples, flattened: (all samples, index batches)."""
    names = sorted(samples)
    offsets, flat = {}, []
    for task in names:
        offsets[task] = len(flat)
        flat += samples[task]
    sizes = {task: len(samples[task]) for task in names}
    tc = cfg.train
    batches = [[offsets[t] + i for t, i in draw_batch(sizes, cfg.seed, step, 0, tc.tasks_per_batch,
                                                      tc.samples_per_task)] for step in range(steps)]
    return flat, batches


def checkpoint_path(cfg: Config, root: Path, samples: dict[str, list[Sample]]) -> Path:
    """The resumable state of this very run: named by P2P's training fingerprint and the mt_lora settings."""
    from p2p.hyper.pipeline import fingerprint

    settings = cfg.mt_lora.model_dump(mode="json", exclude={"dir", "checkpoint_every"})
    return root / cfg.train.checkpoints / f"mt-lora-{content_key(fingerprint(cfg, samples), settings)[:16]}.pt"


def train_mt_lora(model, tokenizer, samples: dict[str, list[Sample]], cfg: Config, progress: bool = True,
                  checkpoint: Path | None = None) -> LoraRun:
    """Train the multi-task LoRA on `samples` (task -> samples) with `mt_lora` settings; `model` must be frozen.
    With `checkpoint`, resume from and save to that file."""
    flat, batches = mixed_batches(samples, cfg.mt_lora.steps, cfg)
    tc = cfg.train
    encoded = [encode(tokenizer, s, max_length=tc.max_length, completion_only=tc.loss == "completion") for s in flat]
    layout = find_targets(model, tuple(cfg.lora.targets))
    mc = cfg.mt_lora
    return train_lora(model, tokenizer, layout, lora_shape(cfg), encoded, batches, lr=mc.lr, seed=cfg.seed,
                      weight_decay=tc.weight_decay, warmup=mc.warmup, grad_clip=tc.grad_clip, progress=progress,
                      desc="mt-lora", checkpoint=checkpoint, checkpoint_every=mc.checkpoint_every)


def output_dir(cfg: Config, root: Path) -> Path:
    return root / cfg.mt_lora.dir


def mt_lora_stage(cfg: Config, root: Path) -> LoraRun:
    """Train on the same samples as the `train` stage; writes `mt_lora.dir` as a PEFT adapter directory."""
    from p2p.hyper.pipeline import load_task_data, train_samples

    samples = {}
    for dataset, task in cfg.data.tasks():
        samples[task] = train_samples(load_task_data(cfg, root, dataset, task), cfg)
        log.info("%s: %d training samples", task, len(samples[task]))
    model, tokenizer = load_causal_lm(cfg.model.base_llm, root / cfg.model.cache_dir, seed=cfg.seed,
                                      device=cfg.model.device)
    freeze(model)
    torch.manual_seed(cfg.seed)
    checkpoint = checkpoint_path(cfg, root, samples)
    log.info("checkpoint: %s", checkpoint)
    run = train_mt_lora(model, tokenizer, samples, cfg, checkpoint=checkpoint)
    out = output_dir(cfg, root)
    export_adapter(out, run.lora.layout, run.lora.lora, run.lora.adapters(1), cfg.model.base_llm)
    write_json(out / "train_history.json", run.history)
    return run
