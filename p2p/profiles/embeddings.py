"""Profile embeddings: a frozen text encoder, scaled as the paper does, cached on disk by (model id, text).

Two embedders share one interface, `encode(texts) -> float32 array` (raw rows, aligned with the texts) plus
`model_id` (for cache keys) and `dim`:

- `SentenceEmbedder`: a sentence-transformers model (the default: all-MiniLM-L6-v2 on cpu, Qwen3-Embedding on gpu).
- `LastLayerEmbedder`: the base LLM's own last-layer activations, mean-pooled (paper Table 4, "Qwen2.5-7B-It" row).

`embed_texts` L2-normalises each row and multiplies it by sqrt(dim) (the paper's scaling, so the hypernetwork input
has unit variance per coordinate), and stores the scaled vectors in a `Cache` keyed by model id and text. Missing
texts are computed in chunks and each chunk is committed at once, so a killed run keeps what it finished.

`embed_profiles` adds the pooling choice (`embed.pooling`): `text` embeds each profile text whole (the paper);
`sections` embeds its summary, label histogram line and retrieved history separately and averages the three unit
vectors. A small encoder that mean-pools its tokens lets the longest part (the history items) drown the short
histogram line that carries a rating user's leniency; on the embedded benchmark a linear probe on the OOD users
reads the planted rating bias at 0.23 (chance 0.2) from whole texts and 0.53 from sections.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from p2p.cache import Cache, content_key
from p2p.models.loading import load_causal_lm, resolve_device, resolve_model
from p2p.profiles.profile_text import profile_sections

Pooling = Literal["text", "sections"]


class Embedder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceEmbedder:
    """A sentence-transformers model; rows are whatever the model outputs (all-MiniLM already normalises).

    `max_seq_length` (in the model's tokens) overrides the model's own truncation length (256 for all-MiniLM);
    it changes the vectors, so it is part of `model_id`. `max_padding` (a ratio) batches only texts of similar
    length: a batch's longest text has at most that many times the tokens of its shortest, so a short summary is
    never padded to a long history's length (sentence-transformers otherwise fills each batch in length order).
    """

    def __init__(self, name: str, cache_dir: str | os.PathLike, *, device: str = "cpu", batch_size: int = 32,
                 max_seq_length: int | None = None, max_padding: float | None = None):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(resolve_model(name, cache_dir)), device=resolve_device(device))
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size, self.max_padding = batch_size, max_padding
        self.dim: int = self.model.get_embedding_dimension()
        self.model_id = f"st:{name}" + (f":{max_seq_length}" if max_seq_length is not None else "")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for batch in self.batches(texts):
            out[batch] = self.model.encode([texts[i] for i in batch], batch_size=self.batch_size,
                                           convert_to_numpy=True, show_progress_bar=False)
        return out

    def batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts` in the batches `encode` runs: all at once, or by `max_padding` (`length_batches`)."""
        if not texts:
            return []
        if self.max_padding is None:
            return [list(range(len(texts)))]
        tokens = self.model.tokenizer(list(texts), truncation=True, max_length=self.model.max_seq_length)
        return length_batches([len(ids) for ids in tokens["input_ids"]], self.max_padding, self.batch_size)


def length_batches(lengths: Sequence[int], max_padding: float, batch_size: int) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most `batch_size` whose longest length is at most
    `max_padding` times their shortest."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        batch = batches[-1] if batches else None
        if batch is None or len(batch) == batch_size or lengths[i] > max_padding * max(lengths[batch[0]], 1):
            batches.append([i])
        else:
            batch.append(i)
    return batches


class LastLayerEmbedder:
    """Mean of the base LLM's last hidden state (after its final norm) over each text's tokens.

    Texts are tokenised as plain text (no chat template) and truncated on the right to `max_length` tokens, so the
    start of a profile (its summary) is what is kept. Batches are formed in order of token length and padded on
    the RIGHT: with causal attention no real token can see a pad, and positions start at 0 as for the text alone,
    so a text's vector does not depend on what it is batched with. Pads are left out of the mean by the attention
    mask. A text with no tokens (the empty string) gets a zero row.
    """

    def __init__(self, name: str, cache_dir: str | os.PathLike, *, device: str = "cpu", batch_size: int = 8,
                 max_length: int = 512):
        model, self.tokenizer = load_causal_lm(name, cache_dir, device=device)
        self.tokenizer.padding_side = "right"  # load_causal_lm pads on the left, for generation
        self.model = model.base_model  # the decoder without the LM head: no vocabulary-sized logits to compute
        self.batch_size, self.max_length = batch_size, max_length
        self.dim: int = model.config.hidden_size
        self.model_id = f"lastlayer:{name}:{max_length}"

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: (len(ids[i]), i))
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                padded = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
                mask = padded["attention_mask"].to(device)
                hidden = self.model(input_ids=padded["input_ids"].to(device), attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(torch.float32)
                pooled = (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1)
                out[batch] = pooled.cpu().numpy()
        return out


def make_embedder(kind: Literal["sentence", "last_layer"], name: str, cache_dir: str | os.PathLike,
                  device: str = "cpu", batch_size: int | None = None, max_padding: float | None = None) -> Embedder:
    """The embedder of `kind` for model `name`; `batch_size` None keeps each embedder's default. `max_padding`:
    a sentence embedder batches only texts of similar length (`SentenceEmbedder`)."""
    options: dict[str, Any] = {"device": device} | ({"batch_size": batch_size} if batch_size is not None else {})
    if kind == "sentence":
        return SentenceEmbedder(name, cache_dir, max_padding=max_padding, **options)
    if kind == "last_layer":
        return LastLayerEmbedder(name, cache_dir, **options)
    raise ValueError(f"unknown embedder kind {kind!r}: expected 'sentence' or 'last_layer'")


@dataclass(frozen=True)
class EmbeddingResult:
    """`vectors`: one scaled row per input text. `hits`/`misses` count distinct texts found in / added to the
    cache; `seconds` is the time spent computing the misses (and storing them), `texts_per_second` their rate."""

    vectors: np.ndarray
    hits: int
    misses: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.misses / self.seconds if self.misses and self.seconds > 0 else 0.0


def scale_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row L2-normalised then multiplied by sqrt(dim) (float32); a zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors * (math.sqrt(vectors.shape[1]) / np.where(norms == 0, 1.0, norms))).astype(np.float32)


def embed_texts(texts: Sequence[str], embedder: Embedder, cache: Cache, *, batch_size: int = 256,
                progress: bool = True) -> EmbeddingResult:
    """Scaled embeddings of `texts`, read from `cache` where present; each distinct text is computed at most once.

    Missing texts are embedded `batch_size` at a time and every chunk is committed before the next starts, so an
    interrupted run loses at most one chunk. Cache values are the scaled float32 vectors' bytes.
    """
    from tqdm import tqdm

    keys = {text: content_key(embedder.model_id, text) for text in texts}
    found = cache.get_many(keys.values())
    vectors = {text: np.frombuffer(found[key], dtype=np.float32) for text, key in keys.items() if key in found}
    missing = [text for text in keys if text not in vectors]
    chunks = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    started = time.perf_counter()
    for chunk in tqdm(chunks, desc=f"embed {embedder.model_id}", unit="chunk", mininterval=5, disable=not progress):
        scaled = scale_rows(embedder.encode(chunk))
        cache.put_many({keys[text]: row.tobytes() for text, row in zip(chunk, scaled)})
        vectors.update(zip(chunk, scaled))
    seconds = time.perf_counter() - started
    matrix = np.stack([vectors[text] for text in texts]) if texts else np.zeros((0, embedder.dim), np.float32)
    return EmbeddingResult(matrix.astype(np.float32, copy=False), hits=len(keys) - len(missing),
                           misses=len(missing), seconds=seconds)


def embed_profiles(texts: Sequence[str], embed: Callable[[list[str]], np.ndarray], pooling: Pooling) -> np.ndarray:
    """Scaled profile embeddings, one row per text; `embed` maps strings to scaled rows (cached or not).

    `sections`: every distinct section is embedded once (a user's summary is shared by all their queries), each
    text's section rows are averaged and the mean is scaled again.
    """
    if pooling == "text" or not texts:
        return embed(list(texts))
    if pooling != "sections":
        raise ValueError(f"unknown embed.pooling {pooling!r}: expected 'text' or 'sections'")
    parts = [profile_sections(text) or [text] for text in texts]
    unique = list(dict.fromkeys(section for sections in parts for section in sections))
    rows = dict(zip(unique, embed(unique)))
    return scale_rows(np.stack([np.mean([rows[section] for section in sections], axis=0) for sections in parts]))


def partner_map(users: Sequence[str], seed: int) -> dict[str, str]:
    """Each user -> another user, a seeded permutation without fixed points (one cycle through all users)."""
    users = sorted(set(users))
    if len(users) < 2:
        raise ValueError("shuffling profiles needs at least two users")
    order = np.random.default_rng(seed).permutation(len(users))
    return {users[order[i]]: users[order[(i + 1) % len(users)]] for i in range(len(users))}


def ablate(vectors: np.ndarray, owners: Sequence[str], variant: str, seed: int) -> np.ndarray:
    """The Table 5 ablations that change vectors, not texts: row i belongs to user `owners[i]`.

    `random`: every row of a user becomes that user's random vector (Gaussian direction, the same norm sqrt(dim)
    as real rows), so the hypernetwork can tell users apart but learns nothing of them. `shuffled`: the rows of
    each user are replaced by those of another user (`partner_map`; the k-th row by the partner's k-th, cycling).
    Other variants return the vectors unchanged.
    """
    if variant not in ("random", "shuffled"):
        return vectors
    by_user: dict[str, list[int]] = {}
    for row, user in enumerate(owners):
        by_user.setdefault(user, []).append(row)
    out = np.empty_like(vectors)
    if variant == "random":
        rng = np.random.default_rng(seed)
        for user in sorted(by_user):
            out[by_user[user]] = scale_rows(rng.standard_normal((1, vectors.shape[1])))
        return out
    partner = partner_map(list(by_user), seed)
    for user, rows in by_user.items():
        other = by_user[partner[user]]
        out[rows] = vectors[[other[k % len(other)] for k in range(len(rows))]]
    return out
