"""The embedder of profile texts, for the embed stage and for adapters made on the spot alike: which model embeds
(`embedding_model`) and how it batches (`profile_embedder`), written once so that training and serving embed a
profile with the same model."""

from __future__ import annotations

import logging
import os

from p2p.models.loading import resolve_device
from p2p.profiles.embeddings import Embedder, make_embedder

log = logging.getLogger(__name__)


def embedding_model(kind: str, embedder: str, base_llm: str) -> str:
    """The model behind the profile embeddings: the sentence embedder, or the base LLM (its last-layer states)."""
    return embedder if kind == "sentence" else base_llm


def profile_embedder(kind: str, model: str, cache_dir: str | os.PathLike, device: str = "cpu", *,
                     batch_size: int | None = None, onnx: bool = False) -> Embedder:
    """The embedder of `kind` for `model` (`embedding_model`'s choice).

    `batch_size` (the embed stage: `embed.batch_size`): a corpus of profile texts embedded that many at a time.
    None (adapters made on the spot: `Personalizer`, `p2p serve`): texts of similar length batched together (a
    profile's short summary and histogram sections), never a short one padded to a long history's length (a
    last-layer embedder: one text at a time). The two give the same vectors up to padding's float rounding.

    `onnx`: a sentence embedder on CPU runs in ONNX Runtime (`OnnxSentenceEmbedder`: the same vectors to ~1e-6,
    one GIL release per forward; for a server, whose other threads run Python meanwhile). It costs ~3 s to load, so
    a one-shot command keeps PyTorch. Where it cannot load, PyTorch embeds, and a warning says why.
    """
    if batch_size is not None:
        embedder = make_embedder(kind, model, cache_dir, device=device, batch_size=batch_size)
    elif kind != "sentence":
        embedder = make_embedder(kind, model, cache_dir, device=device, batch_size=1)
    else:
        embedder = make_embedder(kind, model, cache_dir, device=device, batch_size=16, max_padding=1.25)
    if kind != "sentence" or not onnx or resolve_device(device) != "cpu":
        return embedder
    try:
        from p2p.profiles.onnx_embedder import OnnxSentenceEmbedder, UnsupportedEmbedder

        return OnnxSentenceEmbedder(embedder)
    except (ImportError, UnsupportedEmbedder) as err:
        log.warning("embedding profiles with PyTorch, not ONNX Runtime: %s", err)
        return embedder
