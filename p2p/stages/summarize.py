"""Stage `summarize`: the base LLM writes every user's profile summary (paper App. J prompt), cached by content."""

from __future__ import annotations

import logging
from pathlib import Path

from p2p.cache import Cache
from p2p.config import Config
from p2p.io import write_jsonl
from p2p.models.generation import Backend, Sampling
from p2p.paths import Paths, read_prepared
from p2p.profiles.summaries import CountTokens, summarize
from p2p.stages.common import generation_backend
from p2p.stages.recorder import Recorder

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    backend, count_tokens = generation_backend(cfg, root)
    for dataset, task in cfg.data.tasks():
        stats = rec.step(summarize_task, "summarize-task", f"summarize {dataset}/{task}", dataset, task, cfg, root,
                         backend, count_tokens)
        log.info("%s/%s: %d users: %d generated, %d from the cache, %d pre-existing profiles; %.0f completion tokens "
                 "in %.1f s (%.1f tokens/s)", dataset, task, stats["users"], stats["generated"], stats["cache_hits"],
                 stats["given_profiles"], stats["completion_tokens"], stats["generation_seconds"],
                 stats["completion_tokens_per_second"])
        rec.log_metrics(stats, prefix=f"{dataset}/{task}/")


def summarize_task(dataset: str, task: str, cfg: Config, root: Path, backend: Backend,
                   count_tokens: CountTokens) -> dict[str, float]:
    """LLM summaries of one task's users -> `summarize.dir/<dataset>/<task>.jsonl`; returns throughput stats.

    `backend` and `count_tokens`: p2p.stages.common.generation_backend, made once for every task."""
    paths = Paths(cfg, root)
    records = read_prepared(paths.prepared(dataset, task))
    sc = cfg.summarize
    sampling = Sampling(max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_p=sc.top_p, seed=cfg.seed)
    with Cache(paths.cache(sc.cache), "summaries") as cache:
        run = summarize(records, backend, cache, sampling, max_item_chars=sc.max_item_chars,
                        token_budget=sc.history_token_budget, count_tokens=count_tokens)
    write_jsonl(paths.summaries(dataset, task),
                ({"user_id": user_id, **entry} for user_id, entry in run.summaries.items()))
    return run.stats()
