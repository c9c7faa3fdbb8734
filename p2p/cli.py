"""`p2p` command line: thin commands over the library. Run `p2p --help`.

Every command reads params.yaml (or --params) for its defaults. Bad input ends with one line on stderr,
`error: <file>: record <r>: field '<f>': <what>`, and exit status 2; no partial output file is left behind. So do a
bad config, unreadable or unwritable paths, corrupt weights and missing hardware. An output directory that holds
files the command did not write is refused the same way (`--force` replaces it whole). The commands that write
pipeline outputs hold the project's lock (p2p/lock.py): a second writer, or a running `dvc repro`, is refused too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from p2p.config import Config, load_config
from p2p.data import synth
from p2p.data.catalog import keeping_steps
from p2p.data.download import fetch
from p2p.data.records import read_records
from p2p.failures import EXPECTED, message
from p2p.io import InputError, read_text, write_json
from p2p.lock import project_lock
from p2p.models.generation import Sampling
from p2p.models.loading import resolve_device
from p2p.paths import Paths
from p2p.profiles.noise import EmbeddingNoise
from p2p.report.stage_reports import split_summary
from p2p.tasks import get_task
from p2p.tasks.scoring import evaluate_files

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Profile-to-PEFT pipeline: data, splits, metrics. The full pipeline runs with `dvc repro`.")
data_app = typer.Typer(no_args_is_help=True, help="Get data: download real datasets or generate the benchmark.")
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file", envvar="P2P_PARAMS")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace the output directory whole even if it holds files "
                                                        "this command did not write (they are deleted)")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="preset (default: params.yaml `preset`)")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def friendly_errors(fn):
    """Turn expected failures (p2p/failures.py: bad input, bad config, unreadable or unwritable paths, unreachable
    downloads, missing hardware, a held lock) into one message on stderr + exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EXPECTED as err:
            _fail(message(err))

    return wrapper


def _config(params: Path, preset: str | None) -> Config:
    return load_config(params, preset)


def _writer(cfg: Config, params: Path) -> contextlib.AbstractContextManager:
    """The project's lock, held while a command writes pipeline outputs (refused at once if someone else holds it)."""
    paths = Paths(cfg, params.resolve().parent)
    return project_lock(paths.lock, paths.dvc_rwlock)


def _echo_per_task(cfg: Config, step) -> None:
    """Run `step(dataset, task)` for every configured task, printing its statistics as one JSON line each."""
    for dataset, task_id in cfg.data.tasks():
        typer.echo(f"{dataset}/{task_id}: {json.dumps(step(dataset, task_id))}")


@app.command("config")
@friendly_errors
def show_config(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None) -> None:
    """Print the resolved configuration of a preset."""
    typer.echo(yaml.safe_dump(_config(params, preset).model_dump(mode="json"), sort_keys=False))


@data_app.command("fetch")
@friendly_errors
def data_fetch(
    name: Annotated[str, typer.Argument(help="lamp, personal_reddit, empathetic_conversations, longlamp, p2p_data")],
    raw_dir: Annotated[Optional[Path], typer.Option(help="where raw files go (default: params data.raw_dir)")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", help="only these tasks (lamp)")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="only these splits: train, dev, test "
                                                                       "(lamp)")] = None,
    mirror: Annotated[Optional[str], typer.Option(help="base URL of a mirror (or env P2P_MIRROR)")] = None,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Download a dataset's missing files from their upstream URLs (resumable, atomic, checksummed); files already
    there are kept. Then `dvc add data/raw/<dataset>` makes them a DVC-tracked input of the pipeline."""
    writer: contextlib.AbstractContextManager = contextlib.nullcontext()  # a folder of the caller's: theirs to guard
    if raw_dir is None:
        cfg = _config(params, preset)
        raw_dir, writer = cfg.data.raw_dir, _writer(cfg, params)
    with writer:
        for path in fetch(name, raw_dir, base_url=mirror, tasks=task, splits=split):
            typer.echo(str(path))
    typer.echo(keeping_steps(name, raw_dir), err=True)


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="output directory")],
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    users: Annotated[Optional[int], typer.Option(help="users per task (default: params)")] = None,
    history_items: Annotated[Optional[int], typer.Option(help="history items per user (default: params)")] = None,
    queries_per_user: Annotated[Optional[int], typer.Option(help="queries per user (default: params)")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", help="tasks (default: all three)")] = None,
    force: ForceOpt = False,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Write the synthetic benchmark with planted personalisation, in the official LaMP formats (--out whole)."""
    sizes = {"users": users, "history_items": history_items, "queries_per_user": queries_per_user}
    if None in sizes.values():  # only then are the preset's sizes (and so params.yaml) needed
        defaults = _config(params, preset).data.synth
        sizes = {name: getattr(defaults, name) if value is None else value for name, value in sizes.items()}
    written = synth.generate(out, seed=seed, **sizes, **({"tasks": tuple(task)} if task else {}), force=force)
    for name, path in sorted(written.items()):
        typer.echo(f"{name}\t{path}")


@app.command("stage")
@friendly_errors
def stage(
    name: Annotated[str, typer.Argument(help="a pipeline stage: fetch, prepare, ..., report (dvc.yaml's names)")],
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Run one stage's recipe here, without Prefect or MLflow: what `dvc repro` runs under them (no DVC either)."""
    import logging

    from p2p.stages import run_stage
    from p2p.stages.recorder import LogRecorder

    cfg = _config(params, preset)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("p2p").setLevel(logging.INFO)
    with _writer(cfg, params):
        run_stage(name, cfg, params.resolve().parent, LogRecorder())


@app.command("paper")
@friendly_errors
def paper(
    preset: PresetOpt = None,
    workers: Annotated[Optional[int], typer.Option(help="experiments at once (default: the grid's `workers`)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list the grid's experiments and which are done")]
    = False,
) -> None:
    """The paper's whole grid (Tables 4-5, Figs. 3 and 6, seeds): the missing points as DVC experiments, then the
    report (`make paper`; docs/grid.md). Run from the project root; a finished grid runs nothing."""
    import logging

    from p2p.experiments import DvcError, run_paper

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("p2p").setLevel(logging.INFO)
    try:
        run_paper(Path.cwd(), preset, workers, dry_run)
    except DvcError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command("prepare")
@friendly_errors
def prepare(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None) -> None:
    """Convert every configured source's raw files into canonical per-user JSONL (data/prepared)."""
    from p2p.stages.prepare import prepare_task

    cfg = _config(params, preset)
    root = params.resolve().parent
    with _writer(cfg, params):
        _echo_per_task(cfg, lambda dataset, task_id: prepare_task(dataset, task_id, cfg, root))


@app.command("summarize")
@friendly_errors
def summarize(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None) -> None:
    """LLM profile summaries of every configured task's users (data/summaries); cached, so reruns are free."""
    from p2p.stages.common import generation_backend
    from p2p.stages.summarize import summarize_task

    cfg = _config(params, preset)
    root = params.resolve().parent
    with _writer(cfg, params):
        backend, count_tokens = generation_backend(cfg, root)
        _echo_per_task(cfg, lambda dataset, task_id: summarize_task(dataset, task_id, cfg, root, backend, count_tokens))


@app.command("embed")
@friendly_errors
def embed(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None) -> None:
    """Profile embeddings of every configured task's users and queries (data/embeddings); cached by text."""
    from p2p.stages.common import corpus_embedder
    from p2p.stages.embed import embed_task

    cfg = _config(params, preset)
    root = params.resolve().parent
    with _writer(cfg, params):
        embedder = corpus_embedder(cfg, root)
        _echo_per_task(cfg, lambda dataset, task_id: embed_task(dataset, task_id, cfg, root, embedder))


@app.command("split")
@friendly_errors
def split(
    records: Annotated[Optional[Path], typer.Option(help="a canonical JSONL file (default: all prepared)")] = None,
    embeddings: Annotated[Optional[Path], typer.Option(help=".npy, one row per record (default: TF-IDF)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output for --records (default: <records>.split.json)")] = None,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Random and OOD user splits (paper App. H) with a report: sizes, silhouette curve, similarities."""
    from p2p.stages.split import split_records, split_task, write_split_reports

    cfg = _config(params, preset)
    if records is None:
        if embeddings is not None or out is not None:
            _fail("--embeddings and --out need --records")
        root = params.resolve().parent
        with _writer(cfg, params):
            reports = [split_task(dataset, task_id, cfg, root) for dataset, task_id in cfg.data.tasks()]
            write_split_reports(reports, Paths(cfg, root).report("splits"))
        typer.echo(split_summary(reports))
        return
    rows = list(read_records(records))
    matrix = None
    if embeddings is not None:
        import numpy as np

        matrix = np.load(embeddings, allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[0] != len(rows):
            _fail(f"{embeddings}: expected a matrix with one row per record ({len(rows)}), got shape {matrix.shape}")
    assignment, report = split_records(rows, cfg, matrix)
    out = out or records.with_suffix(".split.json")
    write_json(out, {**assignment, "report": report})
    typer.echo(json.dumps({"out": str(out), "sizes": report["sizes"], "k": report["k"],
                           "similarity": report["similarity"]}))


class Style(str, Enum):
    official = "official"
    p2p = "p2p"


@app.command("eval-metrics")
@friendly_errors
def eval_metrics(
    task: Annotated[str, typer.Option(help="task id (LaMP-2M) or official name (LaMP_2)")],
    predictions: Annotated[Path, typer.Option(help='predictions JSON: {"task", "golds": [{"id", "output"}]}')],
    golds: Annotated[Path, typer.Option(help="gold outputs JSON in the official LaMP format")],
    style: Annotated[Style, typer.Option(help="official LaMP definitions, or P2P's")] = Style.official,
) -> None:
    """Score predictions against golds; the metrics are printed as one JSON object on the last line."""
    typer.echo(json.dumps(evaluate_files(task, predictions, golds, style=style.value), allow_nan=False))


CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="trained hypernetwork directory (p2p.json "
                                                                            "+ hypernetwork.safetensors; default: "
                                                                            "params `train.dir`)")]
#: The largest profile file read, in bytes: a profile is one user's text, not a corpus (1 MB is far past any
#: embedder's window, and embedding a 10 MB file takes about 2 GB of memory).
MAX_PROFILE_BYTES = 1_000_000
NoiseOpt = Annotated[float, typer.Option("--noise-scale", help="privacy defence: Gaussian noise per coordinate on "
                                         "the clipped profile embedding (docs/privacy.md); 0: off")]
NoiseClipOpt = Annotated[float, typer.Option("--noise-clip", help="with --noise-scale: clip the profile embedding "
                                             "to this L2 norm, in units of sqrt(dim)")]
ProfileOpt = Annotated[Path, typer.Option("--profile", help="text file holding the user's profile text (at most 1 MB)")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="wrap --query in this task's prompt (App. J); the "
                                                              "query must then be the task's official input")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="model cache (default: params "
                                                                    "`model.cache_dir`)")]


def _trained(checkpoint: Path | None, cache_dir: Path | None, params: Path, preset: str | None) -> tuple[Path, Path]:
    """The hypernetwork directory and model cache: as given, else where the pipeline keeps them (params.yaml)."""
    if checkpoint is None or cache_dir is None:
        paths = Paths(_config(params, preset), params.resolve().parent)
        checkpoint, cache_dir = checkpoint or paths.hypernetwork, cache_dir or paths.model_cache
    return checkpoint, cache_dir


def _profile_text(path: Path) -> str:
    text = read_text(path, max_bytes=MAX_PROFILE_BYTES).strip()
    if not text:
        raise InputError(path, "the profile file is empty")
    return text


@app.command("personalize")
@friendly_errors
def personalize(
    query: Annotated[str, typer.Option(help="the request to answer")],
    profile: ProfileOpt,
    checkpoint: CheckpointOpt = None,
    task: TaskOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="answer length cap")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    noise_scale: NoiseOpt = 0.0,
    noise_clip: NoiseClipOpt = 1.0,
    cache_dir: CacheOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Answer one query with an adapter generated on the spot from a profile (no fine-tuning)."""
    from p2p.hyper.checkpoint import read_meta
    from p2p.hyper.hypernet import resolve_task
    from p2p.hyper.personalize import Personalizer

    # Bad input and bad arguments fail before any model loads.
    text, prompt = _profile_text(profile), get_task_prompt(task, query)
    device, sampling = resolve_device(device), Sampling(max_new_tokens=max_new_tokens)
    noise = EmbeddingNoise(noise_scale, noise_clip)
    checkpoint, cache_dir = _trained(checkpoint, cache_dir, params, preset)
    task = resolve_task(read_meta(checkpoint).tasks, task)  # one it was trained on, before the model loads
    personalizer = Personalizer.from_checkpoint(checkpoint, cache_dir, device=device, noise=noise)
    personalizer.make([text], task)  # warm-up: first calls pay one-off costs that are not the adapter's
    made = personalizer.make([text], task)
    answer = personalizer.generate([prompt], made.embeddings, task, sampling)[0].text
    typer.echo(answer)
    typer.echo(f"adapter made in {made.seconds:.3f} s (profile embedding + one hypernetwork forward)")


def get_task_prompt(task: str | None, query: str) -> str:
    return query if task is None else get_task(task).build_prompt(query)


@app.command("export-adapter")
@friendly_errors
def export_adapter(
    profile: ProfileOpt,
    out: Annotated[Path, typer.Option(help="adapter directory to write (PEFT format)")],
    checkpoint: CheckpointOpt = None,
    task: Annotated[Optional[str], typer.Option(help="task of the profile (needed for instruction embedders)")] = None,
    noise_scale: NoiseOpt = 0.0,
    noise_clip: NoiseClipOpt = 1.0,
    force: ForceOpt = False,
    cache_dir: CacheOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Write a user's generated adapter as a PEFT LoRA directory (PeftModel.from_pretrained, vLLM --lora-modules).

    --out must be new, empty or an adapter directory this command wrote (it is then replaced whole), or --force.
    """
    from p2p.hyper.checkpoint import read_meta
    from p2p.hyper.hypernet import resolve_task
    from p2p.hyper.personalize import Personalizer
    from p2p.lora.peft import check_out_dir

    text = _profile_text(profile)  # bad input fails before any model loads
    noise = EmbeddingNoise(noise_scale, noise_clip)
    if task is not None:
        get_task(task)
    check_out_dir(out, force)
    checkpoint, cache_dir = _trained(checkpoint, cache_dir, params, preset)
    task = resolve_task(read_meta(checkpoint).tasks, task)  # one it was trained on, before the model loads
    personalizer = Personalizer.from_checkpoint(checkpoint, cache_dir, device="cpu", noise=noise)
    path = personalizer.export(out, personalizer.embed([text], task)[0], task, force=force)
    typer.echo(f"wrote {path} (base model {personalizer.meta.base_llm}); it holds the user's personalisation: "
               f"treat it as user data")


#: Where `p2p serve` keeps stored profiles, under the project root: not a DVC output (DVC deletes those when their
#: stage reruns) and not in git.
SERVE_PROFILES_DB = Path(".serve") / "profiles.db"


@app.command("serve")
@friendly_errors
def serve(
    checkpoint: CheckpointOpt = None,
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback needs keys (--keys-file, "
                                           "P2P_API_KEYS or the admin key)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    max_batch: Annotated[int, typer.Option(help="rows decoded together: requests beyond wait in the queue")] = 16,
    max_queue: Annotated[int, typer.Option(help="requests waiting for a row; beyond, 429 with Retry-After")] = 64,
    prefill_share: Annotated[float, typer.Option(help="the most of the engine's time that prefills of requests "
                                                      "leaving within 16 tokens take while others decode; 1: no "
                                                      "limit")] = 0.1,
    prefill_burst: Annotated[float, typer.Option(help="seconds of those prefills lent ahead of "
                                                      "--prefill-share")] = 0.5,
    adapter_cache: Annotated[int, typer.Option(help="adapters kept in memory (LRU; never on disk)")] = 256,
    profiles_db: Annotated[Optional[str], typer.Option(help="stored profiles: a SQLite file (default: "
                                                            ".serve/profiles.db beside params.yaml, outside every "
                                                            "DVC output) or a postgresql:// URL shared by several "
                                                            "replicas")] = None,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the admin bearer key; unset or "
                                                  "empty: none")] = "P2P_API_KEY",
    keys_file: Annotated[Optional[Path], typer.Option(help="owners' keys, one `OWNER KEY` line each (owner `*`: "
                                                           "admin); else the P2P_API_KEYS variable's lines")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted (413 beyond)")] = 2_000_000,
    max_tokens: Annotated[int, typer.Option(help="the most tokens a request may ask for")] = 1024,
    max_profile_chars: Annotated[int, typer.Option(help="the longest profile text embedded (400 beyond)")] = 32_000,
    max_connections: Annotated[int, typer.Option(help="open connections; beyond, 503 at once")] = 512,
    header_timeout: Annotated[float, typer.Option(help="seconds for a request's line and headers (408 "
                                                       "beyond)")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="seconds for a request's body (408 beyond)")] = 10.0,
    onnx_embedder: Annotated[bool, typer.Option(help="on CPU, embed profiles with ONNX Runtime (the same vectors; "
                                                     "not slowed by the server's other threads)")] = True,
    noise_scale: NoiseOpt = 0.0,
    noise_clip: NoiseClipOpt = 1.0,
    cache_dir: CacheOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    preset: PresetOpt = None,
) -> None:
    """Serve the hypernetwork over OpenAI's chat-completions API: a profile in the request, its adapter made on the
    spot, many users' adapters in one batch (docs/serving.md)."""
    import logging

    import uvicorn

    from p2p.hyper.personalize import Personalizer
    from p2p.server.app import LOOPBACK, Settings, create_app
    from p2p.server.connections import guarded_protocol
    from p2p.server.keys import load_keys
    from p2p.server.profiles import open_store

    if not 1 <= port <= 65535:
        raise ValueError(f"--port: expected 1 to 65535, got {port}")
    if min(max_batch, max_body_bytes, max_tokens, max_profile_chars, max_connections) < 1 or max_queue < 0 \
            or adapter_cache < 0 or min(header_timeout, body_timeout) <= 0 or not 0 < prefill_share <= 1 \
            or prefill_burst < 0:
        raise ValueError("--max-batch, --max-body-bytes, --max-tokens, --max-profile-chars and --max-connections "
                         "must be at least 1; --max-queue and --adapter-cache at least 0; timeouts above 0; "
                         "--prefill-share in (0, 1]; --prefill-burst at least 0")
    noise = EmbeddingNoise(noise_scale, noise_clip)
    keys_text, keys_source = (read_text(keys_file), str(keys_file)) if keys_file is not None else \
        (os.environ.get("P2P_API_KEYS"), "P2P_API_KEYS")
    keys = load_keys(os.environ.get(api_key_env) or None, keys_text, keys_source)
    if not keys and host.strip("[]") not in {name.strip("[]") for name in LOOPBACK}:
        raise ValueError(f"--host {host}: a server without keys answers loopback only; set {api_key_env} (admin) or "
                         f"--keys-file / P2P_API_KEYS (owners) to serve on another address")
    profiles_url = profiles_db or str(params.resolve().parent / SERVE_PROFILES_DB)
    open_store(profiles_url).close()  # a store it cannot open stops the server here, before the model loads
    device = resolve_device(device)
    checkpoint, cache_dir = _trained(checkpoint, cache_dir, params, preset)
    personalizer = Personalizer.from_checkpoint(checkpoint, cache_dir, device=device, onnx_embedder=onnx_embedder,
                                                noise=noise)
    meta = personalizer.meta  # warm-up: the first adapter pays one-off costs that are not the adapter's
    personalizer.make(["warm-up"], meta.tasks[0])
    settings = Settings(model_name=personalizer.meta.base_llm, profiles_url=profiles_url, keys=keys,
                        max_batch=max_batch, max_queue=max_queue, prefill_share=prefill_share,
                        prefill_burst=prefill_burst,
                        adapter_cache=adapter_cache,
                        max_body_bytes=max_body_bytes, max_tokens=max_tokens, default_max_tokens=min(256, max_tokens),
                        max_profile_chars=max_profile_chars, body_timeout=body_timeout)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    server_log = logging.getLogger("p2p.serve")  # one JSON line per request, on stderr
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)
    server_log.propagate = False
    typer.echo(f"serving {settings.model_name} with {checkpoint} on http://{host}:{port} (playground: /, API: /v1; "
               f"{len(keys.by_key)} keys)" if keys else f"serving {settings.model_name} with {checkpoint} on "
               f"http://{host}:{port} (playground: /, API: /v1; no keys: loopback only)", err=True)
    uvicorn.run(create_app(personalizer, settings), host=host, port=port, access_log=False, log_level="warning",
                http=guarded_protocol(header_timeout, max_connections))


@app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def bench(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="benchmark: a file bench/<name>.py (infer, train, generation, ...)")],
    preset: PresetOpt = None,
) -> None:
    """Run bench/<name>.py from the project root; extra options are passed on. The last line is one JSON object."""
    import runpy

    path = Path("bench") / f"{name}.py"
    if not path.is_file():
        found = sorted(p.stem for p in Path("bench").glob("*.py")) if Path("bench").is_dir() else []
        _fail(f"{path}: no such benchmark (run from the project root; benchmarks: {', '.join(found) or 'none'})")
    sys.argv = [str(path), *(["--preset", preset] if preset else []), *ctx.args]
    sys.path.insert(0, str(path.parent.resolve()))  # the benchmarks import their shared bench/common.py
    runpy.run_path(str(path), run_name="__main__")


def main() -> None:  # pragma: no cover - console entry for `python -m p2p.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
