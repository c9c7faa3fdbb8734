"""The whole-pipeline flow and its scheduled deployment, without a server (on one: tests/test_pipeline.py)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_runs_the_stage_list_in_its_order_each_through_the_stage_shell():
    """The stage list is defined once (p2p/stages/__init__.py): dvc.yaml has exactly its stages, in its order, each
    running `python -m flows.stage NAME`, and the pipeline flow runs the same list."""
    from flows.pipeline import STAGES
    from p2p.stages import STAGES as STAGE_LIST

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == [stage.name for stage in STAGE_LIST] == list(STAGES)
    assert {name: body["cmd"] for name, body in dvc.items()} == {s.name: s.command for s in STAGE_LIST}


def test_every_stage_names_a_recipe_that_takes_the_config_the_root_and_a_recorder():
    import importlib
    import inspect

    from p2p.stages import STAGES, get_stage

    for stage in STAGES:
        recipe = getattr(importlib.import_module(f"p2p.stages.{stage.module}"), stage.entry)
        assert list(inspect.signature(recipe).parameters)[:3] == ["cfg", "root", "rec"], stage.name
        assert set(stage.args) <= set(inspect.signature(recipe).parameters), stage.name
    with pytest.raises(ValueError, match="unknown stage 'tune'"):
        get_stage("tune")


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


@pytest.mark.parametrize("argv, params, expected", [
    (["tune"], None, "error: stage 'tune': unknown stage 'tune'; the stages are fetch, prepare"),
    (["split"], "preset: nope\n", "error: stage 'split': "),
])
def test_the_stage_shell_says_a_bad_stage_or_params_in_one_line(tmp_path, argv, params, expected):
    """`python -m flows.stage` fails before any flow on an unknown stage or an unreadable params.yaml: one line on
    stderr, exit 2, no traceback."""
    import shutil
    import subprocess
    import sys

    for package in ("flows", "p2p"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "params.yaml").write_text(params if params is not None else (ROOT / "params.yaml").read_text())
    run = subprocess.run([sys.executable, "-m", "flows.stage", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith(expected) and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
