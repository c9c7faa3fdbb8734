"""The privacy stage's report: reports/privacy/summary.md (the audit's tables) and tradeoff.png (the defence's price).

`metrics` is the stage's metrics.json: `tasks` -> "<dataset>/<task>" -> `splits` -> split -> per method the
attacks' figures (P2P's per noise scale), and `ood` -> scale -> P2P's OOD headline; `epsilon` -> scale -> embedding
width -> the Gaussian mechanism's epsilon at `delta`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from p2p.report.figures import panel_figure
from p2p.report.markdown import markdown_table, with_interval

OOD_SPLIT = "ood_test"
ATTACKS = (("attribute", "attribute"), ("linkage_regenerated", "linkage, regenerated: top-1 / top-5"),
           ("linkage_inverted", "linkage, inverted: top-1 / top-5"),
           ("membership", "membership AUC: loss / calibrated"))
#: What the trade-off figure draws of each attack: (key, label, the part of its figure that is the headline).
CURVES = (("attribute", "attribute", None), ("linkage_regenerated", "linkage regen. top-1", "top1"),
          ("linkage_inverted", "linkage inv. top-1", "top1"),
          ("membership", "membership AUC (calibrated)", "calibrated"))


def swept_split(splits: list[str]) -> str | None:
    """The split the noise sweep is audited on (the deployed scale is audited on every split): the OOD test users,
    whose P2P accuracy is the defence's price, else the first evaluated split."""
    return OOD_SPLIT if OOD_SPLIT in splits else next(iter(splits), None)


def _figure(figure: dict[str, Any] | None) -> str:
    return "n/a" if not figure else with_interval(figure["value"], figure.get("ci"))


def _cell(attack: str, figure: dict[str, Any] | None) -> str:
    if not figure:
        return "—"
    if attack == "attribute":
        return _figure(figure)
    if attack.startswith("linkage"):
        return f"{_figure(figure['top1'])} / {_figure(figure['top5'])}"
    return f"{_figure(figure['loss'])} / {_figure(figure['calibrated'])}"


def _epsilon(value: float) -> str:
    return "none (no noise)" if math.isinf(value) else f"{value:.3g}"


def scales(result: dict[str, Any]) -> list[str]:
    """The audited noise scales of a task's result, in increasing order."""
    return sorted(result["ood"], key=float)


def privacy_summary(metrics: dict[str, Any], deployed: float) -> str:
    """The audit as markdown: per task and split, what each attack recovers from P2P's adapters (at the deployed
    noise), OPPU's and the embedding; then the noise sweep beside P2P's OOD headline and each scale's epsilon."""
    lines = ["# Privacy audit: what a user's adapter reveals", "",
             "Attacks on the released adapter of each test user (docs/privacy.md says what each assumes). Figures "
             "with 95% user-bootstrap intervals; attribute: LaMP-2M share of the 2 preferred tags guessed (higher = "
             "more leaked), LaMP-3 error of the guessed rating bias (lower = more leaked); linkage: the share of "
             "adapters whose own profile ranks first (top 5) among the pool; membership: ROC AUC (0.5 = no leak).",
             f"P2P is audited at the deployed noise scale {deployed:g} (`privacy.noise.scale`); `constant` is the best "
             "guess without any adapter, `embedding` the same probe on the profile embedding itself.", ""]
    for name, result in metrics["tasks"].items():
        for split, figures in result["splits"].items():
            lines += [f"## {name}, {split}", "",
                      f"{figures['users']} test users; linkage pool {figures['pool']} profiles (chance top-1 "
                      f"{1 / figures['pool']:.4f}); membership {figures['membership_items']} items, half members.", ""]
            rows = []
            for method in ("p2p", "oppu", "embedding", "constant"):
                by_attack = figures.get(method)
                if method == "p2p" and by_attack:
                    by_attack = by_attack.get(str(deployed))
                if not by_attack:
                    continue
                rows.append([method, *(_cell(attack, by_attack.get(attack)) for attack, _ in ATTACKS)])
            lines += markdown_table(["adapter of", *(title for _, title in ATTACKS)], rows) + [""]
    lines += ["## The defence: noise scale against P2P's OOD accuracy", "",
              f"Gaussian noise on the profile embedding clipped to norm {metrics['clip']:g}·sqrt(dim). Epsilon: the "
              f"analytic Gaussian mechanism at delta {metrics['delta']:g} for changing a user's whole profile, per "
              "released adapter (repeated requests for the same profile get the same noise). It protects the test "
              "user's profile only: the hypernetwork's training users get no guarantee.", ""]
    for name, result in metrics["tasks"].items():
        ood = swept_split(list(result["splits"]))
        rows = []
        for scale in scales(result):
            headline = result["ood"].get(scale)
            p2p = (result["splits"].get(ood, {}).get("p2p") or {}).get(scale, {})
            epsilons = " / ".join(_epsilon(e) for e in metrics["epsilon"].get(scale, {}).values())
            rows.append([scale, epsilons, _figure(headline), *(_cell(a, p2p.get(a)) for a, _ in ATTACKS)])
        metric = next((h["metric"] for h in result["ood"].values() if h), "headline")
        lines += [f"### {name} ({ood} users)", ""]
        lines += markdown_table(["noise scale", "epsilon", f"P2P OOD {metric}", *(t for _, t in ATTACKS)], rows)
        lines += [""]
    return "\n".join(lines)


def privacy_figure(metrics: dict[str, Any], path: Path) -> Path:
    """Per task, over the noise scale: P2P's OOD headline and each attack's headline on the OOD users, with 95%
    intervals (attribute, linkage top-1 by regeneration and by inversion, calibrated membership AUC)."""
    panels: dict[str, dict[str, list]] = {}
    for name, result in metrics["tasks"].items():
        ood = swept_split(list(result["splits"]))
        by_scale = (result["splits"].get(ood) or {}).get("p2p") or {}
        series: dict[str, list] = {}
        for scale in scales(result):
            x = float(scale)
            headline = result["ood"].get(scale)
            if headline:
                series.setdefault(f"P2P OOD {headline['metric']}", []).append((x, headline["value"], headline["ci"]))
            figures = by_scale.get(scale, {})
            for key, label, pick in CURVES:
                figure = figures.get(key)
                if figure:
                    figure = figure[pick] if pick else figure
                    series.setdefault(label, []).append((x, figure["value"], figure["ci"]))
        panels[name] = series
    return panel_figure(panels, path, title="The noise defence: what the attacks recover and what P2P keeps",
                        xlabel="noise scale (per coordinate)",
                        ylabels="figure (95% interval)", columns=2)
