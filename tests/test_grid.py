"""The experiment grid as data (p2p/grid.py): which experiments each preset's grid makes, and their names."""

import subprocess
from pathlib import Path

import pytest

from p2p.config import load_config
from p2p.grid import load_grid, points

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_grid_has_one_experiment_per_row_and_point_and_none_for_the_base_run():
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    grid = load_grid("smoke", ROOT / "params.yaml")
    chosen, absent = points(cfg, grid, cached=lambda name: name == "Qwen/Qwen3-Embedding-0.6B")
    got = {p.exp_name("smoke"): p.varied for p in chosen}
    assert got == {
        "smoke-seeds-seed1": "train.seed=1",
        "smoke-table4-last_layer": "model.embedder_kind=last_layer",
        "smoke-table4-Qwen3-Embedding-0.6B": "model.embedder=Qwen/Qwen3-Embedding-0.6B, model.embedder_kind=sentence",
        "smoke-table5-random": "profile.variant=random",
        "smoke-table5-shuffled": "profile.variant=shuffled",
        "smoke-table5-summary_only": "profile.variant=summary_only",
        "smoke-table5-retrieved_only": "profile.variant=retrieved_only",
        "smoke-table5-full_history_only": "profile.variant=full_history_only",
        "smoke-fig3-diversity-0.5": "train.cluster_fraction=0.5, train.max_users=8",
        "smoke-fig3-diversity-1.0": "train.cluster_fraction=1.0, train.max_users=8",
        "smoke-fig3-quantity-0.5": "train.user_fraction=0.5",
        "smoke-fig6-p2p-k1": "profile.retrieval_k=1",
        "smoke-fig6-rag-k1": "evaluate.retrieval_k=1"}
    # the preset's own embedder (MiniLM) is the base run; uncached hub embedders are left out and named
    assert absent == ["Qwen/Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-8B", "Alibaba-NLP/gte-large-en-v1.5"]
    assert [a for p in chosen if p.figure == "seeds" for a in p.set_args()] == ["-S", "train.seed=1"]
    for name in got:  # each name is a git ref DVC can store the experiment under
        assert subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"]).returncode == 0, name


def test_a_presets_grid_is_merged_over_the_default_and_checked(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text() + "\n")
    cpu, smoke = load_grid("cpu", params), load_grid("smoke", params)
    assert cpu.seeds == [1, 2] and smoke.seeds == [1]
    assert smoke.variants == cpu.variants  # not in smoke's entry: the default's
    assert load_grid("cpu-full", params) == cpu  # no entry of its own
    params.write_text((ROOT / "params.yaml").read_text().replace("matched_users: 8", "matched_users: -8"))
    with pytest.raises(ValueError, match=r"grid for preset 'smoke': matched_users"):
        load_grid("smoke", params)
    params.write_text("preset: cpu\n")
    with pytest.raises(ValueError, match="no grid.default"):
        load_grid("cpu", params)
