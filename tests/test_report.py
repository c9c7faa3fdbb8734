"""The report stage: the paper's tables with ours beside them, and the figures, from small hand-made inputs."""

import csv
import io
import json
from pathlib import Path

import pytest

from p2p.config import SourceConfig, load_config
from p2p.grid import load_grid
from p2p.io import InputError
from p2p.report import figures, paper, sweeps, tables
from p2p.report.runs import EvalRow
from p2p.stages import report as stage
from p2p.stages.report import run_info

ROOT = Path(__file__).resolve().parents[1]
SHARED_TABLES = ROOT.parent / "shared" / "paper" / "tables"
GRID = load_grid("cpu", ROOT / "params.yaml")
PNG = b"\x89PNG\r\n\x1a\n"
METHODS = ("base", "rag", "pag", "full_history", "mt_lora", "oppu", "p2p", "p2p_shuffled")
SPLITS = ("random_test", "ood_test")


def with_sources(cfg, *sources):
    return cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"sources": [SourceConfig(dataset=d, tasks=list(t)) for d, t in sources]})})


@pytest.fixture(scope="module")
def cfg():
    """The project's cpu preset on one task of each kind (whatever params.yaml's default task list is)."""
    return with_sources(load_config(ROOT / "params.yaml", preset="cpu"), ("synth", ["LaMP-2M", "LaMP-3", "LaMP-7"]))


def with_params(cfg, **sections):
    """cfg with e.g. profile={"variant": "random"} merged into its sections."""
    return cfg.model_copy(update={name: getattr(cfg, name).model_copy(update=values)
                                  for name, values in sections.items()})


def scores(task: str, base: float) -> dict:
    """Distinct, recognisable metric values of one method on one task (the evaluate stage's keys: each metric with
    its `_ci95` interval, then the sample size)."""
    kind = {"LaMP-1": "c", "LaMP-2M": "c", "LaMP-3": "r", "LaMP-4": "g", "LaMP-7": "g"}[task]
    out = {"n": 12.0, "ms_per_instance": 100 + 1000 * base}
    if kind == "c":  # the headline (choice-scored) apart from the generated answers' metrics
        values = {"choice/accuracy": base, "choice/f1": base / 2, "official/accuracy": base - 0.002,
                  "official/f1_macro": base / 5, "p2p/accuracy": base + 0.001, "p2p/f1_weighted": base / 3}
    elif kind == "r":
        values = {"choice/mae": 1 + base, "choice/rmse": 2 + base, "official/mae": 1.5 + base,
                  "official/rmse": 2.5 + base, "p2p/mae": None, "p2p/rmse": None}
    else:
        values = {"official/rouge1": base, "official/rougeL": base / 4, "p2p/rouge1": base, "p2p/rougeL": base / 4}
    for key, value in values.items():
        out[key] = value
        out[f"{key}_ci95"] = None if value is None else [round(value - 0.04, 6), round(value + 0.05, 6)]
    return out | {"n_queries": 12, "n_users": 4}


def eval_metrics(tasks=("LaMP-2M", "LaMP-3", "LaMP-7"), methods=METHODS + ("oracle", "query_only")) -> dict:
    """reports/eval/metrics.json as the evaluate stage writes it (bare task ids as keys)."""
    return {split: {task: {m: scores(task, round(0.05 + 0.1 * i + 0.01 * t + 0.001 * s, 6))
                           for i, m in enumerate(methods)}
                    for t, task in enumerate(tasks)}
            for s, split in enumerate(SPLITS)}


def parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def row(method, task, split, metrics, start_time=0, run_id="r", **params) -> EvalRow:
    base = {"profile.variant": "full", "model.embedder": "sentence-transformers/all-MiniLM-L6-v2",
            "model.embedder_kind": "sentence", "profile.retrieval_k": "2", "evaluate.retrieval_k": "2",
            "train.user_fraction": "1.0", "train.cluster_fraction": "1.0", "train.max_users": "None",
            "train.seed": "None"}
    return EvalRow(method, task, split, {**base, **params}, metrics, run_id=run_id, start_time=start_time)


# --- the paper's numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", paper.FILES)
def test_paper_copies_equal_the_shared_tables(name):
    if not SHARED_TABLES.is_dir():
        pytest.skip(f"{SHARED_TABLES} not present")
    assert (paper.paper_dir() / name).read_bytes() == (SHARED_TABLES / name).read_bytes()


def test_paper_readers_return_the_csv_values():
    with open(paper.paper_dir() / "main_results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ood = paper.main_results("ood_test")
    expected = {(r["task"], r["metric"], r["method"]): float(r["value"]) for r in rows if r["table"] == "table2"}
    assert ood == expected and len(ood) > 100
    random = paper.main_results("random_test")
    assert random == {(r["task"], r["metric"], r["method"]): float(r["value"]) for r in rows if r["table"] == "table1"}
    with open(paper.paper_dir() / "ablations.csv", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))
    assert paper.kind_table("ablations.csv")[first["variant"]]["rating_mae"] == float(first["rating_mae"])


def test_a_malformed_paper_copy_names_the_file_and_line(tmp_path):
    (tmp_path / "ablations.csv").write_text("table,split,variant,class_acc,class_f1,gen_r1,gen_rl,rating_mae,"
                                            "rating_rmse\ntable5,ood,full,0.5,0.5,x,0.2,0.3,0.4\n")
    with pytest.raises(InputError, match=r"ablations\.csv: record line 2: field 'gen_r1'"):
        paper.kind_table("ablations.csv", tmp_path)
    (tmp_path / "judge_scores.csv").write_text("table,dataset,split,method\n")
    with pytest.raises(InputError, match=r"judge_scores\.csv.*missing column.*score"):
        paper.judge_scores(tmp_path)


# --- Tables 1 and 2 ----------------------------------------------------------------------------------------------


def test_main_table_puts_our_and_the_papers_number_in_each_cell(cfg):
    metrics = stage.resolve_tasks(eval_metrics(), Path("metrics.json"), cfg, depth=2)
    ref = paper.main_results("ood_test")
    table = tables.main_table("ood_test", metrics["ood_test"], ref, tables.provenance(run_info(cfg), "local model X"))
    ours = metrics["ood_test"][("synth", "LaMP-2M")]["p2p"]["choice/accuracy"]
    line = next(li for li in table.markdown.splitlines()
                if li.startswith("| LaMP-2M | synth/LaMP-2M (4 users, 12 queries) | Acc"))
    # ours with its interval, then the paper's
    assert f"{ours:.3f} [{ours - 0.04:.2f}, {ours + 0.05:.2f}] ({ref[('LaMP-2M', 'Acc', 'p2p')]:.3f})" in line
    parsed = parse_csv(table.csv)
    got = {(r["task"], r["metric"], r["method"]): r for r in parsed}
    cell = got[("LaMP-3", "MAE", "oppu")]
    assert float(cell["ours"]) == metrics["ood_test"][("synth", "LaMP-3")]["oppu"]["choice/mae"]
    assert float(cell["ours_official"]) == metrics["ood_test"][("synth", "LaMP-3")]["oppu"]["official/mae"]
    assert [float(cell["ours_ci95_lo"]), float(cell["ours_ci95_hi"])] == \
        metrics["ood_test"][("synth", "LaMP-3")]["oppu"]["choice/mae_ci95"]
    assert (cell["n_queries"], cell["n_users"]) == ("12", "4")
    assert float(cell["paper"]) == ref[("LaMP-3", "MAE", "oppu")]
    assert cell["ours_p2p_style"] == ""  # the P2P-style MAE was None
    f1 = got[("LaMP-2M", "F1", "rag")]
    assert float(f1["ours"]) == metrics["ood_test"][("synth", "LaMP-2M")]["rag"]["choice/f1"]
    assert float(f1["ours_p2p_style"]) == metrics["ood_test"][("synth", "LaMP-2M")]["rag"]["p2p/f1_weighted"]
    # a paper-only task has the paper's value and no ours; our reference methods have no paper value
    assert got[("LaMP-1", "Acc", "p2p")]["ours"] == "" and float(got[("LaMP-1", "Acc", "p2p")]["paper"]) == \
        ref[("LaMP-1", "Acc", "p2p")]
    assert got[("LaMP-2M", "Acc", "oracle")]["paper"] == ""
    assert "oracle†" in table.markdown and "synthetic stand-ins" in table.markdown
    assert table.name == "table2"


def test_main_table_averages_our_tasks_of_each_kind(cfg):
    lamp = with_sources(cfg, ("lamp", ["LaMP-1", "LaMP-2M", "LaMP-3", "LaMP-4", "LaMP-7"]))
    raw = eval_metrics(("LaMP-1", "LaMP-2M", "LaMP-3", "LaMP-4", "LaMP-7"))
    metrics = stage.resolve_tasks(raw, Path("metrics.json"), lamp, depth=2)["random_test"]
    header = tables.provenance(run_info(lamp), "local model X")
    table = tables.main_table("random_test", metrics, paper.main_results("random_test"), header)
    got = {(r["task"], r["metric"], r["method"]): r for r in parse_csv(table.csv)}
    acc = [raw["random_test"][t]["mt_lora"]["choice/accuracy"] for t in ("LaMP-1", "LaMP-2M")]
    assert float(got[("AVG-classification", "Acc", "mt_lora")]["ours"]) == pytest.approx(sum(acc) / 2)
    assert got[("AVG-classification", "Acc", "mt_lora")]["ours_ci95_lo"] == ""  # no interval on an average
    rl = [raw["random_test"][t]["p2p"]["official/rougeL"] for t in ("LaMP-4", "LaMP-7")]
    assert float(got[("AVG-generation", "R-L", "p2p")]["ours"]) == pytest.approx(sum(rl) / 2)
    ms = [raw["random_test"][t]["base"]["ms_per_instance"] for t in raw["random_test"]]
    assert float(got[("INFER-TIME", "ms", "base")]["ours"]) == pytest.approx(sum(ms) / len(ms))
    assert got[("LaMP-2M", "Acc", "p2p")]["our_task"] == "lamp/LaMP-2M"
    assert "synthetic stand-ins" not in table.markdown and "data lamp: LaMP-1, LaMP-2M" in table.markdown


def test_kind_averages_need_every_task_of_the_kind():
    by_task = {"LaMP-1": {"choice/accuracy": 0.2, "choice/f1": 0.1},
               "LaMP-2M": {"choice/accuracy": 0.6, "choice/f1": None},
               "LaMP-3": {"choice/mae": 0.7, "choice/rmse": float("nan")},
               "LaMP-4": {"official/rouge1": 0.3, "official/rougeL": 0.2},
               "LaMP-7": {"official/rouge1": 0.5, "official/rougeL": 0.4}}
    got = tables.kind_averages(by_task)
    assert got["class_acc"] == pytest.approx(0.4)
    assert got["class_f1"] is None  # one classification task lacks it
    assert got["gen_r1"] == pytest.approx(0.4) and got["gen_rl"] == pytest.approx(0.3)
    assert got["rating_mae"] == pytest.approx(0.7) and got["rating_rmse"] is None  # NaN = missing (MLflow)


# --- Tables 4 and 5 ----------------------------------------------------------------------------------------------


def test_ablation_table_takes_the_newest_matching_run_and_names_the_command_for_the_rest(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    old = {"choice/accuracy": 0.11, "choice/f1": 0.12}
    new = {"choice/accuracy": 0.31, "choice/f1": 0.32}
    rows = [row("p2p", "synth/LaMP-2M", "ood_test", old, start_time=1, run_id="old", **{"profile.variant": "random"}),
            row("p2p", "LaMP-2M", "ood_test", new, start_time=5, run_id="new", **{"profile.variant": "random"}),
            row("p2p", "LaMP-2M", "random_test", {"choice/accuracy": 0.9}, start_time=9,
                **{"profile.variant": "random"}),  # another split
            # a k-sweep run of another variant: its other ablation param differs, so it must not count
            row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.99}, start_time=9, run_id="ksweep",
                **{"profile.variant": "summary_only", "profile.retrieval_k": "8"}),
            # the current setting logged by MLflow, older than this workspace's metrics.json: the workspace wins
            row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.77}, start_time=99, run_id="mlflow-full")]
    all_rows = rows + tables.current_rows(current, run_info(cfg))
    table = tables.ablation_table(all_rows, run_info(cfg), paper.kind_table("ablations.csv"), "header")
    got = {r["variant"]: r for r in parse_csv(table.csv)}
    assert float(got["random"]["ours_class_acc"]) == 0.31 and float(got["random"]["ours_class_f1"]) == 0.32
    assert got["random"]["ours_rating_mae"] == ""  # the random-variant run had no rating task
    assert "1 of 3 tasks" in table.markdown
    full = current["ood_test"]
    assert float(got["full"]["ours_class_acc"]) == full[("synth", "LaMP-2M")]["p2p"]["choice/accuracy"]
    assert float(got["full"]["ours_rating_rmse"]) == full[("synth", "LaMP-3")]["p2p"]["choice/rmse"]
    assert float(got["full"]["ours_gen_r1"]) == full[("synth", "LaMP-7")]["p2p"]["official/rouge1"]
    assert float(got["full"]["paper_class_acc"]) == paper.kind_table("ablations.csv")["full"]["class_acc"]
    assert float(got["shuffled"]["paper_rating_mae"]) == \
        paper.kind_table("ablations.csv")["shuffle_user_profile"]["rating_mae"]
    assert got["summary_only"]["source"] == "not run"
    assert got["summary_only"]["command"] == "dvc exp run -S preset=cpu -S profile.variant=summary_only"
    assert "not run: `dvc exp run -S preset=cpu -S profile.variant=summary_only`" in table.markdown
    assert got["full"]["source"] == "current run"
    # the current run's p2p_shuffled method is the test-time shuffled profile; no profile.variant=shuffled run yet
    shuffled = [r for r in parse_csv(table.csv) if r["variant"] == "shuffled"]
    assert [r["method"] for r in shuffled] == ["p2p_shuffled"]
    assert float(shuffled[0]["ours_class_acc"]) == full[("synth", "LaMP-2M")]["p2p_shuffled"]["choice/accuracy"]
    assert "shuffled at test time (method p2p_shuffled) (paper: shuffle_user_profile)" in table.markdown


def test_a_shuffled_variant_run_gets_its_own_row_beside_the_test_time_shuffle(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    rows = [row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.21}, start_time=2, run_id="shuf",
                **{"profile.variant": "shuffled"})]
    info = run_info(cfg)
    table = tables.ablation_table(rows + tables.current_rows(current, info), info, paper.kind_table("ablations.csv"),
                                  "header")
    got = {(r["variant"], r["method"]): r for r in parse_csv(table.csv)}
    assert float(got[("shuffled", "p2p")]["ours_class_acc"]) == 0.21
    assert float(got[("shuffled", "p2p_shuffled")]["ours_class_acc"]) == \
        current["ood_test"][("synth", "LaMP-2M")]["p2p_shuffled"]["choice/accuracy"]
    assert got[("shuffled", "p2p")]["paper_class_acc"] == got[("shuffled", "p2p_shuffled")]["paper_class_acc"] != ""


def test_ablation_table_with_no_rows_still_shows_the_current_run(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    random_cfg = with_params(cfg, profile={"variant": "random"})
    table = tables.ablation_table(tables.current_rows(current, run_info(random_cfg)), run_info(random_cfg),
                                  paper.kind_table("ablations.csv"), "header")
    got = {r["variant"]: r for r in parse_csv(table.csv)}
    assert got["random"]["source"] == "current run" and got["full"]["source"] == "not run"
    assert got["full"]["command"] == "dvc exp run -S preset=cpu -S profile.variant=full"


def test_embedder_table_rows_per_embedder_and_the_base_model(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    qwen = {"choice/accuracy": 0.42, "choice/f1": 0.41, "choice/mae": 0.5, "choice/rmse": 0.6,
            "official/rouge1": 0.3, "official/rougeL": 0.2}
    rows = [row("p2p", f"synth/{t}", "ood_test", qwen, start_time=3, run_id="q06",
                **{"model.embedder": "Qwen/Qwen3-Embedding-0.6B"}) for t in ("LaMP-2M", "LaMP-3", "LaMP-7")]
    rows.append(row("p2p", "synth/LaMP-2M", "ood_test", {"choice/accuracy": 0.8}, run_id="ll",
                    **{"model.embedder_kind": "last_layer", "model.embedder": "whatever"}))
    table = tables.embedder_table(rows + tables.current_rows(current, run_info(cfg)), run_info(cfg),
                                  paper.kind_table("embedding_models.csv"), "header")
    got = {(r["paper_variant"] or r["embedder"]): r for r in parse_csv(table.csv)}
    assert float(got["Qwen3-Emb-0.6B"]["ours_class_acc"]) == 0.42
    assert float(got["Qwen3-Emb-0.6B"]["paper_class_acc"]) == \
        paper.kind_table("embedding_models.csv")["Qwen3-Emb-0.6B"]["class_acc"]
    assert float(got["Qwen2.5-7B-It"]["ours_class_acc"]) == 0.8
    assert got["Qwen3-Emb-8B"]["command"] == "dvc exp run -S preset=cpu -S model.embedder=Qwen/Qwen3-Embedding-8B"
    assert float(got["Non-Personalized"]["ours_class_acc"]) == \
        current["ood_test"][("synth", "LaMP-2M")]["base"]["choice/accuracy"]
    minilm = got["sentence-transformers/all-MiniLM-L6-v2"]
    assert float(minilm["ours_class_acc"]) == current["ood_test"][("synth", "LaMP-2M")]["p2p"]["choice/accuracy"]
    assert minilm["paper_class_acc"] == ""


def test_a_grid_point_is_the_config_with_its_changes_and_sweeps_join_the_current_run(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    info = run_info(cfg)
    ci = {"choice/accuracy_ci95_lo": 0.2, "choice/accuracy_ci95_hi": 0.3}
    rows = [row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.25, **ci}, **{"train.user_fraction": "0.5"}),
            # two params changed: the diversity point (0.5 of the clusters at 8 users), not the quantity one
            row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.9},
                **{"train.cluster_fraction": "0.5", "train.max_users": "8"}),
            row("mt_lora", "LaMP-2M", "ood_test", {"choice/accuracy": 0.7}, **{"train.user_fraction": "0.5"})]
    everything = rows + tables.current_rows(current, info)
    quantity = [(0.5, {"train.user_fraction": "0.5"}), (1.0, {"train.user_fraction": "1.0"})]
    lines = sweeps.sweep_lines(everything, info, quantity, "p2p", ["ood_test"])
    mine = current["ood_test"][("synth", "LaMP-2M")]["p2p"]
    assert lines[("synth", "LaMP-2M")]["ood_test"] == [
        (0.5, 0.25, (0.2, 0.3)), (1.0, mine["choice/accuracy"], tuple(mine["choice/accuracy_ci95"]))]
    assert [p[0] for p in lines[("synth", "LaMP-3")]["ood_test"]] == [1.0]
    assert sweeps.missing_settings(lines, quantity) == [0.5]  # LaMP-3 and LaMP-7 lack it
    diversity = sweeps.point_setting(everything, info, {"train.cluster_fraction": "0.5", "train.max_users": "8"},
                                     "p2p", "ood_test")
    assert sweeps.headline(diversity, ("synth", "LaMP-2M")) == (0.9, None)
    assert sweeps.point_setting(everything, info, {"train.cluster_fraction": "0.5"}, "p2p", "ood_test") is None


def test_pooled_seeds_cover_the_seeds_spread_and_the_users_interval():
    # golden values: mean 0.5; users' half-width mean(0.1, 0.1, 0.1) = 0.1; seeds' t(0.975, 2) = 4.302653 times
    # sd 0.1 / sqrt(3); together sqrt(0.1^2 + 0.248414^2) = 0.267786
    mean, (lo, hi) = sweeps.pool_seeds([(0.4, (0.3, 0.5)), (0.5, (0.4, 0.6)), (0.6, (0.5, 0.7))])
    assert mean == pytest.approx(0.5)
    assert hi - mean == pytest.approx(0.267786, abs=1e-6) and mean - lo == pytest.approx(0.267786, abs=1e-6)
    assert sweeps.pool_seeds([(0.4, (0.3, 0.5))]) == (0.4, (pytest.approx(0.3), pytest.approx(0.5)))  # one seed
    same, (lo, hi) = sweeps.pool_seeds([(0.5, (0.4, 0.6)), (0.5, (0.45, 0.55))])  # no spread: users only
    assert (lo, hi) == (pytest.approx(0.425), pytest.approx(0.575))
    # a lopsided bootstrap interval stays lopsided: seeds that agree give back their interval, not one below 0
    assert sweeps.pool_seeds([(0.0625, (0.0, 0.1875))] * 2) == (0.0625, (pytest.approx(0.0), pytest.approx(0.1875)))
    assert sweeps.pool_seeds([(0.4, None), (0.6, None)])[1] == (
        pytest.approx(0.5 - 12.706205 * 0.141421 / 2 ** 0.5, abs=1e-5), pytest.approx(0.5 + 1.270620, abs=1e-5))
    with pytest.raises(ValueError):
        sweeps.pool_seeds([])


def test_the_seed_table_pools_each_method_over_the_seeds_that_ran(cfg):
    current = stage.resolve_tasks(eval_metrics(), Path("m.json"), cfg, depth=2)
    info = run_info(cfg)
    seed1 = {"choice/accuracy": 0.5, "choice/accuracy_ci95_lo": 0.4, "choice/accuracy_ci95_hi": 0.6}
    rows = [row("p2p", "LaMP-2M", "ood_test", seed1, **{"train.seed": "1"}),
            row("p2p", "LaMP-2M", "ood_test", {"choice/accuracy": 0.1}, **{"train.seed": "1",
                                                                         "profile.variant": "random"})]
    seeds = [("seed 0 (base)", {}), ("seed 1", {"train.seed": "1"}), ("seed 2", {"train.seed": "2"})]
    table = sweeps.seed_table("ood_test", rows + tables.current_rows(current, info), info, seeds, ["p2p", "base"],
                              "header", {})
    got = parse_csv(table.csv)
    p2p = {r["seed"]: r for r in got if r["task"] == "synth/LaMP-2M" and r["method"] == "p2p"}
    mine = current["ood_test"][("synth", "LaMP-2M")]["p2p"]
    assert float(p2p["seed 1"]["value"]) == 0.5 and p2p["seed 2"]["value"] == ""
    pooled = sweeps.pool_seeds([(mine["choice/accuracy"], tuple(mine["choice/accuracy_ci95"])), (0.5, (0.4, 0.6))])
    assert float(p2p["pooled over 2"]["value"]) == pytest.approx(pooled[0])
    assert float(p2p["pooled over 2"]["ci95_lo"]) == pytest.approx(pooled[1][0])
    assert "not run" in table.markdown and table.name == "table2_seeds"


# --- Table 3 -----------------------------------------------------------------------------------------------------


def test_judge_table_shows_not_run_with_the_reason(cfg):
    table = tables.judge_table(None, paper.judge_scores(), SPLITS, "header", "nothing to judge: no open-ended task")
    assert "**Ours: not run — nothing to judge: no open-ended task.**" in table.markdown
    ref = paper.judge_scores()[("personal_reddit", "random", "p2p")]
    assert f"not run ({ref:.2f})" in table.markdown
    got = parse_csv(table.csv)
    assert all(r["ours_mean"] == "" and r["note"].startswith("nothing to judge") for r in got)


def test_judge_table_cells_hold_our_mean_and_the_papers(cfg):
    pr = with_sources(cfg, ("personal_reddit", ["PersonalReddit"]))
    raw = {"random_test": {"PersonalReddit": {"p2p": {"mean": 2.25, "n": 16, "scored": 15, "missing": 1,
                                                      "forced": 15}}},
           "ood_test": {}}
    judged = stage.resolve_tasks(raw, Path("judge.json"), pr, depth=2)
    table = tables.judge_table(judged, paper.judge_scores(), SPLITS, "header")
    ref = paper.judge_scores()[("personal_reddit", "random", "p2p")]
    assert f"2.25 [15/16] ({ref:.2f})" in table.markdown
    got = {(r["dataset"], r["split"], r["method"]): r for r in parse_csv(table.csv)}
    cell = got[("Personal Reddit", "random_test", "p2p")]
    assert float(cell["ours_mean"]) == 2.25 and cell["ours_forced"] == "15" and float(cell["paper"]) == ref
    assert got[("Personal Reddit", "ood_test", "p2p")]["ours_mean"] == ""


# --- inputs, figures and the whole stage -------------------------------------------------------------------------


def test_read_eval_metrics_names_the_file_when_malformed(cfg, tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(FileNotFoundError, match="evaluate"):
        stage.read_eval_metrics(path, cfg)
    bad = eval_metrics()
    bad["ood_test"]["LaMP-3"]["p2p"]["choice/mae"] = "0.5"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"metrics\.json: record ood_test/synth/LaMP-3/p2p: field 'choice/mae'"):
        stage.read_eval_metrics(path, cfg)
    path.write_text(json.dumps({"ood_test": {"LaMP-99": {}}}))
    with pytest.raises(InputError, match=r"metrics\.json: record ood_test/LaMP-99: unknown task"):
        stage.read_eval_metrics(path, cfg)
    good = eval_metrics()
    path.write_text(json.dumps(good))
    read = stage.read_eval_metrics(path, cfg)  # intervals and null intervals are accepted
    assert read["ood_test"][("synth", "LaMP-3")]["p2p"]["p2p/mae_ci95"] is None
    for bad_interval in ([0.5], [0.6, 0.4], ["0.1", 0.2], 0.5):
        bad = eval_metrics()
        bad["random_test"]["LaMP-2M"]["rag"]["official/accuracy_ci95"] = bad_interval
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=r"record random_test/synth/LaMP-2M/rag: field 'official/accuracy_ci95'"
                                             r": .* is not an interval"):
            stage.read_eval_metrics(path, cfg)


def test_figures_are_pngs(tmp_path):
    path = figures.panel_figure({"a": {"s1": [(0.5, 0.2), (1.0, 0.4)]}, "b": {"s2": [("1-3", 0.1), ("4-8", 0.3)]},
                                 "empty": {}}, tmp_path / "f.png", title="t", xlabel="x", ylabels="y", note="n")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    line = figures.line_figure({"s": [(1, 2.0), (2, 3.0)]}, tmp_path / "l.png", title="t", xlabel="x", ylabel="y")
    assert line.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "l.png"]  # no temp file left behind


def test_a_series_keeps_its_colour_in_every_panel():
    colours = figures.series_colours({"LaMP-2M": {"P2P": [], "attribute": [], "linkage": []},
                                      "LaMP-7": {"P2P": [], "linkage": []}})
    assert list(colours) == ["P2P", "attribute", "linkage"]
    assert len(set(colours.values())) == 3  # the linkage line is not drawn in the attribute's colour on LaMP-7


def write_inputs(root: Path, cfg, *, oppu: bool = True) -> dict:
    """What the earlier stages leave for the report stage (a small stand-in of each file)."""
    metrics = eval_metrics()
    (root / "reports" / "eval").mkdir(parents=True)
    (root / "reports" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    lines = ["split,task,method,bucket,n,value"] + [f"{s},{t},{m},{b},4,{0.1 * i + 0.01 * j:.6f}"
                                                     for s in SPLITS for t in ("LaMP-2M", "LaMP-3", "LaMP-7")
                                                     for i, m in enumerate(("base", "p2p"))
                                                     for j, b in enumerate(("8-10", "2-5", "5-8"))]
    (root / "reports" / "eval" / "history_buckets.csv").write_text("\n".join(lines) + "\n")
    (root / "reports" / "judge").mkdir()
    (root / "reports" / "judge" / "metrics.json").write_text(json.dumps({s: {} for s in SPLITS}))
    (root / "reports" / "judge" / "summary.md").write_text("# LLM judge (Table 3)\n\nJudge: none (nothing to "
                                                            "judge).\n")
    (root / "reports" / "splits").mkdir()
    (root / "reports" / "splits" / "metrics.json").write_text(json.dumps(
        {f"synth/{t}": {"train_users": 72.0, "random_test_users": 24.0, "ood_test_users": 24.0}
         for t in ("LaMP-2M", "LaMP-3", "LaMP-7")}))
    (root / "data" / "splits" / "synth").mkdir(parents=True)
    (root / "data" / "splits" / "synth" / "LaMP-2M.report.json").write_text(json.dumps(
        {"queries": {"train": 288, "random_test": 96, "ood_test": 95}}))
    seconds = {}
    if oppu:
        (root / "data" / "oppu" / "synth").mkdir(parents=True)
        for k, task in enumerate(("LaMP-2M", "LaMP-3")):
            users = [f"{task}-u{i}" for i in range(3)]
            seconds[task] = [10.0 + k + i for i in range(3)]
            (root / "data" / "oppu" / "synth" / f"{task}.json").write_text(json.dumps(
                {"rows": users, "seconds": seconds[task], "steps": [16] * 3}))
    return {"metrics": metrics, "oppu": seconds}


def test_oppu_seconds_are_read_per_user_and_malformed_files_named(cfg, tmp_path):
    written = write_inputs(tmp_path, cfg)
    got = stage.read_oppu_seconds(cfg, tmp_path)
    assert [s for _, _, s in got] == written["oppu"]["LaMP-2M"] + written["oppu"]["LaMP-3"]
    assert got[0][:2] == (("synth", "LaMP-2M"), "LaMP-2M-u0")
    assert stage.read_p2p_seconds(cfg, tmp_path) is None  # the train stage has not run
    (tmp_path / "data" / "oppu" / "synth" / "LaMP-3.json").write_text(json.dumps({"rows": ["a"], "seconds": []}))
    with pytest.raises(InputError, match=r"LaMP-3\.json.*same length"):
        stage.read_oppu_seconds(cfg, tmp_path)


def test_the_train_stage_times_each_users_adapter_and_the_report_reads_it(cfg, tmp_path):
    """Fig. 4's P2P side is measured where the hypernetwork is (train.time_adapters); the report only reads it."""
    import numpy as np

    from p2p.hyper.hypernet import HyperNetwork, HyperShape
    from p2p.lora.hooks import LoraShape, TargetLayout
    from p2p.paths import Paths
    from p2p.stages.train import time_adapters

    shapes = {"q_proj": (8, 8), "v_proj": (8, 4)}
    layout = TargetLayout({k: (f"0.{k}", f"1.{k}") for k in shapes}, (0, 1), shapes)
    hyper = HyperNetwork(6, layout, LoraShape(("q_proj", "v_proj"), 2, 4.0, 0.0), HyperShape(8, 8, 1, 0.1),
                         ("LaMP-2M",))
    users = [("LaMP-2M", np.full(6, i, dtype=np.float32)) for i in range(4)]
    seconds = time_adapters(hyper, users)
    assert len(seconds) == 4 and all(0 < s < 1 for s in seconds) and hyper.training  # its mode is given back
    assert len(time_adapters(hyper, users * 50, budget_s=0.0)) == 1  # the budget stops the timing
    assert time_adapters(hyper, []) == []

    path = Paths(cfg, tmp_path).adapter_seconds
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"budget_s": 5.0, "users": [{"dataset": "synth", "task": "LaMP-2M", "user": f"u{i}",
                                                            "seconds": s} for i, s in enumerate(seconds)]}))
    assert stage.read_p2p_seconds(cfg, tmp_path) == seconds
    path.write_text(json.dumps({"users": [{"user": "u0", "seconds": "fast"}]}))
    with pytest.raises(InputError, match=r"adapter_seconds\.json.*'fast' is not a number"):
        stage.read_p2p_seconds(cfg, tmp_path)


def test_the_stage_writes_every_table_figure_and_the_index(cfg, tmp_path):
    written = write_inputs(tmp_path, cfg)
    rows = [row("rag", "LaMP-7", "ood_test", {"official/rouge1": 0.123}, **{"evaluate.retrieval_k": "8"})]
    report = stage.report_stage(cfg, tmp_path, rows, GRID)
    tables_dir, figures_dir = tmp_path / "reports" / "tables", tmp_path / "reports" / "figures"
    names = ["table1", "table2", "table1_seeds", "table2_seeds", "table3", "table4", "table5", "table5_by_task",
             "table8", "fig3_points", "fig6_points", "deployment"]
    assert sorted(p.name for p in tables_dir.iterdir()) == sorted(f"{n}.{e}" for n in names for e in ("csv", "md"))
    pngs = ["fig3_users.png", "fig4_deployment.png", "fig5_history_ood_test.png", "fig5_history_random_test.png",
            "fig6_retrieval_k.png", "table5_ablations.png"]
    assert sorted(p.name for p in figures_dir.iterdir()) == pngs
    for png in pngs:
        data = (figures_dir / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, png
    for name in names:
        md = (tables_dir / f"{name}.md").read_text()
        for fact in ("preset `cpu`", cfg.model.base_llm, cfg.model.embedder, "local model", "synth: LaMP-2M",
                     "Qwen2.5-7B-Instruct"):
            assert fact in md, (name, fact)
        assert parse_csv((tables_dir / f"{name}.csv").read_text()), name
    index = (tmp_path / "reports" / "README.md").read_text()
    assert all(f"tables/{n}.md" in index for n in names) and all(f"](figures/{p})" in index for p in pngs)
    assert index.count("![") == len(pngs)  # every figure shown in the index, not only linked
    assert "Fig. 4: P2P not timed" in index and "Table 3: ours not run" in index
    notes = index.split("## Notes")[1]
    assert "Fig. 3: Not run yet: diversity 0.25, diversity 0.5, diversity 1, quantity 0.2, quantity 0.6;" in notes
    assert "Fig. 6: Not run yet: P2P k=0, P2P k=4, P2P k=8, RAG k=0, RAG k=4, RAG k=8; `make paper`" in notes
    deploy = {r["method"]: r for r in parse_csv((tables_dir / "deployment.csv").read_text())}
    every = written["oppu"]["LaMP-2M"] + written["oppu"]["LaMP-3"]
    assert float(deploy["oppu"]["ours_seconds_per_user"]) == pytest.approx(sum(every) / len(every))
    assert float(deploy["p2p"]["paper_seconds_per_user"]) == paper.deployment()["p2p"]
    assert report.metrics["deploy/oppu_s_per_user"] == pytest.approx(sum(every) / len(every))
    splits = {(r["task"], r["split"]): r for r in parse_csv((tables_dir / "table8.csv").read_text())}
    assert splits[("synth/LaMP-2M", "ood_test")]["ours_queries"] == "95.0"
    assert float(splits[("synth/LaMP-2M", "ood_test")]["paper_users"]) == \
        paper.split_statistics()[("LaMP-2M", "ood_test")]["users"]


def test_the_stage_skips_fig4_without_oppu_and_says_so(cfg, tmp_path):
    write_inputs(tmp_path, cfg, oppu=False)
    stage.report_stage(cfg, tmp_path, [], GRID)
    assert not (tmp_path / "reports" / "figures" / "fig4_deployment.png").exists()
    assert "Fig. 4: skipped" in (tmp_path / "reports" / "README.md").read_text()


# --- reports/eval/summary.md ---------------------------------------------------------------------------------------


def test_eval_summary_shows_intervals_and_marks_resolved_differences():
    """Real scores of hand-made answers: on LaMP-2M P2P is right on every query and base on none (resolved for
    P2P); on LaMP-3 P2P is far off and oppu exact (lower MAE is better: resolved against P2P); rag equals P2P."""
    from p2p.evaluation.scores import MethodRun, SplitScorer
    from p2p.report.stage_reports import eval_summary

    owner = {f"q{i}": f"u{i // 2}" for i in range(8)}  # 4 users, 2 queries each
    metrics, comparisons = {"ood_test": {}}, {"ood_test": {}}
    answers = {"LaMP-2M": (["comedy"] * 8, {"p2p": ["comedy"] * 8, "base": ["action"] * 8, "rag": ["comedy"] * 8}),
               "LaMP-3": (["3"] * 8, {"p2p": ["5"] * 8, "base": ["4", "3"] * 4, "oppu": ["3"] * 8})}
    for task, (golds, runs) in answers.items():
        gold = {f"q{i}": g for i, g in enumerate(golds)}
        scorer = SplitScorer(task, gold, owner, 1000, 0)
        metrics["ood_test"][task] = {m: scorer.add(MethodRun(m, dict(zip(gold, preds)), 0.8,
                                                             {q: {"choice": a, "choice_norm": a}
                                                              for q, a in zip(gold, preds)}))
                                     for m, preds in runs.items()}
        comparisons["ood_test"][task] = scorer.comparisons()
    text = eval_summary(metrics, comparisons, "cpu")
    lines = text.splitlines()
    assert "| task | metric | queries / users | p2p | base | rag | oppu |" in lines
    assert "| LaMP-2M | choice/accuracy | 8 / 4 | 1.000 [1.00, 1.00] | 0.000 [0.00, 0.00] | 1.000 [1.00, 1.00] " \
           "| n/a |" in lines
    # base's MAE: errors 1, 0 per user -> 0.5 on every resample
    assert "| LaMP-3 | choice/mae | 8 / 4 | 2.000 [2.00, 2.00] | 0.500 [0.50, 0.50] | n/a | 0.000 [0.00, 0.00] |" \
        in lines
    assert "| task | metric | base | rag | oppu |" in lines
    assert "| LaMP-2M | choice/accuracy | **+1.000 [+1.000, +1.000] ▲** | +0.000 [+0.000, +0.000] | n/a |" in lines
    assert "| LaMP-3 | choice/mae | **+1.500 [+1.500, +1.500] ▼** | n/a | **+2.000 [+2.000, +2.000] ▼** |" in lines
    assert "excludes 0 in P2P's favour" in text and "evaluate.bootstrap_resamples" in text
