"""Instant personalisation: profile text -> embedding -> adapter (one hypernetwork call) -> personalised answers.

`Personalizer` holds the frozen base model, the trained hypernetwork and the embedder it was trained with. Making
an adapter costs one embedding and one hypernetwork forward; generation runs many users' adapters in one batch.
Every adapter is made for a task: the hypernetwork standardises a profile by its task's statistics
(p2p.hyper.hypernet), so the task must be one it was trained on, and may be left out only when it has one task.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2p.hyper.checkpoint import HyperMeta, build_hypernetwork, read_meta, read_weights
from p2p.hyper.hypernet import HyperNetwork, resolve_task
from p2p.lora.hooks import Adapters, adapters_applied
from p2p.lora.peft import export_adapter
from p2p.lora.targets import frozen_base
from p2p.models.decoding import RowContext, TransformersBackend
from p2p.models.generation import Generation, Sampling
from p2p.models.precision import autocast
from p2p.profiles.embeddings import Embedder, embed_profiles, scale_rows
from p2p.profiles.noise import EmbeddingNoise
from p2p.profiles.profile_embedder import embedding_model, profile_embedder
from p2p.tasks import get_task
from p2p.tasks.prompts import render_embedding_prompt

log = logging.getLogger(__name__)


@dataclass
class MadeAdapters:
    embeddings: np.ndarray  # what generate() and export() take
    adapters: Adapters
    seconds: float  # embedding + hypernetwork forward


class Personalizer:
    """`noise`: the privacy defence (p2p.profiles.noise) on every profile `embed` turns into an embedding, drawn from
    `noise_secret` and the profile text, so the same profile always gets the same adapter from this Personalizer
    (default secret: random per process, so no one can recompute and subtract the noise)."""

    def __init__(self, model: Any, tokenizer: Any, hyper: HyperNetwork, meta: HyperMeta,
                 embedder: Embedder | None = None, batch_size: int = 16, noise: EmbeddingNoise = EmbeddingNoise(),
                 noise_secret: bytes | None = None):
        self.model, self.tokenizer, self.hyper, self.meta = model, tokenizer, hyper, meta
        self.embedder, self.batch_size = embedder, batch_size
        self.noise, self.noise_secret = noise, os.urandom(16) if noise_secret is None else noise_secret

    @classmethod
    def from_checkpoint(cls, path: str | Path, cache_dir: str | Path, *, device: str = "cpu", seed: int | None = None,
                        with_embedder: bool = True, batch_size: int = 16, onnx_embedder: bool = False,
                        noise: EmbeddingNoise = EmbeddingNoise()) -> Personalizer:
        """Load the base model named in the checkpoint, the hypernetwork, and (optionally) its embedder
        (`onnx_embedder`: see `p2p.profiles.profile_embedder`)."""
        meta, weights = read_meta(Path(path)), read_weights(Path(path))  # a bad checkpoint fails before the model loads
        model, tokenizer, layout = frozen_base(meta.base_llm, cache_dir, meta.lora.targets,
                                               seed=meta.seed if seed is None else seed, device=device)
        hyper = build_hypernetwork(Path(path), meta, weights, layout, device=str(model.device))
        embedder = None
        if with_embedder:
            name = embedding_model(meta.embedder_kind, meta.embedder, meta.base_llm)
            embedder = profile_embedder(meta.embedder_kind, name, cache_dir, device, onnx=onnx_embedder)
        return cls(model, tokenizer, hyper, meta, embedder, batch_size, noise)

    def task(self, task: str | None) -> str:
        """The trained task a profile's adapter is made for (`resolve_task`: None means the only one)."""
        return resolve_task(self.hyper.tasks, task)

    def embed(self, profile_texts: Sequence[str], task: str | None = None) -> np.ndarray:
        """Profile embeddings exactly as the embed stage made them for training (instruction, pooling, scaling),
        then the privacy defence's noise when it is on."""
        if self.embedder is None:
            raise ValueError("this Personalizer was loaded without its embedder; pass embeddings instead")
        embedder, prepare = self.embedder, lambda text: text
        if self.meta.embed_instruction:
            if task is None:
                raise ValueError("the embedder was used with the task instruction: say which task (--task)")
            description = get_task(task).description

            def prepare(text: str) -> str:
                return render_embedding_prompt(description, text)

        def embed(strings: list[str]) -> np.ndarray:
            return scale_rows(embedder.encode([prepare(s) for s in strings]))

        embeddings = embed_profiles(list(profile_texts), embed, self.meta.embed_pooling).astype(np.float32)
        return self.noise.apply(embeddings, list(profile_texts), self.noise_secret)

    def adapters(self, embeddings: np.ndarray, task: str | None) -> Adapters:
        """One adapter per row of `embeddings`, profiles of `task` (in the base model's compute precision)."""
        task = self.task(task)
        with torch.no_grad(), autocast(self.model):
            return self.hyper(torch.as_tensor(embeddings, dtype=torch.float32, device=self.model.device), task)

    def row_adapters(self, embeddings: np.ndarray, task: str | None) -> RowContext:
        """`rows(indices)`: the context in which batch rows `indices` run with the adapters made from their
        embeddings, profiles of `task` (the `row_context` of generation and choice scoring)."""
        task = self.task(task)

        def rows(indices: list[int]) -> AbstractContextManager:
            return adapters_applied(self.model, self.hyper.layout, self.meta.lora,
                                    self.adapters(embeddings[indices], task))

        return rows

    def make(self, profile_texts: Sequence[str], task: str | None = None) -> MadeAdapters:
        """Adapters for raw profile texts of `task`, timed from text to weights."""
        began = time.perf_counter()
        task = self.task(task)
        embeddings = self.embed(profile_texts, task)
        adapters = self.adapters(embeddings, task)
        return MadeAdapters(embeddings, adapters, time.perf_counter() - began)

    def generate(self, prompts: Sequence[str], embeddings: np.ndarray, task: str | None, sampling: Sampling,
                 progress: bool = False) -> list[Generation]:
        """Answer prompt i with the adapter made from embeddings[i] (profiles of `task`); rows of a batch carry
        different adapters."""
        if len(prompts) != len(embeddings):
            raise ValueError(f"{len(prompts)} prompts but {len(embeddings)} profile embeddings")
        backend = TransformersBackend(self.model, self.tokenizer, f"p2p:{self.meta.base_llm}",
                                      batch_size=self.batch_size, progress=progress,
                                      row_context=self.row_adapters(embeddings, task))
        return backend.generate([[{"role": "user", "content": p}] for p in prompts], sampling)

    def export(self, out_dir: str | Path, embedding: np.ndarray, task: str | None, force: bool = False) -> Path:
        """One user's adapter (a profile of `task`) as a standard PEFT directory (`force`: replace whatever
        `out_dir` holds)."""
        adapters = self.adapters(embedding[None], task)
        return export_adapter(out_dir, self.hyper.layout, self.meta.lora, adapters, self.meta.base_llm, force=force)
