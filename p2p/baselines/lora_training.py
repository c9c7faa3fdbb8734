"""Train one plain LoRA through the frozen base model: the shared loop of MT-LoRA and OPPU.

The adapter is a set of trainable A and B tensors in the very layout the hypernetwork generates (per module type:
A (layers, r, d_in), B (layers, d_out, r)), applied with the same per-row hooks (`p2p.lora.hooks`). So a trained
LoRA evaluates in the same batched generation as P2P's adapters (OPPU: every row carries its own user's LoRA),
exports with the same PEFT writer, and the three methods differ only in where A and B come from.

Initialisation is PEFT's (A Kaiming-uniform, B zero: the model starts as the base model) from a generator seeded by
the caller, and the loss is the hypernetwork's (`lm_loss`: per-sample mean cross-entropy), so a LoRA's training
depends on its seed and its samples alone: nothing carries over from one OPPU user to the next.

With a `checkpoint` file the loop saves its whole state (LoRA, optimizer, scheduler, torch RNG, step, history) every
`checkpoint_every` steps and at the end, and resumes from it: the batches are given up front, so a killed run that
resumes ends with the same weights as one that never stopped, and a finished one returns at once.
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

from p2p.hyper.data import Encoded
from p2p.hyper.train import autocast, left_pad, lm_loss, warmup_linear
from p2p.io import atomic_path, read_json, write_json
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied

log = logging.getLogger(__name__)


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


@dataclass
class LoraRun:
    lora: LoRA
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_lora(model: nn.Module, tokenizer: Any, layout: TargetLayout, lora_shape: LoraShape,
               encoded: Sequence[Encoded], batches: Sequence[Sequence[int]], *, lr: float, seed: int,
               weight_decay: float = 0.0, warmup: float = 0.0, grad_clip: float = 1.0,
               progress: bool = False, desc: str = "lora", checkpoint: Path | None = None,
               checkpoint_every: int = 0, on_step: Callable[[int], None] | None = None) -> LoraRun:
    """Train a fresh LoRA on `encoded`, one optimizer step per entry of `batches` (indices into `encoded`).

    `model` must be frozen. The LoRA's initial weights and its dropout noise come from `seed` only. `checkpoint`:
    the state file to resume from and save to (every `checkpoint_every` steps, 0: only at the end); `on_step(step)`
    runs after each step (tests stop a run there).
    """
    from tqdm import tqdm

    if not batches:
        raise ValueError("no training batch: the LoRA would stay at its initialisation")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    lora = LoRA(layout, lora_shape, generator).to(device)
    optimizer = torch.optim.AdamW(lora.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(len(batches), warmup))
    pad = tokenizer.pad_token_id
    history: list[dict[str, float]] = []
    start, spent = 0, 0.0
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)  # LoRA dropout; restored afterwards so callers' randomness is untouched
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["steps"] != len(batches):
            raise ValueError(f"{checkpoint}: a checkpoint of a {state['steps']}-step run, this run has "
                             f"{len(batches)} steps; delete it to start over")
        lora.load_state_dict(state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, spent, history = int(state["step"]), float(state["seconds"]), list(state["history"])
        if start < len(batches):
            log.info("%s: resuming from %s (step %d of %d)", desc, checkpoint, start, len(batches))
    began = time.perf_counter()
    model.train()
    try:
        for step in tqdm(range(start, len(batches)), desc=desc, unit="step", initial=start, total=len(batches),
                         mininterval=10, disable=not progress):
            indices = batches[step]
            batch = left_pad([encoded[i] for i in indices], pad, device)
            with autocast(device), adapters_applied(model, layout, lora_shape, lora.adapters(len(indices))):
                loss = lm_loss(model, batch, 0.0)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(lora.parameters(), grad_clip))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"step": step + 1, "loss": float(loss.detach()), "grad_norm": grad_norm})
            done = step + 1 == len(batches)
            if checkpoint is not None and (done or (checkpoint_every and (step + 1) % checkpoint_every == 0)):
                with atomic_path(checkpoint) as tmp:
                    torch.save({"lora": lora.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                "step": step + 1, "steps": len(batches), "history": history,
                                "seconds": spent + time.perf_counter() - began}, tmp)
            if on_step is not None:
                on_step(step + 1)
    finally:
        model.eval()
        torch.set_rng_state(rng_state)
    lora.eval()
    return LoraRun(lora, len(batches), spent + time.perf_counter() - began, history)


def epoch_batches(n: int, epochs: int, batch_size: int, seed: int) -> list[list[int]]:
    """OPPU: `epochs` passes over n samples, each in a fresh seeded order, cut into batches."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n).tolist()
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out


def stack_adapters(loras: Sequence[LoRA]) -> Adapters:
    """Many trained LoRAs as one batch of adapters (row i = loras[i]), for batched generation."""
    kinds = list(loras[0].a)
    return Adapters({k: torch.stack([lo.a[k].detach() for lo in loras]) for k in kinds},
                    {k: torch.stack([lo.b[k].detach() for lo in loras]) for k in kinds})


def save_adapters(path: Path, adapters: Adapters, rows: list[str], info: dict[str, Any]) -> None:
    """A batch of adapters as one safetensors file (`<kind>.A`, `<kind>.B`) plus `<name>.json` naming the rows."""
    from safetensors.torch import save_file

    tensors = {f"{k}.A": v.float().cpu().contiguous() for k, v in adapters.a.items()}
    tensors |= {f"{k}.B": v.float().cpu().contiguous() for k, v in adapters.b.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(path.with_suffix(".json"), {"rows": rows, **info})


def load_adapters(path: Path) -> tuple[Adapters, list[str], dict[str, Any]]:
    """(adapters, row names, info) written by `save_adapters`."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapters here; run the stage that trains them first")
    tensors = load_file(str(path))
    info = read_json(path.with_suffix(".json"))
    kinds = sorted({name.rsplit(".", 1)[0] for name in tensors})
    adapters = Adapters({k: tensors[f"{k}.A"] for k in kinds}, {k: tensors[f"{k}.B"] for k in kinds})
    return adapters, list(info.pop("rows")), info
