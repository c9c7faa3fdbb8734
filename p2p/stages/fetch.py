"""Stage `fetch`: put every configured source's raw files under `data.raw_dir` (generated, or downloaded)."""

from __future__ import annotations

from pathlib import Path

from p2p.config import Config, SourceConfig
from p2p.data import synth
from p2p.data.download import fetch
from p2p.layout import Layout


def fetch_source(source: SourceConfig, cfg: Config, root: Path) -> list[Path]:
    """Generate the synthetic benchmark (`data.synth` sizes, `seed`), or download a real source's files."""
    raw = Layout(cfg, root).raw
    if source.dataset == "synth":
        s = cfg.data.synth
        written = synth.generate(raw / "synth", seed=cfg.seed, users=s.users, history_items=s.history_items,
                                 queries_per_user=s.queries_per_user, tasks=tuple(source.tasks))
        return sorted(written.values())
    return fetch(source.dataset, raw, tasks=source.tasks)
