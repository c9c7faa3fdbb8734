"""MLflow layout of the pipeline: experiments per (preset, split), a parent run per pipeline run, child runs.

- Experiment `<tracking.experiment>/<preset>`: per pipeline run one parent run, `pipeline <commit> <preset> <start>`,
  whose children are the stage runs (fetch ... report), each with the whole resolved config as params.
- Experiment `<tracking.experiment>/<preset>/<split>` (random_test, ood_test): per pipeline run a parent of the same
  name whose children are the method x task results of that split (`<method>/<task>`, stage evaluate or judge) with
  the same metric keys, the task's headline first (`headline/...`, the one the compare view plots), so MLflow's
  compare view lines methods up. The parent's description links the compare view of each task's methods.

Lifecycle: a stage run ends with its stage, FINISHED or FAILED (KILLED when interrupted); a parent is RUNNING while
any of its children is and ends with its last one (FAILED when that stage, or the newest run of any stage, failed).
A stage run still RUNNING in the same pipeline run when its stage starts again was killed: it is marked KILLED.

A pipeline run is keyed by `P2P_PIPELINE_RUN` when set (the Prefect pipeline flow sets it to its flow-run id);
otherwise by a hash of the resolved config and git commit, so the stages of one `dvc repro` share a parent. Every
run is tagged with the git commit, the DVC stage (and experiment) it ran under and the Prefect flow-run id.
The store is `tracking.uri` (a relative sqlite path is resolved against the project root, so every stage writes to
the same file wherever it runs from); MLFLOW_TRACKING_URI overrides it, e.g. to log to a shared server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2p.config import Config, load_config
from p2p.methods import PROPOSED
from p2p.paths import shared_root
from p2p.report.runs import ABLATION_PARAMS, EvalRow
from p2p.tasks import headline_key

_SQLITE = "sqlite:///"
PIPELINE_RUN_ENV = "P2P_PIPELINE_RUN"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the description the UI shows (and edits) for an experiment or a run
#: Opens the experiment in MLflow 3's "Machine learning" view (runs, charts, compare), not the GenAI one (traces).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
#: MLflow key prefix <-> reports/eval/metrics.json prefix: the paper's metric variant would read as the method P2P.
PAPER, PAPER_STYLE = "paper/", "p2p/"
HEADLINE = "headline/"
#: On each method's result run: P2P's headline minus this method's, paired over the same user resamples.
P2P_DIFF = f"{HEADLINE}{PROPOSED}_minus_this"
_CI = ("_ci95_lo", "_ci95_hi")


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative `sqlite:///file.db` absolute under `root`; leave other URIs alone."""
    if uri.startswith(_SQLITE) and not uri[len(_SQLITE):].startswith("/"):
        return _SQLITE + str((root / uri[len(_SQLITE):]).resolve())
    return uri


def tracking_uri(config: Config, root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(config.tracking.uri, shared_root(root))


def experiment_name(config: Config, split: str | None = None) -> str:
    """`p2p/<preset>` for stage runs, `p2p/<preset>/<split>` for the method x task results of one split."""
    return f"{config.tracking.experiment}/{config.preset}" + (f"/{split}" if split else "")


def experiment_description(config: Config, split: str | None = None) -> str:
    """What an experiment holds and how to compare in it (its `mlflow.note.content`)."""
    if split is None:
        return (f"Stage runs of the `{config.preset}` preset. One parent per pipeline run (`pipeline <commit> "
                f"<preset> <start>`, tag `pipeline_run`), one child per stage (fetch ... report) with the whole "
                f"resolved config as params, the stage's metrics and artifacts. Compare a stage across pipeline "
                f"runs: filter `attributes.run_name = 'train'`, select the runs, Compare. The methods are compared "
                f"in `{experiment_name(config, 'ood_test')}` and `{experiment_name(config, 'random_test')}`.")
    return (f"Every method x task result on the `{split}` users of the `{config.preset}` preset: per pipeline run "
            f"a parent (`pipeline <commit> <preset> <start>`) whose description links each task's comparison, and "
            f"one run per method x task (`<method>/<task>`; stage evaluate, or judge for the judged tasks). Compare "
            f"the methods on a task: filter `params.task = 'LaMP-2M' and tags.stage = 'evaluate'` (add `and "
            f"tags.pipeline_run = '<key>'` for one pipeline run), select the runs, Compare. First key: the task's "
            f"headline metric `headline/<metric>` with its 95% interval over test users (`_ci95_lo`, `_ci95_hi`), "
            f"then `{P2P_DIFF}`: P2P's headline minus this method's with its paired interval (for errors such as "
            f"MAE, negative favours P2P). Metric prefixes: `official/` the official LaMP metrics, `choice/` "
            f"choice-scored labels, `paper/` the variant of the authors' code (weighted F1, lower-cased labels).")


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def pipeline_key(config: Config, commit: str | None) -> str:
    """The pipeline run a stage belongs to: `P2P_PIPELINE_RUN`, else a hash of the resolved config and commit."""
    explicit = os.environ.get(PIPELINE_RUN_ENV)
    if explicit:
        return explicit
    blob = json.dumps(config.flat(), sort_keys=True, default=str) + (commit or "")
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pipeline_name(commit: str | None, preset: str, started_ms: int) -> str:
    """The readable name of a pipeline run's parents: `pipeline <commit7> <preset> <start, UTC>`."""
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started_ms / 1000))
    return f"pipeline {(commit or 'no-git')[:7]} {preset} {start}"


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
    except ImportError:
        return None
    run_id = flow_run.id
    return str(run_id) if run_id else None


#: Where the MLflow UI is (`make mlflow-ui`): the Prefect flow run's link to its MLflow run points there.
MLFLOW_UI_ENV, MLFLOW_UI_DEFAULT = "P2P_MLFLOW_UI", "http://127.0.0.1:5000"


def _link_prefect(client: Any, run: Any) -> None:
    """Inside a Prefect flow run, link the two ways: the MLflow run gets the flow run's dashboard address (tag
    `prefect_flow_run_url`), the flow run a link artifact `mlflow-run` to the MLflow run's page."""
    try:
        from prefect.artifacts import create_link_artifact
        from prefect.runtime import flow_run
        from prefect.settings import PREFECT_API_URL
    except ImportError:
        return
    api = PREFECT_API_URL.value()
    if not flow_run.id or not api:
        return
    client.set_tag(run.run_id, "prefect_flow_run_url", f"{api.removesuffix('/api')}/runs/flow-run/{flow_run.id}")
    ui = mlflow_ui()
    try:
        create_link_artifact(f"{ui}/#/experiments/{run.experiment_id}/runs/{run.run_id}",
                             link_text="this stage's MLflow run", key="mlflow-run",
                             description=f"MLflow run {run.run_id} (the MLflow UI: make mlflow-ui)")
    except Exception as err:  # a link is not worth failing a stage for
        logging.getLogger("p2p.tracking").warning("no MLflow link on the Prefect flow run: %s", err)


def context_tags(stage: str, config: Config, root: Path) -> dict[str, str]:
    """Tags every run of this stage execution carries: what ran, where it came from, which pipeline run."""
    commit = _git_commit(root)
    tags = {"stage": stage, "preset": config.preset, "pipeline_run": pipeline_key(config, commit),
            "dvc_stage": os.environ.get("DVC_STAGE", "")}
    optional = {"git_commit": commit, "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
                "varied": varied_params(config, root), "prefect_flow_run_id": _prefect_flow_run_id()}
    tags.update({k: v for k, v in optional.items() if v})
    return tags


def varied_params(config: Config, root: Path) -> str | None:
    """In a DVC experiment (`dvc exp run -S ...`): the settings it changed from its baseline commit's params.yaml at
    the same preset, as `key=value, ...` (MLflow's compare view lines a table's rows up by this tag); else None."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if not baseline:
        return None
    try:
        text = subprocess.run(["git", "show", f"{baseline}:params.yaml"], cwd=root, capture_output=True, text=True,
                              check=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "params.yaml").write_text(text)
            before = load_config(Path(tmp) / "params.yaml", preset=config.preset).flat()
    except (OSError, subprocess.CalledProcessError, ValueError) as err:
        logging.getLogger("p2p.tracking").warning("no `varied` tag: baseline params unreadable (%s)", err)
        return None
    now = config.flat()
    return ", ".join(f"{k}={now[k]}" for k in sorted(now) if before.get(k) != now[k]) or "(none)"


def _experiment_id(client: Any, name: str, root: Path, uri: str, description: str) -> str:
    """The experiment's id, created on first use; its description and kind are (re)set every time, so they follow
    the code."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Artifacts beside the database, not in whatever directory the stage happened to run from.
        location = (root / "mlartifacts").as_uri() if uri.startswith(_SQLITE) else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by a concurrent stage
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    client.set_experiment_tag(experiment_id, NOTE_TAG, description)
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    return experiment_id


def _open_parent(client: Any, experiment_id: str, tags: Mapping[str, str], name: str | None = None) -> Any:
    """The pipeline run's parent in this experiment, RUNNING again if an earlier stage had ended it; created (named
    `name`, else `pipeline_name` of now) by the first stage that needs it."""
    key = tags["pipeline_run"]
    found = client.search_runs([experiment_id], f"tags.kind = 'pipeline' and tags.pipeline_run = '{key}'",
                               max_results=1)
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info
    keep = ("preset", "pipeline_run", "git_commit", "dvc_experiment")
    name = name or pipeline_name(tags.get("git_commit"), tags["preset"], int(time.time() * 1000))
    return client.create_run(experiment_id, run_name=name,
                             tags={"kind": "pipeline", **{k: tags[k] for k in keep if k in tags}}).info


def _children(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    return client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=50000,
                              order_by=["attributes.start_time ASC"])


def _end_orphans(client: Any, experiment_id: str, parent_id: str, stage: str) -> None:
    """Mark KILLED the runs of `stage` in this pipeline run still RUNNING: their process died without ending them
    (SIGKILL, out of memory), or this stage could not be starting again."""
    for run in _children(client, experiment_id, parent_id):
        if run.info.run_name == stage and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def _close_parent(client: Any, experiment_id: str, parent_id: str, outcome: str) -> None:
    """End the parent with its last child: nothing when a child still runs; else FAILED when the ending stage's
    `outcome` or the newest run of any child name failed, FINISHED otherwise."""
    newest = {run.info.run_name: run for run in _children(client, experiment_id, parent_id)}
    if any(run.info.status == "RUNNING" for run in newest.values()):
        return
    failed = outcome != "FINISHED" or any(run.info.status in ("FAILED", "KILLED") for run in newest.values())
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")


def _describe_results(client: Any, experiment_id: str, parent_id: str) -> None:
    """The results parent's description: per stage and task, a link to the compare view of its methods' newest
    runs (a rerun of the same pipeline run logs them again)."""
    newest = {(run.data.tags.get("stage", ""), run.info.run_name): run
              for run in _children(client, experiment_id, parent_id)}
    groups: dict[tuple[str, str], list[str]] = {}
    for (stage, _), run in newest.items():
        task = run.data.params.get("task")
        if task:
            groups.setdefault((stage, task), []).append(run.info.run_id)
    lines = ["Compare the methods of one task (the view plots the headline metric first):", ""]
    lines += [f"- [{stage} {task}: {len(ids)} methods]({compare_url(ids, experiment_id)})"
              for (stage, task), ids in sorted(groups.items())]
    client.set_tag(parent_id, NOTE_TAG, "\n".join(lines))


def mlflow_ui() -> str:
    """Where the MLflow UI is ($P2P_MLFLOW_UI, else `make mlflow-ui`'s address): links in artifacts and reports."""
    return os.environ.get(MLFLOW_UI_ENV, MLFLOW_UI_DEFAULT).rstrip("/")


def compare_url(run_ids: list[str], experiment_id: str) -> str:
    """The path of MLflow's compare view of these runs, after the server's address (`http://127.0.0.1:5000/`)."""
    return f"#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([experiment_id])}".replace(" ", "")


def _numeric(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def mlflow_key(key: str) -> str:
    """A reports/eval/metrics.json key as MLflow holds it: `p2p/...` (the paper's variant) becomes `paper/...`."""
    return PAPER + key[len(PAPER_STYLE):] if key.startswith(PAPER_STYLE) else key


def metrics_key(key: str) -> str:
    """The inverse of `mlflow_key`."""
    return PAPER_STYLE + key[len(PAPER):] if key.startswith(PAPER) else key


def result_metrics(task: str, method: str, scores: Mapping[str, float],
                   comparisons: Mapping[str, Any] | None = None) -> dict[str, float]:
    """One method x task result as MLflow metrics, in the order the compare view offers them: the task's headline
    (`headline/<headline_key>`) and its interval; P2P's paired difference from `method` on it with its interval
    (`comparisons`: the task's entry of comparisons.json, `p2p-<method>` -> metric -> {diff, ci95}; NaN on P2P's
    own run, so every run of the task has the same keys); then every score (`scores`: flat, intervals as
    `_ci95_lo`/`_hi`) under its `mlflow_key`."""
    key = headline_key(task)
    out = {HEADLINE + key: scores.get(key, float("nan"))}
    out |= {HEADLINE + key + suffix: scores[key + suffix] for suffix in _CI if key + suffix in scores}
    if comparisons:
        compared = comparisons.get(f"{PROPOSED}-{method}", {}).get(key) or {}
        diff, (lo, hi) = compared.get("diff"), compared.get("ci95") or (None, None)
        out |= {P2P_DIFF + suffix: float("nan") if value is None else float(value)
                for suffix, value in (("", diff), (_CI[0], lo), (_CI[1], hi))}
    return out | {mlflow_key(k): v for k, v in scores.items()}


class StageRun:
    """The active MLflow run of one stage; thin wrappers that keep metric names flat and values numeric."""

    def __init__(self, mlflow_module: Any, run: Any, config: Config, root: Path, uri: str, tags: dict[str, str],
                 pipeline: str):
        self._mlflow, self.run = mlflow_module, run
        self._config, self._root, self._uri, self._tags, self._pipeline = config, root, uri, tags, pipeline
        self._client = mlflow_module.MlflowClient(tracking_uri=uri)
        self._splits: dict[str, str] = {}  # split -> its experiment id
        self.result_parents: dict[str, str] = {}  # experiment id -> this pipeline run's parent there

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        numeric = _numeric(metrics, prefix)
        if numeric:
            self._mlflow.log_metrics(numeric, step=step)

    def run_tag(self, key: str, value: str) -> None:
        self._mlflow.set_tag(key, value[:5000])

    def log_result(self, split: str, name: str, metrics: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """One method x task result as a child of this pipeline run's parent in the `<preset>/<split>` experiment,
        tagged `comparable_on` (what its numbers are comparable on). Metric keys are the same for every method of a
        task, in the order given, so MLflow's compare view lines them up and plots the first."""
        from mlflow.entities import Metric, Param

        if split not in self._splits:
            experiment_id = _experiment_id(self._client, experiment_name(self._config, split), self._root, self._uri,
                                           experiment_description(self._config, split))
            self._splits[split] = experiment_id
            self.result_parents[experiment_id] = _open_parent(self._client, experiment_id, self._tags,
                                                              self._pipeline).run_id
        experiment_id = self._splits[split]
        child = self._client.create_run(experiment_id, run_name=name,
                                        tags={**self._tags, PARENT_TAG: self.result_parents[experiment_id],
                                              "split": split, "stage_run_id": self.run_id,
                                              "comparable_on": comparable_on(self._config)})
        millis = child.info.start_time
        self._client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, v, millis, 0) for k, v in _numeric(metrics).items()],
            params=[Param(k, str(v)[:500]) for k, v in params.items()])
        self._client.set_terminated(child.info.run_id, "FINISHED")
        return child.info.run_id

    def log_torch_model(self, model: Any, name: str, code_dir: Path) -> None:
        """An MLflow model (pytorch flavor) of `model`, with the package that defines its class, so
        `mlflow.pytorch.load_model("runs:/<id>/<name>")` works in a checkout that lacks it. Requirements are given,
        not inferred (inference imports the model in a subprocess: slow, and it may look for a network)."""
        import torch

        self._mlflow.pytorch.log_model(model, name=name, code_paths=[str(code_dir)], serialization_format="pickle",
                                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path)


@contextlib.contextmanager
def stage_run(stage: str, config: Config, root: str | os.PathLike = ".", **tags: str) -> Iterator[StageRun]:
    """Open the stage's MLflow run as a child of its pipeline run, log the whole resolved config as params, and tag
    it (preset, git commit, DVC stage, Prefect flow run) so runs of different presets and versions stay comparable.
    On the way out, whatever the outcome, the run ends (FINISHED, FAILED on an error, KILLED on an interrupt) and so
    does every parent whose last running child it was."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root).resolve()
    uri = tracking_uri(config, root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_tags = {**context_tags(stage, config, root), **tags}
    experiment_id = _experiment_id(client, experiment_name(config), root, uri, experiment_description(config))
    parent = _open_parent(client, experiment_id, run_tags)
    _end_orphans(client, experiment_id, parent.run_id, stage)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent.run_id, tags=run_tags)
    _link_prefect(client, run.info)
    current = StageRun(mlflow, run, config, root, uri, run_tags, parent.run_name)
    outcome = "FAILED"
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in config.flat().items()})
        yield current
        outcome = "FINISHED"
    except BaseException as error:  # an interrupt (KeyboardInterrupt, Prefect's TerminationSignal) is no failure
        outcome = "FAILED" if isinstance(error, Exception) else "KILLED"
        raise
    finally:
        mlflow.end_run(outcome)
        for results, results_parent in current.result_parents.items():
            _describe_results(client, results, results_parent)
            _close_parent(client, results, results_parent, outcome)
        _close_parent(client, experiment_id, parent.run_id, outcome)


# --- evaluate results, as the report stage reads them back -----------------------------------------------------


def comparable_on(config: Config) -> str:
    """What a result's numbers are comparable on, as a short digest (a tag): the data settings and the base model.
    The stage run (tag `stage_run_id`) holds each of them as a param."""
    flat = config.flat()
    keys = sorted(k for k in flat if k.startswith("data.") and not k.endswith("_dir")) + ["model.base_llm"]
    return _digest(json.dumps({k: flat[k] for k in keys}, sort_keys=True, default=str))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def result_params(config: Config) -> dict[str, str]:
    """The ablation params every evaluate result run records (Tables 4-5, Figs. 3 and 6 read them back)."""
    flat = config.flat()
    return {name: str(flat[name]) for name in ABLATION_PARAMS}


def collect_rows(config: Config, root: Path) -> list[EvalRow]:
    """Every evaluate result of this preset in the MLflow store that ran on the same data and base model, with the
    keys of reports/eval/metrics.json (`metrics_key`; the `headline/` copies left out)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(config, root))
    wanted = comparable_on(config)
    rows = []
    for split in config.evaluate.splits:
        experiment = client.get_experiment_by_name(experiment_name(config, split))
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'", max_results=50000):
            params = run.data.params
            # Runs logged before `comparable_on` became a tag hold the whole JSON as a param.
            found = run.data.tags.get("comparable_on") or _digest(params.get("comparable_on", ""))
            if found != wanted or "method" not in params:
                continue
            rows.append(EvalRow(method=params["method"], task=params["task"], split=split,
                                # a param newer than the run was at its default then (None: train.seed, max_users)
                                params={name: params.get(name, "None") for name in ABLATION_PARAMS},
                                metrics={metrics_key(k): v for k, v in run.data.metrics.items()
                                         if not k.startswith(HEADLINE)},
                                run_id=run.info.run_id, start_time=run.info.start_time or 0,
                                experiment_id=experiment.experiment_id))
    return rows
