"""The user-cluster bootstrap: golden intervals checked by hand, paired differences, and the fast statistics equal to
recomputing each metric on the resampled queries."""

import math

import numpy as np
import pytest

from p2p.evaluation.scores import MethodRun, SplitScorer, flat_scores, interval_keys, method_resamples, method_scores
from p2p.tasks import get_task
from p2p.tasks.bootstrap import (
    paired_interval,
    percentile_interval,
    resample_indices,
    resample_weights,
    resampled_values,
    resolved,
    task_statistics,
)
from p2p.tasks.scoring import score


def run_of(method, preds, ids=None):
    ids = ids or [f"q{i}" for i in range(len(preds))]
    return MethodRun(method, dict(zip(ids, preds)), 1.0)


def golds_of(values):
    return {f"q{i}": v for i, v in enumerate(values)}


# --- resampling ---------------------------------------------------------------------------------------------------


def test_resamples_draw_whole_users_and_are_seeded():
    owners = ["a", "a", "b", "c", "c", "c"]
    weights = resample_weights(owners, 200, seed=7)
    assert weights.shape == (200, 6) and weights.dtype.kind == "i"
    # a user's queries are drawn together: equal weights within a user; each resample draws 3 users in all
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()
    assert (weights == resample_weights(owners, 200, seed=7)).all()  # a rerun reproduces the resamples
    assert (weights != resample_weights(owners, 200, seed=8)).any()
    assert resample_indices(np.array([2, 0, 1])).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="no queries"):
        resample_weights([], 10, seed=0)


def test_percentile_interval_by_hand():
    # 40 values 1..40; numpy's linear interpolation: position 0.025 * 39 = 0.975 -> 1.975, 0.975 * 39 = 38.025 ->
    # 39.025
    assert percentile_interval(np.arange(1, 41)) == pytest.approx([1.975, 39.025])
    assert percentile_interval(np.array([np.nan, 2.0, 2.0])) == [2.0, 2.0]  # a resample without a value is left out
    assert percentile_interval(np.array([np.nan, np.nan])) is None


# --- golden intervals ---------------------------------------------------------------------------------------------


def test_two_users_interval_by_hand():
    """User a: 1 query, right. User b: 3 queries, 1 right. A resample draws 2 users: aa (p = 1/4) -> accuracy 1;
    ab or ba (1/2) -> 2/4; bb (1/4) -> 2/6 = 1/3. With 2000 resamples both extremes occur (P(no aa) = 0.75^2000),
    and each has 25% > 2.5% of the mass, so the 95% interval is exactly [1/3, 1]. A query-level bootstrap would give
    [0, 1] (all 4 queries wrong has probability 1/16 > 2.5%)."""
    spec = get_task("LaMP-2M")
    preds, golds = ["comedy", "comedy", "action", "action"], ["comedy", "comedy", "comedy", "comedy"]
    weights = resample_weights(["a", "b", "b", "b"], 2000, seed=0)
    accuracy = task_statistics(spec, preds, golds, "official")["accuracy"](weights.astype(float))
    assert set(np.round(accuracy, 12)) == {1.0, 0.5, round(1 / 3, 12)}
    assert percentile_interval(accuracy) == pytest.approx([1 / 3, 1.0])


def test_one_user_every_resample_is_the_test_set():
    spec = get_task("LaMP-3")
    weights = resample_weights(["u"] * 3, 50, seed=1)
    mae = task_statistics(spec, ["1", "2", "5"], ["2", "2", "3"], "official")["mae"](weights.astype(float))
    assert percentile_interval(mae) == pytest.approx([1.0, 1.0])  # errors 1, 0, 2 in every resample


def test_paired_difference_is_resolved_where_the_separate_intervals_overlap():
    """Users a and b, 4 queries each. P2P: a 4/4 right, b 1/4; base: a 3/4, b 0/4. Separately P2P's interval is
    [0.25, 1] and base's [0, 0.75]: they overlap. But on every resample P2P is right on exactly one more query per
    drawn user, so the paired difference is 0.25 on every resample: [0.25, 0.25], resolved in P2P's favour."""
    spec = get_task("LaMP-1")
    golds = ["[1]"] * 8
    p2p = ["[1]"] * 4 + ["[1]", "[2]", "[2]", "[2]"]
    base = ["[1]"] * 3 + ["[2]"] + ["[2]"] * 4
    weights = resample_weights(["a"] * 4 + ["b"] * 4, 2000, seed=3).astype(float)
    ours = task_statistics(spec, p2p, golds, "official")["accuracy"](weights)
    theirs = task_statistics(spec, base, golds, "official")["accuracy"](weights)
    assert percentile_interval(ours) == pytest.approx([0.25, 1.0])
    assert percentile_interval(theirs) == pytest.approx([0.0, 0.75])
    diff = paired_interval(ours, theirs)
    assert diff == pytest.approx([0.25, 0.25]) and resolved(diff) == 1 and resolved([-0.3, -0.1]) == -1


def test_better_on_one_user_and_tied_on_the_other_is_not_resolved():
    """a: P2P right, base wrong; b: both right. Difference: aa 1, ab 1/2, bb 0 -> [0, 1], which holds 0."""
    spec = get_task("LaMP-1")
    weights = resample_weights(["a", "b"], 2000, seed=4).astype(float)
    stats = [task_statistics(spec, preds, ["[1]", "[1]"], "official")["accuracy"](weights)
             for preds in (["[1]", "[1]"], ["[2]", "[1]"])]
    diff = paired_interval(*stats)
    assert diff == pytest.approx([0.0, 1.0]) and resolved(diff) == 0 and resolved(None) == 0


# --- the fast statistics equal the metrics ------------------------------------------------------------------------

CASES = {
    # user a: exact, wrong case, unknown; user b: padded, wrong; user c: exact twice
    "LaMP-2M": (["a", "a", "a", "b", "b", "c", "c"],
                ["comedy", "Comedy", "romance!", " action\n", "comedy", "sci-fi", "action"],
                ["comedy", "comedy", "action", "action", "sci-fi", "sci-fi", "action"]),
    # user a: only unparsable answers (a P2P-style resample of a alone has no value); b: mixed; c: parsable
    "LaMP-3": (["a", "a", "b", "b", "b", "c"], ["none", "n/a", "4 stars", "2", "", "3.5"],
               ["5", "3", "4", "1", "2", "4"]),
    "LaMP-7": (["a", "b", "b", "c"], ["hello world", "man arrested after robbery", "", "good day all"],
               ["Hello, World!", "police arrest man after bank robbery", "a b c", "good day to you all"]),
}


@pytest.mark.parametrize("task", CASES)
@pytest.mark.parametrize("style", ["official", "p2p"])
def test_fast_statistics_equal_the_metric_recomputed_on_each_resample(task, style):
    spec = get_task(task)
    owners, preds, golds = CASES[task]
    weights = resample_weights(owners, 40, seed=11)
    stats = task_statistics(spec, preds, golds, style)
    keys = [k for k in score(spec, preds, golds, style) if not k.startswith("n_")]
    assert sorted(stats) == sorted(keys)  # every metric has a fast statistic
    fast = {k: stats[k](weights.astype(float)) for k in keys}
    undefined = 0
    for b, row in enumerate(weights):
        idx = resample_indices(row)
        expected = score(spec, [preds[i] for i in idx], [golds[i] for i in idx], style)
        for key in keys:
            if expected[key] is None:
                undefined += 1
                assert math.isnan(fast[key][b]), (key, b)
            else:
                assert fast[key][b] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), (key, b)
    if task == "LaMP-3" and style == "p2p":
        assert undefined > 0  # the case did draw resamples with no scored answer


def test_metrics_without_a_fast_statistic_are_recomputed_per_resample(caplog):
    spec = get_task("LaMP-2M")
    owners, preds, golds = CASES["LaMP-2M"]
    weights = resample_weights(owners, 25, seed=2)
    full = score(spec, preds, golds)

    def score_of(idx):
        return score(spec, [preds[i] for i in idx], [golds[i] for i in idx])

    fast = task_statistics(spec, preds, golds, "official")
    quick = resampled_values(full, weights, full, fast, score_of)
    slow = resampled_values(full, weights, full, {}, score_of)
    assert set(quick) == set(slow) == {"accuracy", "f1_macro"}
    for key in quick:
        assert quick[key] == pytest.approx(slow[key], rel=1e-12)
    # a fast statistic that disagrees with the metric on all queries is not trusted: recomputed, and logged
    wrong = {**fast, "accuracy": lambda w: np.zeros(len(w))}
    assert resampled_values(full, weights, full, wrong, score_of)["accuracy"] == pytest.approx(slow["accuracy"])
    assert "disagrees" in caplog.text


# --- the evaluate stage's scores ----------------------------------------------------------------------------------


def rating_scorer(resamples=300, seed=0):
    owners = {f"q{i}": u for i, u in enumerate(["a", "a", "b", "b", "c", "c", "d", "d"])}
    golds = golds_of(["5", "4", "1", "2", "3", "3", "4", "5"])
    scorer = SplitScorer("LaMP-3", golds, owners, resamples, seed)
    runs = {"p2p": ["5", "4", "1", "2", "3", "3", "4", "5"],  # all exact
            "base": ["1", "1", "5", "5", "1", "5", "1", "1"],  # far off everywhere
            "rag": ["5", "4", "1", "2", "3", "3", "4", "oops"]}  # one unparsable answer
    return scorer, {m: scorer.add(run_of(m, preds)) for m, preds in runs.items()}


def test_split_scores_carry_intervals_and_sample_size():
    scorer, scores = rating_scorer()
    p2p = scores["p2p"]
    assert list(p2p) == ["n", "ms_per_instance", "official/mae", "official/mae_ci95", "official/rmse",
                         "official/rmse_ci95", "p2p/mae", "p2p/mae_ci95", "p2p/rmse", "p2p/rmse_ci95", "p2p/n_scored",
                         "p2p/n_dropped", "n_queries", "n_users"]
    assert (p2p["n_queries"], p2p["n_users"]) == (8, 4)
    assert p2p["official/mae"] == 0.0 and p2p["official/mae_ci95"] == [0.0, 0.0]
    lo, hi = scores["base"]["official/mae_ci95"]
    assert lo <= scores["base"]["official/mae"] <= hi and lo < hi
    compared = scorer.comparisons()
    assert sorted(compared) == ["p2p-base", "p2p-rag"]
    assert sorted(compared["p2p-base"]) == ["official/mae", "official/rmse", "p2p/mae", "p2p/rmse"]
    mae = compared["p2p-base"]["official/mae"]
    assert mae["diff"] == pytest.approx(-scores["base"]["official/mae"]) and resolved(mae["ci95"]) == -1
    # rag differs from P2P only on user d's second query (official: "oops" -> 1.0 against gold 5, error 4): with d
    # drawn k of 4 times the difference is -4k/8. P(k = 0) = (3/4)^4 = 32% and P(k >= 3) = 13/256 = 5.1% but
    # P(k = 4) = 1/256 < 2.5%, so the interval is [-1.5, 0]: it holds 0, not resolved
    assert compared["p2p-rag"]["official/mae"]["ci95"] == pytest.approx([-1.5, 0.0])
    assert resolved(compared["p2p-rag"]["official/mae"]["ci95"]) == 0
    assert compared["p2p-rag"]["p2p/mae"] == {"diff": 0.0, "ci95": [0.0, 0.0]}  # P2P style drops "oops"


def test_intervals_are_reproducible_and_depend_on_the_seed():
    scorer, first = rating_scorer(seed=5)
    again, second = rating_scorer(seed=5)
    other, _ = rating_scorer(seed=6)
    assert first == second and scorer.comparisons() == again.comparisons()
    base = scorer.resampled["base"]["official/mae"]
    assert (base == again.resampled["base"]["official/mae"]).all()
    assert (base != other.resampled["base"]["official/mae"]).any()


def test_every_metric_key_gets_an_interval_but_counts_and_times():
    scores = {"n": 4.0, "ms_per_instance": 3.0, "official/accuracy": 0.5, "p2p/n_scored": 3, "choice/accuracy": 0.2,
              "official/accuracy_ci95": [0.1, 0.9]}
    assert interval_keys(scores) == ["official/accuracy", "choice/accuracy"]


def test_a_future_metric_is_bootstrapped_through_method_scores(monkeypatch):
    """A metric key method_scores gains later (here `extra/share_comedy`) gets an interval with no bootstrap code:
    recomputed on each resample."""
    import p2p.evaluation.scores as evaluation

    real = evaluation.method_scores

    def with_extra(task, run, golds):
        out = real(task, run, golds)
        out["extra/share_comedy"] = sum(p == "comedy" for p in run.predictions.values()) / len(run.predictions)
        return out

    monkeypatch.setattr(evaluation, "method_scores", with_extra)
    owners, preds, golds = CASES["LaMP-2M"]
    run, gold = run_of("p2p", preds), golds_of(golds)
    weights = resample_weights(owners, 30, seed=0)
    values = method_resamples("LaMP-2M", run, gold, weights)
    assert "extra/share_comedy" in values
    comedy = np.array([p == "comedy" for p in preds], dtype=float)
    assert values["extra/share_comedy"] == pytest.approx(weights @ comedy / weights.sum(axis=1))
    # the known metrics still equal method_scores on the resample
    idx = resample_indices(weights[0])
    sub = {str(j): q for j, q in enumerate(f"q{i}" for i in idx)}
    expected = real("LaMP-2M", MethodRun("p2p", {k: run.predictions[q] for k, q in sub.items()}, None),
                    {k: gold[q] for k, q in sub.items()})
    assert values["official/f1_macro"][0] == pytest.approx(expected["official/f1_macro"])


def test_open_ended_tasks_get_sample_sizes_and_no_interval():
    scorer = SplitScorer("PersonalReddit", golds_of(["x", "y"]), {"q0": "a", "q1": "b"}, 50, 0)
    scores = scorer.add(run_of("p2p", ["u", "v"]))
    scorer.add(run_of("base", ["u", "v"]))
    assert scores == {"n": 2.0, "ms_per_instance": 500.0, "n_queries": 2, "n_users": 2}
    assert scorer.comparisons() == {}


def test_mlflow_gets_floats_only():
    flat = flat_scores({"n": 4.0, "official/mae": 0.5, "official/mae_ci95": [0.25, 0.75], "p2p/mae": None,
                        "p2p/mae_ci95": None, "n_users": 2})
    assert flat == {"n": 4.0, "official/mae": 0.5, "official/mae_ci95_lo": 0.25, "official/mae_ci95_hi": 0.75,
                    "p2p/mae": pytest.approx(float("nan"), nan_ok=True),
                    "p2p/mae_ci95_lo": pytest.approx(float("nan"), nan_ok=True),
                    "p2p/mae_ci95_hi": pytest.approx(float("nan"), nan_ok=True), "n_users": 2.0}
    assert all(type(v) is float for v in flat.values())


def test_method_scores_are_unchanged_by_the_bootstrap():
    owners, preds, golds = CASES["LaMP-2M"]
    scorer = SplitScorer("LaMP-2M", golds_of(golds), dict(zip(golds_of(golds), owners)), 20, 0)
    scores = scorer.add(run_of("p2p", preds))
    plain = method_scores("LaMP-2M", run_of("p2p", preds), golds_of(golds))
    assert {k: v for k, v in scores.items() if k in plain} == plain


def test_the_evaluate_stages_write_intervals_and_comparisons_the_report_stage_reads(tmp_path, monkeypatch):
    """Each method's stage (`answer`, models and data stubbed) writes its answers; the aggregating stage
    scores every method x split with intervals over the same resamples (seeded: a rerun writes the same files), MLflow's
    callback sees floats only, and the report stage reads the metrics.json it writes."""
    import json
    from pathlib import Path

    from p2p.config import SourceConfig, load_config
    from p2p.data.records import Query, UserRecord
    from p2p.evaluation.answers import TaskInputs
    from p2p.paths import TaskData
    from p2p.stages import evaluate as stage
    from p2p.stages.recorder import Recorder
    from p2p.stages.report import read_eval_metrics

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "params.yaml", preset="smoke")
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"sources": [SourceConfig(dataset="lamp", tasks=["LaMP-2M"])]}),
        "evaluate": cfg.evaluate.model_copy(update={"methods": ["base", "rag", "p2p"], "bootstrap_resamples": 200})})
    users = [f"u{i}" for i in range(6)]
    records = [UserRecord(u, "LaMP-2M", [{"description": "a film", "tag": "comedy"}] * (i + 1),
                          [Query(f"{u}-q{j}", "which tag?", "comedy" if j else "action") for j in range(3)])
               for i, u in enumerate(users)]
    data = TaskData("lamp", "LaMP-2M", records, {}, {}, {"random_test": users[:3], "ood_test": users[3:]})
    monkeypatch.setattr(stage, "load_models", lambda cfg, root, methods: None)
    monkeypatch.setattr(stage, "task_inputs", lambda cfg, root, dataset, task, summaries=False, embeddings=False:
                        TaskInputs(data, {}, tmp_path, tmp_path))
    # base: right on each user's first query only; rag: right on 1, 2 or 3 of user i's queries (i % 3 + 1)
    answer = {"base": lambda q: "action", "p2p": lambda q: q.output,
              "rag": lambda q: q.output if int(q.id[-1]) <= int(q.id[1]) % 3 else "sci-fi"}

    def run(method, models, inputs, split, settings):
        chosen = set(inputs.data.split[split])
        answers = {q.id: answer[method](q) for r in inputs.data.records if r.user_id in chosen for q in r.queries}
        return MethodRun(method, answers, 0.5, {i: {"choice": a, "choice_norm": a} for i, a in answers.items()})

    for method in ("base", "rag", "p2p", "oppu"):  # oppu is not configured: its folder says so, nothing else
        stage.answer(cfg, tmp_path, Recorder(), method, run=run)
    assert sorted(p.name for p in (tmp_path / "data/eval/oppu").iterdir()) == ["method.json"]
    assert (tmp_path / "data/eval/p2p/ood_test/lamp/LaMP-2M.json").is_file()
    logged = []
    metrics, comparisons, buckets, unseen = stage.aggregate_stage(
        cfg, tmp_path, on_result=lambda *args: logged.append(flat_scores(args[-1])))
    assert unseen == {}  # the planted preferences exist on the synthetic benchmark only
    assert (tmp_path / "data/eval/reference/golds/ood_test/lamp/LaMP-2M.json").is_file()
    p2p = metrics["ood_test"]["LaMP-2M"]["p2p"]
    assert p2p["official/accuracy"] == 1.0 and p2p["official/accuracy_ci95"] == [1.0, 1.0]
    assert (p2p["n_queries"], p2p["n_users"]) == (9, 3)
    # base is right on 1 of 3 queries of every user: 1/3 on every resample, so P2P's +2/3 is resolved
    base = comparisons["ood_test"]["LaMP-2M"]["p2p-base"]["official/accuracy"]
    assert base["diff"] == pytest.approx(2 / 3) and base["ci95"] == pytest.approx([2 / 3, 2 / 3])
    assert sorted(comparisons["random_test"]["LaMP-2M"]) == ["p2p-base", "p2p-rag"]
    assert len(logged) == 6 and all(type(v) is float for scores in logged for v in scores.values())
    assert "official/accuracy_ci95_lo" in logged[0]
    written = stage.write_reports(metrics, comparisons, buckets, unseen, "smoke", tmp_path / "first")
    assert [p.name for p in written] == ["metrics.json", "headline.json", "comparisons.json", "unseen.json",
                                         "summary.md", "history_buckets.csv"]
    headline = json.loads((tmp_path / "first" / "headline.json").read_text())  # what `dvc metrics show` reads
    assert headline["random_test"]["LaMP-2M"] == {"p2p choice/accuracy": 1.0, "ci95_lo": 1.0, "ci95_hi": 1.0}
    assert json.loads((tmp_path / "first" / "comparisons.json").read_text()) == comparisons
    summary = (tmp_path / "first" / "summary.md").read_text()
    rag = metrics["ood_test"]["LaMP-2M"]["rag"]["official/accuracy_ci95"]
    assert rag[0] < 2 / 3 < rag[1]  # users right on 1, 2 and 3 of 3: the interval has width
    assert f"| LaMP-2M | choice/accuracy | 9 / 3 | 0.333 [0.33, 0.33] | 0.667 [{rag[0]:.2f}, {rag[1]:.2f}] | " \
           "1.000 [1.00, 1.00] |" in summary
    assert "**+0.667 [+0.667, +0.667] ▲**" in summary
    read = read_eval_metrics(tmp_path / "first" / "metrics.json", cfg)
    assert read["ood_test"][("lamp", "LaMP-2M")]["p2p"]["official/accuracy_ci95"] == [1.0, 1.0]
    again = stage.aggregate_stage(cfg, tmp_path)
    stage.write_reports(*again, "smoke", tmp_path / "second")
    for name in ("metrics.json", "comparisons.json", "summary.md"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    # a method whose stage has not run is named, with the command that runs it
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"methods": ["base", "pag", "p2p"]})})
    with pytest.raises(ValueError, match="dvc repro evaluate_pag"):
        stage.aggregate_stage(cfg, tmp_path)
