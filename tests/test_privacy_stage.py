"""The privacy stage in the shared smoke build (tests/smoke.py): every attack on every split and synthetic task, for
P2P at every audited noise scale, OPPU and the embedding, each figure with its interval and sample size; the audit's
P2P adapters are the ones evaluate_p2p answered with (its OOD accuracy at the deployed noise is evaluate's); the
report, the trade-off figure and the MLflow run."""

from __future__ import annotations

import json
import math

import pytest

from p2p.config import load_config

pytestmark = pytest.mark.slow


def _metrics(smoke_build) -> dict:
    return json.loads((smoke_build.repo / "reports/privacy/metrics.json").read_text())


def _interval_ok(figure: dict) -> bool:
    lo, hi = figure["ci"]
    return math.isfinite(figure["value"]) and lo - 1e-9 <= figure["value"] <= hi + 1e-9 and figure["n"] > 0


def test_every_attack_has_a_figure_with_an_interval_for_p2p_oppu_and_the_embedding(smoke_build):
    metrics = _metrics(smoke_build)
    cfg = load_config(smoke_build.repo / "params.yaml")
    sweep = sorted({*cfg.privacy.sweep, cfg.privacy.noise.scale})
    assert {"synth/LaMP-2M", "synth/LaMP-3", "synth/LaMP-7"} <= set(metrics["tasks"])
    for name, result in metrics["tasks"].items():
        assert set(result["splits"]) == {"random_test", "ood_test"}, name
        for split, figures in result["splits"].items():
            # the sweep on the OOD users (the trade-off's), the deployed scale on every split
            audited = sweep if split == "ood_test" else [cfg.privacy.noise.scale]
            assert sorted(figures["p2p"], key=float) == [str(s) for s in audited], (name, split)
            for scale, p2p in figures["p2p"].items():
                assert all(_interval_ok(p2p[k][part]) for k in ("linkage_regenerated", "linkage_inverted")
                           for part in ("top1", "top5")), (name, split, scale)
                assert all(_interval_ok(p2p["membership"][s]) for s in ("loss", "calibrated"))
                assert p2p["linkage_regenerated"]["pool"] == figures["pool"] > figures["users"]
            assert figures["p2p"]["0.0"]["linkage_regenerated"]["top1"]["value"] == 1.0  # deterministic, noise off
            oppu = figures["oppu"]
            assert _interval_ok(oppu["linkage_inverted"]["top1"]) and _interval_ok(oppu["membership"]["calibrated"])
            if name in ("synth/LaMP-2M", "synth/LaMP-3"):
                for method in ("embedding", "constant", "oppu"):
                    assert _interval_ok(figures[method]["attribute"]), (name, split, method)
                assert _interval_ok(figures["p2p"]["0.0"]["attribute"])
            else:
                assert "attribute" not in figures["p2p"]["0.0"]  # no planted label or number to infer


def test_the_audited_adapters_are_the_evaluated_ones(smoke_build):
    """P2P's OOD choice accuracy in the audit, without noise, is the evaluate stage's: same embeddings, same
    hypernetwork, same adapters."""
    metrics = _metrics(smoke_build)
    evaluated = json.loads((smoke_build.repo / "reports/eval/metrics.json").read_text())
    for name in ("synth/LaMP-2M", "synth/LaMP-3"):
        headline = metrics["tasks"][name]["ood"]["0.0"]
        key = headline["metric"]
        task = name.split("/")[1]
        assert headline["value"] == pytest.approx(evaluated["ood_test"][task]["p2p"][key], abs=1e-9)


def test_the_report_states_each_scales_guarantee_and_draws_the_trade_off(smoke_build):
    repo = smoke_build.repo
    metrics = _metrics(smoke_build)
    summary = (repo / "reports/privacy/summary.md").read_text()
    assert "## synth/LaMP-2M, ood_test" in summary and "| noise scale | epsilon |" in summary
    assert "none (no noise)" in summary  # scale 0 claims no guarantee
    epsilons = metrics["epsilon"]
    assert math.isinf(next(iter(epsilons["0.0"].values())))
    finite = [next(iter(e.values())) for s, e in sorted(epsilons.items(), key=lambda kv: float(kv[0])) if float(s)]
    assert finite == sorted(finite, reverse=True)  # more noise, smaller epsilon
    assert (repo / "reports/privacy/tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "Running stage 'privacy'" in smoke_build.output
