"""Per-row LoRA: every row of a batch runs through the frozen base model with its own low-rank update.

`BatchedLoRA` installs a forward hook on each target linear layer (q_proj, v_proj, ... of every decoder layer) and
adds, for row b of the batch,

    y_b = W0 x_b + s · (dropout(x_b) A_bᵀ) B_bᵀ,        s = alpha / sqrt(r)   (rsLoRA)

with two batched matmuls over the whole batch. A and B are (batch, rank, d_in) and (batch, d_out, rank) per layer
and are never repeated per token, so memory grows with the batch, not with the sequence. This is PEFT's LoRA
formula (`peft.tuners.lora.Linear.forward`), so an exported adapter reproduces the hooked model exactly.

Gradients flow through the hooks into whatever produced A and B (the hypernetwork); the base weights stay frozen.
The hooks work with the KV cache of `generate` because they act on each forward call's inputs only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

#: The first integer path component is the decoder layer: `model.layers.12.self_attn.q_proj` -> 12.
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class LoraShape:
    """Rank, scaling, dropout and target module types of every generated adapter."""

    targets: tuple[str, ...] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    rslora: bool = True

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


@dataclass(frozen=True)
class TargetLayout:
    """Where the adapters go in one base model: per module type, the layers and the linear layers' shapes."""

    names: dict[str, tuple[str, ...]]  # module type -> full module names, in layer order
    layers: tuple[int, ...]  # decoder layer indices (the same for every module type)
    shapes: dict[str, tuple[int, int]]  # module type -> (d_in, d_out)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.names)


def find_targets(model: nn.Module, targets: tuple[str, ...]) -> TargetLayout:
    """Locate every linear layer whose name ends in one of `targets`; every type must appear in the same layers."""
    names: dict[str, list[tuple[int, str]]] = {kind: [] for kind in targets}
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind not in names or not isinstance(module, nn.Linear):
            continue
        match = _LAYER.search(f".{name}.")
        if match is None:
            raise ValueError(f"target module {name} has no layer index in its name")
        shape = (module.in_features, module.out_features)
        if shapes.setdefault(kind, shape) != shape:
            raise ValueError(f"{kind} layers differ in shape ({shapes[kind]} vs {shape} at {name}); "
                             f"one generated head per module type needs one shape")
        names[kind].append((int(match.group(1)), name))
    missing = [kind for kind, found in names.items() if not found]
    if missing:
        raise ValueError(f"the base model has no linear layer named {missing}; LoRA targets must be module names "
                         f"such as q_proj, v_proj")
    layer_sets = {kind: tuple(sorted(layer for layer, _ in found)) for kind, found in names.items()}
    layers = next(iter(layer_sets.values()))
    if any(found != layers for found in layer_sets.values()):
        raise ValueError(f"LoRA targets appear in different layers: {layer_sets}")
    return TargetLayout(names={kind: tuple(name for _, name in sorted(found)) for kind, found in names.items()},
                        layers=layers, shapes=shapes)


@dataclass
class Adapters:
    """A batch of generated adapters: per module type, A (batch, layers, rank, d_in) and B (batch, layers, d_out,
    rank)."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return next(iter(self.a.values())).shape[0]

    def rows(self, index: torch.Tensor | list[int] | slice) -> Adapters:
        """The adapters of some rows (e.g. one user's, or a generation batch's)."""
        return Adapters({k: v[index] for k, v in self.a.items()}, {k: v[index] for k, v in self.b.items()})

    def l2(self) -> torch.Tensor:
        """Mean squared entry of A plus of B, summed over module types: the training penalty on generated weights."""
        return sum(v.pow(2).mean() for v in self.a.values()) + sum(v.pow(2).mean() for v in self.b.values())


@dataclass
class RowDropout:
    """LoRA dropout drawn per row from that row's own generator, over its real (left-padded) tokens only.

    Several LoRAs training in one batch (OPPU's users) then each see the dropout noise they would see alone: a
    row's mask depends on its generator and its length, never on the other rows or the padded width."""

    generators: list[torch.Generator]  # one per row; rows of one LoRA share its generator
    lengths: list[int]  # real tokens of each row (at the right end)

    def __call__(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if len(self.lengths) != x.shape[0]:
            raise ValueError(f"row dropout for {len(self.lengths)} rows, input of {x.shape[0]}")
        mask = torch.zeros(x.shape, dtype=x.dtype)
        width = x.shape[1]
        for row, (generator, n) in enumerate(zip(self.generators, self.lengths)):
            mask[row, width - n:] = torch.empty((n, x.shape[2])).bernoulli_(1 - p, generator=generator)
        return x * mask.to(x.device) / (1 - p)


class BatchedLoRA:
    """Forward hooks that add row b's LoRA update to row b's output of every target layer (see module docstring).

    Use as a context manager around forward or `generate` calls; `set(adapters)` changes the adapters between
    calls without reinstalling hooks. Dropout on the LoRA input applies only while the model is in training mode.
    """

    def __init__(self, model: nn.Module, layout: TargetLayout, lora: LoraShape):
        self.model, self.layout, self.lora = model, layout, lora
        self._modules = dict(model.named_modules())
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._adapters: Adapters | None = None
        self._dropout: RowDropout | None = None

    def set(self, adapters: Adapters | None, dropout: RowDropout | None = None) -> None:
        if adapters is not None:
            for kind, (d_in, d_out) in self.layout.shapes.items():
                expected = (len(self.layout.layers), self.lora.rank)
                a, b = adapters.a[kind], adapters.b[kind]
                if a.shape[1:] != (*expected, d_in) or b.shape[1:] != (expected[0], d_out, expected[1]):
                    raise ValueError(f"{kind}: adapters of shape A{tuple(a.shape)} B{tuple(b.shape)} do not fit "
                                     f"{expected[0]} layers of {d_in}->{d_out} at rank {expected[1]}")
        self._adapters, self._dropout = adapters, dropout

    def __enter__(self) -> BatchedLoRA:
        for kind, names in self.layout.names.items():
            for position, name in enumerate(names):
                self._handles.append(self._modules[name].register_forward_hook(self._hook(kind, position)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, kind: str, position: int):
        scaling, p = self.lora.scaling, self.lora.dropout

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            adapters = self._adapters
            if adapters is None:
                return output
            x = args[0]
            if x.dim() != 3 or x.shape[0] != adapters.batch_size:
                raise ValueError(f"{self.layout.names[kind][position]}: input of shape {tuple(x.shape)} but "
                                 f"adapters for {adapters.batch_size} rows; give one adapter per batch row")
            a = adapters.a[kind][:, position].to(x.dtype)  # (batch, r, d_in)
            b = adapters.b[kind][:, position].to(x.dtype)  # (batch, d_out, r)
            if module.training and p > 0:
                x = self._dropout(x, p) if self._dropout is not None else nn.functional.dropout(x, p)
            return output + scaling * torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))

        return hook


@contextmanager
def adapters_applied(model: nn.Module, layout: TargetLayout, lora: LoraShape, adapters: Adapters,
                     dropout: RowDropout | None = None) -> Iterator[BatchedLoRA]:
    """`with adapters_applied(model, layout, lora, adapters): model(...)` — one call's worth of per-row LoRA
    (`dropout`: per-row dropout noise instead of the global random stream)."""
    with BatchedLoRA(model, layout, lora) as hooks:
        hooks.set(adapters, dropout)
        yield hooks


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients to the base model: only what generates the adapters learns."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def adapter_state_dict(layout: TargetLayout, adapters: Adapters, row: int) -> Mapping[str, torch.Tensor]:
    """One row's adapter as PEFT names its weights in a saved adapter (`<module>.lora_A.weight`, `lora_B`)."""
    out: dict[str, torch.Tensor] = {}
    for kind, names in layout.names.items():
        for position, name in enumerate(names):
            out[f"base_model.model.{name}.lora_A.weight"] = adapters.a[kind][row, position].detach().contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = adapters.b[kind][row, position].detach().contiguous()
    return out
