"""Train plain LoRAs through the frozen base model: the shared loop of MT-LoRA and OPPU.

An adapter is a set of trainable A and B tensors in the very layout the hypernetwork generates (per module type:
A (layers, r, d_in), B (layers, d_out, r)), applied with the same per-row hooks (`p2p.lora.hooks`). So a trained
LoRA evaluates in the same batched generation as P2P's adapters (OPPU: every row carries its own user's LoRA),
exports with the same PEFT writer, and the three methods differ only in where A and B come from.

`train_loras` trains several LoRAs at once, each row of a batch with its own (OPPU: one per user, many users per
forward). Their parameters never mix: the loss is the sum of each LoRA's own loss, so each gets the gradient it
would get alone, and each has its own optimizer parameter group, learning-rate schedule, gradient clipping and
dropout generator (`RowDropout`: a row's noise depends on its LoRA's seed and its own tokens only). A LoRA's result
is therefore a function of its seed and its own examples, whoever trains beside it (up to float rounding: the
padded width of a shared batch changes the summation order of attention).

Each LoRA's steps are given up front: step s is a list of micro-batches (gradient accumulation) of indices into its
examples. A LoRA with fewer steps simply stops (no gradient, so AdamW leaves it alone). Initialisation is PEFT's
(A Kaiming-uniform, B zero: the model starts as the base model) from a generator seeded by the LoRA's seed; the
loss is the hypernetwork's (`p2p.training.sample_losses`: per-sample mean cross-entropy, with label smoothing) plus
the same L2 penalty on A and B, and NEFTune noise on the input embeddings (one LoRA only: its noise is drawn from
the global stream).

With a `checkpoint` file the loop saves its whole state (LoRAs, optimizer, scheduler, generators, step, history)
every `checkpoint_every` steps and at the end, and resumes from it, so a killed run that resumes ends with the same
weights as one that never stopped, and a finished one returns at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from p2p.io import atomic_path
from p2p.lora.hooks import Adapters, LoraShape, RowDropout, TargetLayout, adapters_applied
from p2p.models.precision import autocast, training_kernels
from p2p.training import Encoded, left_pad, lr_schedule, neftune, sample_losses

log = logging.getLogger(__name__)

#: One optimizer step: its micro-batches, each a list of example indices.
Step = Sequence[Sequence[int]]


class LoRA(nn.Module):
    """One trainable adapter; `adapters(n)` views it as a batch of n identical rows for the hooks."""

    def __init__(self, layout: TargetLayout, lora: LoraShape, generator: torch.Generator):
        super().__init__()
        layers = len(layout.layers)
        self.layout, self.lora = layout, lora
        self.a, self.b = nn.ParameterDict(), nn.ParameterDict()
        for kind, (d_in, d_out) in layout.shapes.items():
            bound = 1 / math.sqrt(d_in)  # PEFT: kaiming_uniform_(a=sqrt(5)) on A (r, d_in)
            a = (torch.rand(layers, lora.rank, d_in, generator=generator) * 2 - 1) * bound
            self.a[kind] = nn.Parameter(a)
            self.b[kind] = nn.Parameter(torch.zeros(layers, d_out, lora.rank))

    def adapters(self, rows: int = 1) -> Adapters:
        return Adapters({k: v.unsqueeze(0).expand(rows, *v.shape) for k, v in self.a.items()},
                        {k: v.unsqueeze(0).expand(rows, *v.shape) for k, v in self.b.items()})

    def l2(self) -> torch.Tensor:
        """The hypernetwork's penalty on its generated weights (`Adapters.l2`), on this LoRA's A and B."""
        return self.adapters(1).l2()


@dataclass(frozen=True)
class LoraRecipe:
    """How a plain LoRA trains: optimizer, schedule and regularisers (MT-LoRA takes P2P's, OPPU its own)."""

    lr: float
    weight_decay: float = 0.0
    warmup: float = 0.0
    schedule: str = "linear"
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    l2: float = 0.0
    neftune_alpha: float = 0.0


@dataclass(frozen=True)
class LoraJob:
    """One LoRA to train: its examples, its steps (micro-batches of example indices) and its seed."""

    examples: Sequence[Encoded]
    steps: Sequence[Step]
    seed: int


@dataclass
class LoraRun:
    lora: LoRA
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_lora(model: nn.Module, tokenizer: Any, layout: TargetLayout, lora_shape: LoraShape,
               examples: Sequence[Encoded], steps: Sequence[Step], recipe: LoraRecipe, *, seed: int,
               **kwargs: Any) -> LoraRun:
    """Train one fresh LoRA (`train_loras` with one job)."""
    return train_loras(model, tokenizer, layout, lora_shape, [LoraJob(examples, steps, seed)], recipe, **kwargs)[0]


def train_loras(model: nn.Module, tokenizer: Any, layout: TargetLayout, lora_shape: LoraShape,
                jobs: Sequence[LoraJob], recipe: LoraRecipe, *, progress: bool = False, desc: str = "lora",
                checkpoint: Path | None = None, checkpoint_every: int = 0,
                on_step: Callable[[int], None] | None = None) -> list[LoraRun]:
    """Train a fresh LoRA per job, all in the same batches (see the module docstring); `model` must be frozen.

    `checkpoint`: the state file to resume from and save to (every `checkpoint_every` steps, 0: only at the end);
    `on_step(step)` runs after each step (tests stop a run there). `seconds` of each run is the wall time of the
    whole group divided among its LoRAs by their share of the rows.
    """
    from tqdm import tqdm

    if not jobs:
        return []
    if any(not job.steps for job in jobs):
        raise ValueError("a LoRA without a training step would stay at its initialisation")
    if recipe.neftune_alpha > 0 and len(jobs) > 1:
        raise ValueError("NEFTune noise comes from the global random stream, which would couple LoRAs trained "
                         "together; train them one at a time or set the NEFTune alpha to 0")
    device = next(model.parameters()).device
    loras = [LoRA(layout, lora_shape, torch.Generator().manual_seed(job.seed)).to(device) for job in jobs]
    generators = [torch.Generator().manual_seed(job.seed + 1) for job in jobs]  # dropout
    optimizer = torch.optim.AdamW([{"params": list(lo.parameters())} for lo in loras], lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    scheduler = lr_schedule(optimizer, [len(job.steps) for job in jobs], recipe.warmup, recipe.schedule)
    total = max(len(job.steps) for job in jobs)
    pad = tokenizer.pad_token_id
    histories: list[list[dict[str, float]]] = [[] for _ in jobs]
    start, spent = 0, 0.0
    rng_state = torch.get_rng_state()
    torch.manual_seed(jobs[0].seed)  # NEFTune (one job); restored afterwards so callers' randomness is untouched
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["steps"] != [len(job.steps) for job in jobs]:
            raise ValueError(f"{checkpoint}: a checkpoint of a run of {state['steps']} steps, this run has "
                             f"{[len(job.steps) for job in jobs]}; delete it to start over")
        for lora, saved in zip(loras, state["loras"]):
            lora.load_state_dict(saved)
        for generator, saved in zip(generators, state["generators"]):
            generator.set_state(saved)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, spent, histories = int(state["step"]), float(state["seconds"]), [list(h) for h in state["history"]]
        if start < total:
            log.info("%s: resuming from %s (step %d of %d)", desc, checkpoint, start, total)
    began = time.perf_counter()
    model.train()
    with training_kernels(model):
        try:
            for step in tqdm(range(start, total), desc=desc, unit="step", initial=start, total=total, mininterval=10,
                             disable=not progress):
                active = [j for j, job in enumerate(jobs) if step < len(job.steps)]
                losses = {j: 0.0 for j in active}
                for micro in range(max(len(jobs[j].steps[step]) for j in active)):
                    parts = [(j, jobs[j].steps[step][micro]) for j in active if micro < len(jobs[j].steps[step])]
                    rows = [(j, jobs[j].examples[i]) for j, indices in parts for i in indices]
                    batch = left_pad([e for _, e in rows], pad, device)
                    views = [loras[j].adapters(len(ix)) for j, ix in parts]  # each LoRA as its rows of the batch
                    adapters = Adapters({k: torch.cat([v.a[k] for v in views]) for k in layout.kinds},
                                        {k: torch.cat([v.b[k] for v in views]) for k in layout.kinds})
                    dropout = RowDropout([generators[j] for j, _ in rows], [len(e.input_ids) for _, e in rows])
                    with autocast(model), adapters_applied(model, layout, lora_shape, adapters, dropout), \
                            neftune(model, recipe.neftune_alpha):
                        per_row = sample_losses(model, batch, recipe.label_smoothing)
                        loss = per_row.new_zeros(())
                        offset = 0
                        for j, indices in parts:
                            share = 1 / len(jobs[j].steps[step])  # the step's loss: the mean of its micro-batches
                            own = per_row[offset:offset + len(indices)].mean() + recipe.l2 * loras[j].l2()
                            offset += len(indices)
                            loss = loss + share * own
                            losses[j] += share * float(own.detach())
                    loss.backward()
                for j in active:
                    grad_norm = float(nn.utils.clip_grad_norm_(loras[j].parameters(), recipe.grad_clip))
                    histories[j].append({"step": step + 1, "loss": losses[j], "grad_norm": grad_norm})
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done = step + 1 == total
                if checkpoint is not None and (done or (checkpoint_every and (step + 1) % checkpoint_every == 0)):
                    with atomic_path(checkpoint) as tmp:
                        torch.save({"loras": [lo.state_dict() for lo in loras], "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                    "generators": [g.get_state() for g in generators], "step": step + 1,
                                    "steps": [len(job.steps) for job in jobs], "history": histories,
                                    "seconds": spent + time.perf_counter() - began}, tmp)
                if on_step is not None:
                    on_step(step + 1)
        finally:
            model.eval()
            torch.set_rng_state(rng_state)
    seconds = spent + time.perf_counter() - began
    row_counts = [sum(len(ix) for s in job.steps for ix in s) for job in jobs]
    runs = []
    for lora, job, history, n in zip(loras, jobs, histories, row_counts):
        lora.eval()
        runs.append(LoraRun(lora, len(job.steps), seconds * n / sum(row_counts), history))
    return runs


def epoch_steps(n: int, epochs: int, batch_size: int, grad_accum: int, seed: int) -> list[list[list[int]]]:
    """OPPU: `epochs` passes over n samples, each in a fresh seeded order, cut into batches; every `grad_accum`
    batches of an epoch make one optimizer step (the epoch's last step may have fewer)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n).tolist()
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        out += [batches[i:i + grad_accum] for i in range(0, len(batches), grad_accum)]
    return out


def stack_adapters(loras: Sequence[LoRA]) -> Adapters:
    """Many trained LoRAs as one batch of adapters (row i = loras[i]), for batched generation."""
    kinds = list(loras[0].a)
    return Adapters({k: torch.stack([lo.a[k].detach() for lo in loras]) for k in kinds},
                    {k: torch.stack([lo.b[k].detach() for lo in loras]) for k in kinds})
