"""Train the hypernetwork end to end through the frozen base model (docs/architecture.md §9).

The hypernetwork's step (`micro_step`) and loop; the samples, batches, loss, NEFTune and schedule are the ones the
baselines train with too (p2p.training).

Per optimizer step, `grad_accum` micro-batches; each draws `tasks_per_batch` tasks with probability proportional
to sqrt(task size) and `samples_per_task` samples of each. Every row is conditioned on its own user's profile
embedding. The loss is cross-entropy with label smoothing, averaged per sample and then over samples, plus an L2
penalty on the generated A and B; NEFTune noise on the input embeddings; AdamW with warmup and linear decay;
gradient clipping; the base model's compute precision (bf16 autocast on a GPU, and on a CPU with native bf16 unless
`model.precision` says fp32; p2p.models.precision) for the hypernetwork and the base model alike.

Exact resumption: the batch of step s is a pure function of (seed, s), and a checkpoint holds the weights, the
optimizer and scheduler states and the torch RNG state (dropout, NEFTune), so a run killed after a checkpoint and
resumed ends with the same weights as one that never stopped (on CPU with a fixed seed; tested).

Several processes (p2p.hyper.distributed, `torchrun` / `accelerate launch`): every rank draws the same global
batch and takes its share of the rows; with its loss scaled by (its rows / global rows) x world size, DDP's
gradient average is the global batch's gradient, so N processes train the same weights as one (up to float
rounding, and apart from the random streams of dropout and NEFTune, which are per rank). Rank 0 writes the
checkpoints; any number of ranks resumes from one.

GPU: bf16 autocast, SDPA attention (p2p.models.loading), optional activation checkpointing of the base model's
decoder layers (`train.gradient_checkpointing`: recomputes them in backward instead of keeping their
activations; the LoRA hooks run again inside the recomputation), and batches copied from pinned host memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from p2p.config import TrainConfig
from p2p.hyper.checkpoint import (
    HyperMeta,
    latest_checkpoint,
    load_train_state,
    prune_checkpoints,
    save_hypernetwork,
    step_dir,
)
from p2p.hyper.distributed import Distributed
from p2p.hyper.hypernet import HyperNetwork
from p2p.lora.hooks import Adapters, adapters_applied
from p2p.models.precision import autocast, training_kernels
from p2p.training import (
    Encoded,
    Sample,
    activation_checkpointing,
    draw_batch,
    encode,
    left_pad,
    lr_schedule,
    neftune,
    rng_state,
    sample_losses,
    set_rng_state,
    to_device,
)

log = logging.getLogger(__name__)

OnStep = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


def task_parts(rows: Sequence[Encoded], tasks: Sequence[str], pad_id: int,
               device: torch.device | str) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """A micro-batch's rows as (row indices, left-padded batch) per task, each padded to its own longest row: one
    task's prompts can be twice another's (LaMP-2M about 200 tokens, LaMP-3 about 110), and one padded batch would
    spend a fifth of its tokens on padding."""
    by_task: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        by_task.setdefault(task, []).append(index)
    return [(indices, left_pad([rows[i] for i in indices], pad_id, device)) for indices in by_task.values()]


def micro_step(model: nn.Module, engine: nn.Module, hyper: HyperNetwork,
               parts: list[tuple[list[int], dict[str, torch.Tensor]]], profile: torch.Tensor, tasks: list[str],
               tc: TrainConfig, scale: float) -> dict[str, float]:
    """One micro-batch of training: make its adapters from the rows' profiles and tasks (through `engine`, the DDP
    wrapper of `hyper` or itself), run the frozen model with them on each part of the rows (`task_parts`),
    backpropagate `scale` x the loss; returns the unscaled loss terms.

    The loss is the mean over all rows of each row's mean token cross-entropy, whatever the parts. The model runs
    each part with detached copies of its rows' adapters; their gradients then flow into the hypernetwork in one
    backward, so the hypernetwork (and DDP) sees one backward per forward."""
    with autocast(model):
        adapters = engine(profile, tasks)
        l2 = adapters.l2()
    leaves = Adapters({k: v.detach().requires_grad_() for k, v in adapters.a.items()},
                      {k: v.detach().requires_grad_() for k, v in adapters.b.items()})
    ce_total = 0.0
    with neftune(model, tc.neftune_alpha):
        for indices, batch in parts:
            # backward inside the hooks (activation checkpointing reruns the layers, hooks included), outside autocast
            with adapters_applied(model, hyper.layout, hyper.lora, leaves.rows(indices)):
                with autocast(model):
                    ce = sample_losses(model, batch, tc.label_smoothing).sum() / len(tasks)
                (ce * scale).backward()
            ce_total += float(ce.detach())
    generated = [*adapters.a.values(), *adapters.b.values()]
    grads = [leaf.grad for leaf in (*leaves.a.values(), *leaves.b.values())]
    torch.autograd.backward([*generated, l2], [*grads, torch.tensor(tc.l2_adapters * scale, device=l2.device)])
    l2_value = float(l2.detach())
    return {"loss": ce_total + tc.l2_adapters * l2_value, "ce": ce_total, "l2": l2_value}


def train_hypernetwork(model: nn.Module, tokenizer: Any, hyper: HyperNetwork, meta: HyperMeta,
                       samples: dict[str, list[Sample]], tc: TrainConfig, checkpoint_root: Path, *, seed: int,
                       on_step: OnStep | None = None, progress: bool = True,
                       dist: Distributed | None = None) -> TrainResult:
    """Train `hyper` on `samples` (task -> samples), resuming from the newest checkpoint under `checkpoint_root`.

    `model` must already be frozen (p2p.lora.hooks.freeze). `on_step(step, metrics)` is called after every
    optimizer step (MLflow logging, tests that stop a run midway), on every rank, with the global batch's metrics.
    `dist`: this process's place in a data-parallel run (default: alone).
    """
    from tqdm import tqdm

    dist = dist or Distributed()
    device = next(model.parameters()).device
    hyper.to(device)
    sizes = {task: len(rows) for task, rows in samples.items()}
    if not any(sizes.values()):
        raise ValueError("no training samples: every task's train split is empty")
    if sorted(task for task, n in sizes.items() if n) != sorted(hyper.tasks):
        raise ValueError(f"the hypernetwork is for the tasks {list(hyper.tasks)} but the samples are of "
                         f"{sorted(task for task, n in sizes.items() if n)}: it must train on every task it serves")
    encoded = {task: [encode(tokenizer, s, max_length=tc.max_length, completion_only=tc.loss == "completion")
                      for s in rows] for task, rows in samples.items()}
    embeddings = {task: torch.from_numpy(np.stack([s.embedding for s in rows])) if rows else None
                  for task, rows in samples.items()}
    optimizer = torch.optim.AdamW(hyper.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = lr_schedule(optimizer, [tc.steps], tc.warmup, tc.schedule)
    start, history = 0, []
    hyper.fit_input_scaling({task: embeddings[task] for task in hyper.tasks})  # each task's own statistics
    resume = latest_checkpoint(checkpoint_root)
    if resume is not None:
        from safetensors.torch import load_file

        state = load_train_state(resume)
        hyper.load_state_dict(load_file(resume / "hypernetwork.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resuming from %s (step %d of %d)", resume, start, tc.steps)
        if not dist.enabled and state.get("world_size", 1) == 1:
            set_rng_state(state["rng"])  # exact resumption of a single process (ranks reseed below)
    if dist.enabled:
        if dist.sum({"start": float(start)})["start"] != start * dist.world_size:
            raise RuntimeError(f"rank {dist.rank} would resume at step {start} but not every rank found that "
                               f"checkpoint: {checkpoint_root} must be on a filesystem that every rank reads")
        torch.manual_seed(seed + 100_003 * dist.rank + start)  # every rank its own dropout and NEFTune noise
    engine = dist.wrap(hyper)
    pad = tokenizer.pad_token_id
    began = time.perf_counter()
    model.train()
    hyper.train()
    bar = tqdm(range(start, tc.steps), desc="train", unit="step", initial=start, total=tc.steps, mininterval=10,
               disable=not progress or not dist.is_main)
    with activation_checkpointing(model, tc.gradient_checkpointing), training_kernels(model):
        for step in bar:
            totals = {"loss": 0.0, "ce": 0.0, "l2": 0.0}
            for micro in range(tc.grad_accum):
                everyone = draw_batch(sizes, seed, step, micro, tc.tasks_per_batch, tc.samples_per_task)
                picks = dist.shard(everyone)
                parts = task_parts([encoded[t][i] for t, i in picks], [t for t, _ in picks], pad, device)
                profile = to_device(torch.stack([embeddings[t][i] for t, i in picks]), device)
                # this rank's part of the global batch's loss, and of the gradient DDP averages over ranks
                weight = len(picks) / len(everyone) / tc.grad_accum
                last = micro == tc.grad_accum - 1
                with contextlib.nullcontext() if last or not dist.enabled else engine.no_sync():
                    terms = micro_step(model, engine, hyper, parts, profile, [t for t, _ in picks], tc,
                                       weight * dist.world_size)
                for key, value in terms.items():
                    totals[key] += value * weight
            totals = dist.sum(totals)
            grad_norm = float(nn.utils.clip_grad_norm_(hyper.parameters(), tc.grad_clip))
            metrics = {**totals, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]}
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"step": step + 1, **metrics})
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
            if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
                if dist.is_main:
                    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": rng_state(), "step": step + 1, "history": history, "world_size": dist.world_size}
                    save_hypernetwork(step_dir(checkpoint_root, step + 1), hyper, meta, state)
                    prune_checkpoints(checkpoint_root, keep=2)
                dist.barrier()  # no rank runs ahead of a checkpoint it could be asked to resume from
            if on_step is not None:
                on_step(step + 1, metrics)
    model.eval()
    hyper.eval()
    return TrainResult(steps=tc.steps, resumed_from=start, seconds=time.perf_counter() - began, history=history)
