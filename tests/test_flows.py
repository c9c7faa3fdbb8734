"""The whole-pipeline flow and its scheduled deployment, without a server (tests/test_pipeline.py runs them on one)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_flow_runs_the_dvc_stages_in_dvc_order():
    from flows.pipeline import STAGES

    assert list(STAGES) == list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("kwargs, message", [({"stages": ["train", "tune"]}, "unknown stage"),
                                             ({"via_dvc": True, "preset": "smoke"}, "dvc exp run")])
def test_pipeline_flow_rejects_what_it_cannot_run(kwargs, message):
    from flows.pipeline import pipeline_flow

    with pytest.raises(ValueError, match=message):
        pipeline_flow.fn(**kwargs)  # the function itself: validation comes before any Prefect call


def test_scheduled_deployment_runs_dvc_on_the_cron():
    from flows.serve import DEPLOYMENT, deployment

    built = deployment("30 2 * * 1", timezone="Europe/Paris")
    assert built.name == DEPLOYMENT and built.parameters == {"via_dvc": True}
    [schedule] = built.schedules
    assert schedule.schedule.cron == "30 2 * * 1" and schedule.schedule.timezone == "Europe/Paris"
