"""What several stages build from the config: the base model, the generation backend, the embedder, LoRA shape."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from p2p.config import Config
from p2p.lora.hooks import LoraShape, TargetLayout
from p2p.lora.targets import frozen_base
from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Backend
from p2p.models.loading import load_causal_lm, resolve_device
from p2p.models.openai_backend import OpenAIBackend
from p2p.models.precision import compute_dtype
from p2p.models.presets import local_model_id
from p2p.paths import Paths
from p2p.profiles.embeddings import Embedder
from p2p.profiles.profile_embedder import embedding_model, profile_embedder
from p2p.profiles.summaries import CountTokens, approximate_tokens

log = logging.getLogger(__name__)


def lora_shape(cfg: Config) -> LoraShape:
    """The adapters every method makes or trains (`lora` params)."""
    lc = cfg.lora
    return LoraShape(tuple(lc.targets), lc.rank, lc.alpha, lc.dropout)


def base_model(cfg: Config, root: Path, device: str | None = None, *,
               training: bool = False) -> tuple[Any, Any, TargetLayout]:
    """The frozen base model (`model.base_llm`), its tokenizer and where the `lora.targets` adapters go.

    `training` (train, mt_lora, oppu): it computes in `model.precision`. Otherwise (evaluation) in fp32 on a CPU
    and bf16 on a GPU whatever `model.precision` says: bf16 autocast on a CPU chose another label than fp32 for 6% of
    held-out LaMP-3 queries on SmolLM2-135M (near-ties; tests/test_precision.py, docs/benchmarks.md), more than the
    2% allowed."""
    return frozen_base(cfg.model.base_llm, Paths(cfg, root).model_cache, tuple(cfg.lora.targets), seed=cfg.seed,
                       device=device or cfg.model.device, precision=cfg.model.precision if training else None)


def openai_backend(cfg: Config, progress: bool = True) -> OpenAIBackend:
    """The server of `generation.openai`, serving `model.base_llm` unless `generation.openai.model` names it."""
    oa = cfg.generation.openai
    host = urlsplit(oa.base_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("user data will be sent to %s (generation.openai.base_url)", oa.base_url)
    return OpenAIBackend.from_env(oa.base_url, oa.model or cfg.model.base_llm, api_key_env=oa.api_key_env,
                                  concurrency=oa.concurrency, timeout=oa.timeout, retries=oa.retries, progress=progress)


def generation_backend(cfg: Config, root: Path) -> tuple[Backend, CountTokens]:
    """The generation backend of `generation.backend`, and how to count its tokens for prompt budgets."""
    gen = cfg.generation
    if gen.backend == "openai":
        return openai_backend(cfg), approximate_tokens
    # This model only generates, so where it computes in bf16 its weights are bf16 too (as on a GPU): on a CPU the
    # attention cache and the residual stream then stay bf16 instead of autocast's fp32, and a summary batch runs
    # 1.7x faster (docs/benchmarks.md). Training and evaluation keep fp32 weights (base_model).
    bf16 = compute_dtype(cfg.model.precision, resolve_device(cfg.model.device)) == torch.bfloat16
    model, tokenizer = load_causal_lm(cfg.model.base_llm, Paths(cfg, root).model_cache, seed=cfg.seed,
                                      device=cfg.model.device, precision=cfg.model.precision,
                                      dtype="bfloat16" if bf16 else None)
    # bf16 text differs from fp32 text (and from bf16 autocast over fp32 weights), so it names the model in cache keys
    model_id = local_model_id(cfg.model.base_llm, cfg.seed) + (":bf16-weights" if bf16 else "")
    backend = TransformersBackend(model, tokenizer, model_id, batch_size=gen.batch_size)
    return backend, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def embedder_model(cfg: Config) -> str:
    """The model behind the profile embeddings (`embedding_model`)."""
    return embedding_model(cfg.model.embedder_kind, cfg.model.embedder, cfg.model.base_llm)


def corpus_embedder(cfg: Config, root: Path) -> Embedder:
    """The embed stage's embedder (`profile_embedder`, `embed.batch_size` texts at a time)."""
    return profile_embedder(cfg.model.embedder_kind, embedder_model(cfg), Paths(cfg, root).model_cache,
                            cfg.model.device, batch_size=cfg.embed.batch_size)


def evaluated_users(split: dict[str, list[str]], splits: list[str]) -> list[str]:
    """Every user of the evaluated test splits (`evaluate.splits`) in one task's `split`, once, in split order: whom
    OPPU trains an adapter for and whose P2P adapters the train stage times."""
    return list(dict.fromkeys(u for name in splits for u in split.get(name, [])))
