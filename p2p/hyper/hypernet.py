"""The hypernetwork: a profile embedding in, a full set of LoRA weights out (docs/architecture.md §8; Text-to-LoRA
"L").

For every (user, module type, layer) the input is [user code | module code | depth code]:

    user code   = LayerNorm(Linear(standardised embedding))    latent/2
    module code = Embedding(module type), depth code = Embedding(layer)   latent/4 each, then LayerNorm

A mixer MLP (latent -> 4·latent -> latent, SiLU, dropout), pre-LayerNorm residual MLP blocks and a projection to
`head_in` follow; then one linear head per module type emits r·(d_in + d_out) numbers, read as A (r × d_in) and
B (d_out × r). The whole grid (batch × module type × layer) goes through the shared layers as one tensor, so one
call makes every adapter of a batch; only the heads (one per module type, each with its own output size) are
applied in a loop of length `len(targets)`.

Standardisation: each embedding coordinate is shifted and scaled by the mean and standard deviation it had over
the training samples *of the row's task* (`fit_input_scaling`, one row of buffers per task, saved with the
weights), so every call names the task of each row. Profile embeddings of one task are close to each other (the
same template, the same kind of history) and what tells users apart is a small part of their variance;
standardising gives that part a fair share of the first layer's input and gradient. Pooled over tasks, the offset
between the tasks' means would inflate every coordinate's spread and shrink exactly that part again. A task the
hypernetwork was not trained on has no statistics: naming one is an error (`task_rows`).

Architectures (`HyperShape.architecture`): `ours` (above) or `released`, the authors' released module (cf-x/P2P
src/hyper_llm_modulator/hyper_modulator.py, `HyperModulator` with `encoder_type=linear`, docs/paper-preset.md):
module and depth codes each get their own LayerNorm (latent/4) instead of one over both; the mixer has an input
dropout and a SiLU after its second linear layer; each residual MLP ends in SiLU before its dropout; and the
projection to `head_in` is an MLP (LayerNorm, latent -> 4·latent, SiLU, dropout, 4·latent -> head_in, SiLU)
instead of one linear layer. Its input is [user | depth | module], as theirs.

Standardisation can be switched off (`HyperShape.standardize_inputs`, as the authors: raw embeddings in); the
buffers stay (mean 0, std 1 and unused) so every checkpoint has the same keys, and the task is still checked.

Initialisation: head weights are zero and the head bias is a standard LoRA initialisation (A Kaiming-uniform as in
PEFT, B zero), so at step 0 every generated adapter has B = 0, ΔW = 0, and the model equals the base model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from p2p.lora.hooks import Adapters, LoraShape, TargetLayout

ARCHITECTURES = ("ours", "released")


@dataclass(frozen=True)
class HyperShape:
    """Sizes and architecture of the hypernetwork (paper: latent 1024, head_in 2048, two residual blocks, dropout 0.05).

    `architecture`: `ours` or `released` (the authors' module, see the module docstring); `standardize_inputs`: shift
    and scale each embedding coordinate by the training samples' mean and std. Checkpoints written before these
    fields existed load with the defaults, which is how they were trained."""

    latent: int = 1024
    head_in: int = 2048
    blocks: int = 2
    dropout: float = 0.05
    architecture: str = "ours"
    standardize_inputs: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"hyper.architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        if self.latent % 4:
            raise ValueError(f"hyper.latent must be divisible by 4 (user code latent/2, module and depth codes "
                             f"latent/4 each); got {self.latent}")


def resolve_task(trained: Sequence[str], task: str | None) -> str:
    """The task whose input statistics a profile is standardised by: `task`, which must be one the hypernetwork
    was trained on, or with none given its only task. Several tasks and none given is an error, never a guess."""
    if task is None:
        if len(trained) == 1:
            return trained[0]
        raise ValueError(f"say which task the profile is for (--task, or the request's `task`): the hypernetwork "
                         f"standardises each task's profiles by that task's statistics (trained: {', '.join(trained)})")
    if task not in trained:
        raise ValueError(f"the hypernetwork was not trained on task {task!r}: it standardises each task's profiles "
                         f"by that task's statistics (trained: {', '.join(trained)})")
    return task


class ResidualBlock(nn.Module):
    """x + MLP(LayerNorm(x)), the MLP widening by 4 with SiLU and dropout (`released`: and a SiLU at its end)."""

    def __init__(self, width: int, dropout: float, released: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        tail = [nn.SiLU()] if released else []
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width), *tail, nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class HyperNetwork(nn.Module):
    def __init__(self, embed_dim: int, layout: TargetLayout, lora: LoraShape, shape: HyperShape,
                 tasks: Sequence[str]):
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"a hypernetwork needs one or more distinct task names, got {list(tasks)}")
        self.embed_dim, self.layout, self.lora, self.shape = embed_dim, layout, lora, shape
        self.tasks = tuple(tasks)
        latent, n_layers = shape.latent, len(layout.layers)
        self.register_buffer("input_mean", torch.zeros(len(self.tasks), embed_dim))  # row t: task t's statistics
        self.register_buffer("input_std", torch.ones(len(self.tasks), embed_dim))
        if shape.architecture == "released":
            self._build_released(embed_dim, n_layers)
        else:
            self.user = nn.Sequential(nn.Linear(embed_dim, latent // 2), nn.LayerNorm(latent // 2))
            self.module_code = nn.Embedding(len(layout.kinds), latent // 4)
            self.depth_code = nn.Embedding(n_layers, latent // 4)
            self.position_norm = nn.LayerNorm(latent // 2)
            self.mixer = nn.Sequential(nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(shape.dropout),
                                       nn.Linear(4 * latent, latent), nn.Dropout(shape.dropout))
            self.blocks = nn.Sequential(*(ResidualBlock(latent, shape.dropout) for _ in range(shape.blocks)))
            self.to_head = nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, shape.head_in), nn.SiLU())
        self.heads = nn.ModuleDict({kind: nn.Linear(shape.head_in, lora.rank * (d_in + d_out))
                                    for kind, (d_in, d_out) in layout.shapes.items()})
        self.reset_heads()

    def _build_released(self, embed_dim: int, n_layers: int) -> None:
        """The authors' layers (cf-x/P2P src/hyper_llm_modulator/hyper_modulator.py: TaskEncoder, layer_depth_encoder,
        layer_type_encoder, mixer, mlp1/mlp2 = MLPResidualBlock, mlp3), in their order of creation."""
        latent, p = self.shape.latent, self.shape.dropout
        self.user = nn.Sequential(nn.Linear(embed_dim, latent // 2), nn.LayerNorm(latent // 2))
        self.depth_code = nn.Embedding(n_layers, latent // 4)
        self.depth_norm = nn.LayerNorm(latent // 4)
        self.module_code = nn.Embedding(len(self.layout.kinds), latent // 4)
        self.module_norm = nn.LayerNorm(latent // 4)
        self.mixer = nn.Sequential(nn.Dropout(p), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(p),
                                   nn.Linear(4 * latent, latent), nn.SiLU(), nn.Dropout(p))
        self.blocks = nn.Sequential(*(ResidualBlock(latent, p, released=True) for _ in range(self.shape.blocks)))
        self.to_head = nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, 4 * latent), nn.SiLU(), nn.Dropout(p),
                                     nn.Linear(4 * latent, self.shape.head_in), nn.SiLU())

    def _positions(self) -> torch.Tensor:
        """(kinds, layers, latent/2): the module-type and depth codes of every adapter position."""
        kinds, layers = len(self.layout.kinds), len(self.layout.layers)
        if self.shape.architecture == "released":
            depth = self.depth_norm(self.depth_code.weight)[None, :, :].expand(kinds, layers, -1)
            module = self.module_norm(self.module_code.weight)[:, None, :].expand(kinds, layers, -1)
            return torch.cat([depth, module], dim=-1)
        module = self.module_code.weight[:, None, :].expand(kinds, layers, -1)
        depth = self.depth_code.weight[None, :, :].expand(kinds, layers, -1)
        return self.position_norm(torch.cat([module, depth], dim=-1))

    def reset_heads(self) -> None:
        """Zero head weights; bias = flattened LoRA init (A Kaiming-uniform with a=sqrt(5) like PEFT, B = 0)."""
        r = self.lora.rank
        with torch.no_grad():
            for kind, head in self.heads.items():
                d_in, d_out = self.layout.shapes[kind]
                a = torch.empty(r, d_in)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                head.weight.zero_()
                head.bias.copy_(torch.cat([a.flatten(), torch.zeros(d_out * r)]))

    @torch.no_grad()
    def fit_input_scaling(self, by_task: Mapping[str, torch.Tensor]) -> None:
        """Standardise each task's inputs by the per-coordinate mean and (population) std of its training samples'
        embeddings, `by_task[task]` (rows x dim), given for every task; a coordinate that never varies within a
        task is only centred. A no-op when `shape.standardize_inputs` is off."""
        if sorted(by_task) != sorted(self.tasks):
            raise ValueError(f"input statistics need the samples of exactly the tasks {list(self.tasks)}, got "
                             f"{sorted(by_task)}")
        if not self.shape.standardize_inputs:
            return
        for row, task in enumerate(self.tasks):
            embeddings = by_task[task].to(self.input_mean)
            if len(embeddings) == 0:
                raise ValueError(f"task {task}: no training sample to take input statistics from")
            std = embeddings.std(dim=0, correction=0)
            self.input_mean[row] = embeddings.mean(dim=0)
            self.input_std[row] = torch.where(std > 1e-6, std, torch.ones_like(std))

    def task_rows(self, tasks: str | Sequence[str], batch: int) -> torch.Tensor:
        """(batch,) index of each row's task: `tasks` is one task for every row or one per row."""
        names = [tasks] * batch if isinstance(tasks, str) else list(tasks)
        if len(names) != batch:
            raise ValueError(f"{len(names)} task names for {batch} profile embeddings")
        index = {task: row for row, task in enumerate(self.tasks)}
        for task in sorted(set(names)):
            resolve_task(self.tasks, task)  # a task never trained is an error naming the trained ones
        return torch.tensor([index[task] for task in names], dtype=torch.long, device=self.input_mean.device)

    def forward(self, embeddings: torch.Tensor, tasks: str | Sequence[str]) -> Adapters:
        """(batch, embed_dim) profile embeddings of `tasks` (one task, or one per row) -> the batch's adapters."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"expected profile embeddings of shape (batch, {self.embed_dim}), got "
                             f"{tuple(embeddings.shape)}; was the checkpoint trained with another embedder?")
        batch, kinds, layers = embeddings.shape[0], len(self.layout.kinds), len(self.layout.layers)
        rows = self.task_rows(tasks, batch)
        if self.shape.standardize_inputs:
            embeddings = (embeddings - self.input_mean[rows]) / self.input_std[rows]
        user = self.user(embeddings)  # (batch, latent/2)
        position = self._positions()  # (kinds, layers, latent/2)
        grid = torch.cat([user[:, None, None, :].expand(batch, kinds, layers, -1),
                          position[None].expand(batch, -1, -1, -1)], dim=-1)  # (batch, kinds, layers, latent)
        hidden = self.to_head(self.blocks(self.mixer(grid)))  # (batch, kinds, layers, head_in)
        a, b, r = {}, {}, self.lora.rank
        for k, kind in enumerate(self.layout.kinds):
            d_in, d_out = self.layout.shapes[kind]
            flat = self.heads[kind](hidden[:, k])  # (batch, layers, r·(d_in + d_out))
            a[kind] = flat[..., : r * d_in].reshape(batch, layers, r, d_in)
            b[kind] = flat[..., r * d_in:].reshape(batch, layers, d_out, r)
        return Adapters(a, b)

    def describe(self) -> dict[str, int]:
        return {"parameters": sum(p.numel() for p in self.parameters()),
                "head_parameters": sum(p.numel() for p in self.heads.parameters())}
