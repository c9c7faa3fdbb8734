"""Stage `embed`: the profile embedding of every user and of every query (cached by model and text)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from p2p.cache import Cache
from p2p.config import Config
from p2p.io import atomic_path, write_jsonl
from p2p.paths import Paths, read_prepared, read_summaries
from p2p.profiles.build import build_profiles
from p2p.profiles.embeddings import Embedder, EmbeddingResult, ablate, embed_profiles, embed_texts
from p2p.stages.common import corpus_embedder
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task
from p2p.tasks.prompts import render_embedding_prompt

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    embedder = corpus_embedder(cfg, root)
    for dataset, task in cfg.data.tasks():
        stats = rec.step(embed_task, "embed-task", f"embed {dataset}/{task}", dataset, task, cfg, root, embedder)
        log.info("%s/%s: %d texts: %d embedded, %d from the cache; %.1f texts/s", dataset, task, stats["texts"],
                 stats["embedded"], stats["cache_hits"], stats["texts_per_second"])
        rec.log_metrics(stats, prefix=f"{dataset}/{task}/")


def profile_vectors(texts: list[str], task: str, cfg: Config, root: Path, embedder: Embedder) -> np.ndarray:
    """Embeddings of profile texts made after this stage (the train stage's padding rows) exactly as `embed_task`
    embeds a query's profile: the task's instruction when `embed.instruction`, the embedding cache, `embed.pooling`."""
    description = get_task(task).description

    def embed(strings: list[str]) -> np.ndarray:
        if cfg.embed.instruction:
            strings = [render_embedding_prompt(description, s) for s in strings]
        return embed_texts(strings, embedder, cache, batch_size=max(cfg.embed.batch_size, 256)).vectors

    with Cache(Paths(cfg, root).cache(cfg.embed.cache), "embeddings") as cache:
        return embed_profiles(texts, embed, cfg.embed.pooling)


def embed_task(dataset: str, task: str, cfg: Config, root: Path, embedder: Embedder) -> dict[str, float]:
    """Embed every user's profile text and every query's profile text of one task (`profile.variant`: Table 5).

    Writes `embed.dir/<dataset>/<task>.npz` (user_ids, users, query_ids, query_users, queries: float32,
    L2-normalised and scaled by sqrt(dim))
    and <task>.texts.jsonl (the texts embedded, for inspection). `embedder`: p2p.stages.common.corpus_embedder.
    """
    paths = Paths(cfg, root)
    records = read_prepared(paths.prepared(dataset, task))
    summaries = read_summaries(paths.summaries(dataset, task))
    description = get_task(task).description
    profiles = [build_profiles(r, summaries[r.user_id], cfg.profile.retrieval_k, cfg.profile.variant)
                for r in records]
    query_rows = [(r.user_id, qid, text) for r, p in zip(records, profiles) for qid, text in p.query_texts.items()]
    texts = [p.user_text for p in profiles] + [text for _, _, text in query_rows]
    results: list[EmbeddingResult] = []

    def embed(strings: list[str]) -> np.ndarray:
        if cfg.embed.instruction:
            strings = [render_embedding_prompt(description, s) for s in strings]
        results.append(embed_texts(strings, embedder, cache, batch_size=max(cfg.embed.batch_size, 256)))
        return results[-1].vectors

    with Cache(paths.cache(cfg.embed.cache), "embeddings") as cache:
        vectors = embed_profiles(texts, embed, cfg.embed.pooling)
    owners = [r.user_id for r in records] + [user for user, _, _ in query_rows]
    vectors = ablate(vectors, owners, cfg.profile.variant, cfg.seed)
    result = EmbeddingResult(vectors, hits=sum(r.hits for r in results), misses=sum(r.misses for r in results),
                             seconds=sum(r.seconds for r in results))
    n_users = len(records)
    with atomic_path(paths.embeddings(dataset, task)) as tmp, tmp.open("wb") as fh:
        np.savez(fh, user_ids=np.array([r.user_id for r in records]), users=result.vectors[:n_users],
                 query_ids=np.array([qid for _, qid, _ in query_rows]),
                 query_users=np.array([user for user, _, _ in query_rows]), queries=result.vectors[n_users:])
    write_jsonl(paths.embedded_texts(dataset, task),
                [{"user_id": r.user_id, "text": p.user_text} for r, p in zip(records, profiles)]
                + [{"user_id": user, "query_id": qid, "text": text} for user, qid, text in query_rows])
    return {"texts": float(len(texts)), "cache_hits": float(result.hits), "embedded": float(result.misses),
            "seconds": result.seconds, "texts_per_second": result.texts_per_second, "dim": float(embedder.dim)}
