"""Where the LoRA adapters go in a base model, and the frozen base model every adapter method starts from."""

from __future__ import annotations

import os
from typing import Any

from p2p.lora.hooks import TargetLayout, find_targets, freeze
from p2p.models.loading import architecture_config, load_causal_lm
from p2p.models.precision import Precision


def target_layout(name: str, cache_dir: str | os.PathLike, targets: tuple[str, ...]) -> TargetLayout:
    """Where LoRA adapters go in model `name`, read from its architecture alone: the model is built on the meta
    device, so even a 7B model costs no memory and no download."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(name, cache_dir))
    return find_targets(model, targets)


def frozen_base(name: str, cache_dir: str | os.PathLike, targets: tuple[str, ...], *, seed: int = 0,
                device: str = "cpu", random_weights: bool = False,
                precision: Precision | None = None) -> tuple[Any, Any, TargetLayout]:
    """The base model with its gradients off, its tokenizer, and where its adapters go (`random_weights`: the
    architecture alone, for benchmarks; `precision`: its compute dtype; see p2p.models.loading.load_causal_lm)."""
    model, tokenizer = load_causal_lm(name, cache_dir, seed=seed, device=device, random_weights=random_weights,
                                      precision=precision)
    freeze(model)
    return model, tokenizer, find_targets(model, targets)
