"""Serving generated adapters from vLLM: the adapter files, the requests, many adapters in flight, the evaluation.

Against a real HTTP server on 127.0.0.1 that imitates vLLM's LoRA endpoints (tests/fake_vllm.py) and real PEFT on
the tiny random Qwen2. The last test needs a live vLLM server (`-m vllm`, env P2P_VLLM_URL) and is skipped here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_vllm import FakeVLLM
from safetensors.torch import load_file

from p2p.config import load_config
from p2p.data.records import Query, UserRecord
from p2p.evaluation.answers import TaskInputs, run_method
from p2p.hyper.checkpoint import save_hypernetwork
from p2p.hyper.hypernet import HyperNetwork
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied, find_targets
from p2p.lora.peft import CONFIG_NAME, WEIGHTS_NAME, export_adapter
from p2p.lora.stacked import save_adapters
from p2p.methods import CONFIGURABLE as METHODS
from p2p.models.generation import GenerationError, Sampling
from p2p.models.loading import load_causal_lm
from p2p.models.openai_backend import OpenAIBackend
from p2p.models.presets import TINY_RANDOM
from p2p.paths import Paths, TaskData
from p2p.stages.evaluate import eval_settings, load_models
from p2p.stages.train import hyper_meta
from p2p.vllm_client import DIGEST_CHARS, ServedAdapter, VLLMLoraClient, export_for_serving

#: The adapters of the presets: r 8, alpha 16, rsLoRA, q_proj and v_proj.
LORA = LoraShape(("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.05, rslora=True)
NAME = re.compile(rf"^[A-Za-z0-9_-]+-[A-Za-z0-9_.-]+-[0-9a-f]{{{DIGEST_CHARS}}}$")
SAMPLING = Sampling(max_new_tokens=5, seed=7)


@pytest.fixture(scope="module")
def tiny(model_cache):
    """(base model in eval mode, tokenizer, layout) of the tiny random Qwen2."""
    model, tokenizer = load_causal_lm(TINY_RANDOM, model_cache)
    return model, tokenizer, find_targets(model, LORA.targets)


def random_adapters(layout: TargetLayout, rows: int, seed: int = 0, scale: float = 0.1) -> Adapters:
    """Random non-zero A and B (B = 0 would make every adapter the base model)."""
    gen = torch.Generator().manual_seed(seed)
    n, r = len(layout.layers), LORA.rank
    return Adapters({k: torch.randn(rows, n, r, d_in, generator=gen) * scale for k, (d_in, _) in layout.shapes.items()},
                    {k: torch.randn(rows, n, d_out, r, generator=gen) * scale
                     for k, (_, d_out) in layout.shapes.items()})


def client_for(url: str, local_dir: Path, server_dir: str | None = None, **kwargs) -> VLLMLoraClient:
    options = {"concurrency": 4, "backoff": 0.01, "timeout": 5.0, "progress": False, **kwargs}
    return VLLMLoraClient(OpenAIBackend(url, "base", **options), local_dir, server_dir)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------------------
# The adapter files.

def test_exported_adapters_are_named_by_user_and_weights(tiny, tmp_path):
    _, _, layout = tiny
    adapters = random_adapters(layout, 4)
    for table in (adapters.a, adapters.b):  # row 2 is row 0 again; row 3 is row 0's weights for another user
        for kind in table:
            table[kind][2] = table[kind][0]
            table[kind][3] = table[kind][0]
    out = tmp_path / "adapters"
    served = export_for_serving(out, layout, LORA, adapters, ["u1", "../../etc/u 2ü", "u1", "u3"], TINY_RANDOM,
                                "p2p")

    names = [s.name for s in served]
    assert all(NAME.match(name) for name in names), names
    assert names[0] == names[2] and len(set(names)) == 3  # same user, same weights: one adapter
    assert names[0].startswith("p2p-u1-") and names[3].startswith("p2p-u3-")
    assert names[0][-DIGEST_CHARS:] == names[3][-DIGEST_CHARS:] != names[1][-DIGEST_CHARS:]
    assert "/" not in names[1] and served[1].path.parent == out
    assert sorted(p.name for p in out.iterdir()) == sorted(set(names))
    for adapter in served:
        assert sorted(p.name for p in adapter.path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
        config = json.loads((adapter.path / CONFIG_NAME).read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 16 and config["use_rslora"] is True
        assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["peft_type"] == "LORA"

    # exporting again writes nothing: the files already there are these adapters
    before = {s.name: (s.path / WEIGHTS_NAME).stat() for s in served}
    again = export_for_serving(out, layout, LORA, adapters, ["u1", "../../etc/u 2ü", "u1", "u3"], TINY_RANDOM, "p2p")
    assert [s.name for s in again] == names
    for s in again:
        stat = (s.path / WEIGHTS_NAME).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == (before[s.name].st_ino, before[s.name].st_mtime_ns)

    # other weights (a retrained hypernetwork) never reuse a name
    adapters.b["v_proj"][0] += 1e-3
    retrained = export_for_serving(out, layout, LORA, adapters.rows([0]), ["u1"], TINY_RANDOM, "p2p")
    assert retrained[0].name.startswith("p2p-u1-") and retrained[0].name != names[0]
    with pytest.raises(ValueError, match="2 adapters but 1 users"):
        export_for_serving(out, layout, LORA, adapters.rows([0, 1]), ["u1"], TINY_RANDOM, "p2p")


@torch.no_grad()
def test_exported_adapter_reloads_in_peft_with_the_hooked_models_logits(tiny, tmp_path):
    from peft import PeftModel

    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, 3, seed=1)
    ids = torch.randint(100, len(tokenizer), (3, 10), generator=torch.Generator().manual_seed(1))
    with adapters_applied(model, layout, LORA, adapters):
        hooked = model(ids).logits
    served = export_for_serving(tmp_path, layout, LORA, adapters, ["a", "b", "c"], TINY_RANDOM, "p2p")
    for row in (0, 2):
        reloaded = PeftModel.from_pretrained(copy.deepcopy(model), served[row].path).eval()
        logits = reloaded(ids[row:row + 1]).logits[0]
        torch.testing.assert_close(logits, hooked[row], atol=1e-5, rtol=0)
        assert (logits - model(ids[row:row + 1]).logits[0]).abs().max() > 1e-3  # the adapter really acts


# ---------------------------------------------------------------------------------------------------------------
# Loading and generating against a server that behaves like vLLM.

def test_each_request_carries_its_users_adapter(tiny, tmp_path):
    _, _, layout = tiny
    served = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 3), ["ann", "bob", "cy"],
                                TINY_RANDOM, "p2p")
    order = [0, 1, 2, 2, 0, 1]
    conversations = [user(f"question {i} of {served[row].name}") for i, row in enumerate(order)]
    reported = []
    with FakeVLLM() as server:
        client = client_for(server.url, tmp_path)
        client.load(served)
        results = client.generate(conversations, [served[row].name for row in order], SAMPLING,
                                  on_result=lambda i, g: reported.append(i))
    assert server.loaded == {s.name: str(s.path.resolve()) for s in served}
    assert sorted(server.bodies("/v1/load_lora_adapter"), key=str) == sorted(
        ({"lora_name": s.name, "lora_path": str(s.path.resolve())} for s in served), key=str)
    assert [r.text for r in results] == [f"{served[row].name} says: {c[-1]['content']}"
                                         for row, c in zip(order, conversations)]  # its own adapter, input order
    assert sorted(reported) == list(range(6))
    expected = [{"model": served[row].name, "messages": c, "max_tokens": 5, "temperature": 0.0, "seed": 7}
                for row, c in zip(order, conversations)]
    assert sorted(server.bodies("/v1/chat/completions"), key=str) == sorted(expected, key=str)


def test_many_adapters_are_in_flight_at_once(tiny, tmp_path):
    _, _, layout = tiny
    users = [f"user{i}" for i in range(12)]
    served = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 12, seed=3), users, TINY_RANDOM,
                                "oppu")
    with FakeVLLM(delay=0.3) as server:
        client = client_for(server.url, tmp_path, concurrency=6)
        client.load(served)
        began = time.monotonic()
        results = client.generate([user(u) for u in users], [s.name for s in served], SAMPLING)
        seconds = time.monotonic() - began
    assert [r.text for r in results] == [f"{s.name} says: {u}" for s, u in zip(served, users)]
    assert server.max_in_flight == 6 and server.max_adapters_in_flight == 6  # six different users at once
    assert seconds < 12 * 0.3 / 2  # one adapter at a time would take 3.6 s


@pytest.mark.parametrize("error_style", ["nested", "flat"])
def test_loading_is_idempotent(tiny, tmp_path, error_style):
    _, _, layout = tiny
    a, b = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 2), ["a", "b"], TINY_RANDOM, "p2p")
    with FakeVLLM(error_style=error_style) as server:
        first = client_for(server.url, tmp_path)
        first.load([a, b, a])
        first.load([b])  # known to this client: no request
        assert len(server.bodies("/v1/load_lora_adapter")) == 2
        client_for(server.url, tmp_path).load([a])  # another run: the server answers "already loaded", and that is fine
        assert len(server.bodies("/v1/load_lora_adapter")) == 3
        assert set(server.loaded) == {a.name, b.name}
        assert [r.text for r in client_for(server.url, tmp_path).generate([user("hi")], [a.name], SAMPLING)] == [
            f"{a.name} says: hi"]


def test_adapter_directory_mounted_elsewhere_on_the_server(tiny, tmp_path):
    _, _, layout = tiny
    local = tmp_path / "adapters"
    (one,) = export_for_serving(local, layout, LORA, random_adapters(layout, 1), ["a"], TINY_RANDOM, "p2p")
    with FakeVLLM(mounts={"/srv/p2p/adapters": local}) as server:
        client = client_for(server.url, local, "/srv/p2p/adapters")
        assert client.server_path(one.path) == f"/srv/p2p/adapters/{one.name}"
        with pytest.raises(ValueError, match="not under the adapter directory"):
            client.server_path(tmp_path / "elsewhere" / one.name)
        client.load([one])
        assert server.loaded == {one.name: f"/srv/p2p/adapters/{one.name}"}

        # the server does not see the directory where it is said to be: the error says where to look
        lost = client_for(server.url, local, "/mnt/wrong")
        with pytest.raises(GenerationError) as err:
            lost.load([ServedAdapter("p2p-b-0123456789abcdef", one.path)])
    message = str(err.value)
    for part in ("'p2p-b-0123456789abcdef'", f"/mnt/wrong/{one.name}", "HTTP 404", "No adapter found",
                 "generation.openai.lora_dir_on_server", str(local)):
        assert part in message, part


def test_a_server_without_runtime_loading_is_named_with_the_command(tiny, tmp_path):
    _, _, layout = tiny
    served = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 3), ["a", "b", "c"], TINY_RANDOM,
                                "p2p")
    with FakeVLLM(runtime_updates=False) as server:
        with pytest.raises(GenerationError) as err:
            client_for(server.url, tmp_path, concurrency=1).load(served)
    message = str(err.value)
    for part in (f"adapter {served[0].name!r}", str(served[0].path.resolve()), "HTTP 404", "Not Found",
                 "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", "--enable-lora", "--max-lora-rank 8"):
        assert part in message, part
    assert len(server.bodies("/v1/load_lora_adapter")) == 1  # not retried, and the other loads were not sent


def test_a_rank_over_the_servers_limit_is_explained(tiny, tmp_path):
    _, _, layout = tiny
    served = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 1), ["a"], TINY_RANDOM, "p2p")
    with FakeVLLM(max_lora_rank=4) as server:
        with pytest.raises(GenerationError, match=r"HTTP 400\): LoRA rank 8 is greater than max_lora_rank 4\. "
                                                  r"Check .*--enable-lora.*--max-lora-rank"):
            client_for(server.url, tmp_path).load(served)
    assert server.loaded == {}


def test_transient_load_failures_are_retried(tiny, tmp_path):
    _, _, layout = tiny
    served = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 1), ["a"], TINY_RANDOM, "p2p")
    with FakeVLLM(fail_loads=2) as server:
        client_for(server.url, tmp_path, retries=3).load(served)
    assert len(server.bodies("/v1/load_lora_adapter")) == 3 and set(server.loaded) == {served[0].name}


def test_unloading_frees_the_server_and_a_missing_adapter_is_a_clear_error(tiny, tmp_path):
    _, _, layout = tiny
    (one,) = export_for_serving(tmp_path, layout, LORA, random_adapters(layout, 1), ["a"], TINY_RANDOM, "p2p")
    with FakeVLLM() as server:
        client = client_for(server.url, tmp_path)
        client.load([one])
        client.unload([one.name, one.name, "never-loaded"])  # an adapter the server does not hold is unloaded
        assert server.loaded == {}
        assert server.bodies("/v1/unload_lora_adapter") == [{"lora_name": one.name}, {"lora_name": "never-loaded"}]
        with pytest.raises(GenerationError, match=rf"HTTP 404; .*The model `{one.name}` does not exist"):
            client.generate([user("hi")], [one.name], SAMPLING)
        client.load([one])  # unloaded, so loaded again
        assert set(server.loaded) == {one.name}
    with pytest.raises(ValueError, match="2 conversations but 1 model names"):
        client.generate([user("a"), user("b")], [one.name], SAMPLING)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation stage through the server: every method answers every query, each with its own adapter.

EMBED_DIM = 16
USERS = ["u0", "u1", "u2", "u3"]


def movie_record(name: str) -> UserRecord:
    history = [{"id": f"{name}-h{i}", "description": f"Film {i} that {name} watched.", "tag": tag}
               for i, tag in enumerate(["comedy", "action", "sci-fi"])]
    queries = [Query(f"{name}-q{k}", f"Which tag does this movie relate to? tags: [comedy, action, sci-fi] "
                                      f"description: movie {k} for {name}", "comedy") for k in range(2)]
    return UserRecord(name, "LaMP-2M", history, queries)


def served_config(url: str, model_cache: Path):
    cfg = load_config("params.yaml", "smoke")
    gen = cfg.generation
    openai = gen.openai.model_copy(update={"base_url": url, "model": "base"})
    return cfg.model_copy(update={
        "generation": gen.model_copy(update={"backend": "openai", "openai": openai}),
        "model": cfg.model.model_copy(update={"cache_dir": model_cache}),
        "evaluate": cfg.evaluate.model_copy(update={"methods": list(METHODS)})})


def test_evaluation_answers_every_query_through_the_server(tiny, tmp_path, model_cache):
    model, tokenizer, layout = tiny
    root = tmp_path
    records = [movie_record(u) for u in USERS]
    rng = np.random.default_rng(0)
    queries = {q.id: rng.standard_normal(EMBED_DIM).astype(np.float32) for r in records for q in r.queries}
    queries["u0-q1"] = queries["u0-q0"].copy()  # one profile for both of u0's queries: one adapter
    data = TaskData("synth", "LaMP-2M", records, queries, {}, {"random_test": USERS})
    summaries = {u: f"{u} likes films" for u in USERS}

    with FakeVLLM() as server:
        cfg = served_config(server.url, model_cache)
        lora = LoraShape(tuple(cfg.lora.targets), cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        assert lora == LORA
        meta = hyper_meta(cfg, layout, EMBED_DIM, ["LaMP-2M"])
        torch.manual_seed(0)
        hyper = HyperNetwork(EMBED_DIM, layout, LORA, meta.shape, meta.tasks)
        for head in hyper.heads.values():  # a trained look: adapters that depend on the profile (fresh: B = 0)
            torch.nn.init.normal_(head.weight, std=0.05)
        paths = Paths(cfg, root)
        save_hypernetwork(paths.hypernetwork, hyper, meta)
        export_adapter(paths.mt_lora, layout, LORA, random_adapters(layout, 1, seed=5), TINY_RANDOM)
        save_adapters(paths.oppu_adapters("synth", "LaMP-2M"), random_adapters(layout, 5, seed=6),
                      ["someone-else"] + USERS, {})
        inputs = TaskInputs(data, summaries, paths.oppu_adapters("synth", "LaMP-2M"), paths.synth_task("LaMP-2M"))

        models = load_models(cfg, root, METHODS)
        assert models.model is None and models.personalizer is None  # the server holds the base model
        assert models.layout == layout and models.hypernetwork is not None
        assert models.served.local_dir == (root / ".cache/served_adapters").resolve()
        runs = {}
        for method in METHODS:
            runs[method] = run_method(method, models, inputs, "random_test", eval_settings(cfg))
            assert server.loaded == {}, method  # every adapter unloaded once its queries are answered
        chats = server.bodies("/v1/chat/completions")

    ids = [q.id for r in records for q in r.queries]
    owner = {q.id: r.user_id for r in records for q in r.queries}
    budget = cfg.evaluate.answer_tokens.classification  # a budget by task kind, never from the golds
    assert {c["max_tokens"] for c in chats} == {budget} and len(chats) == len(METHODS) * len(ids)
    adapter_of: dict[str, dict[str, str]] = {}  # method -> query id -> adapter name
    for method, run in runs.items():
        assert list(run.predictions) == ids and run.seconds > 0, method
        served_by = {qid: text.split(" says: ")[0] for qid, text in run.predictions.items()}
        if method in ("base", "rag", "pag", "full_history"):
            assert set(served_by.values()) == {"base"}, method
            continue
        adapter_of[method] = served_by
        for qid, name in served_by.items():
            assert NAME.match(name), name
            expected = "all" if method == "mt_lora" else owner[qid]
            assert name.startswith(f"{method}-{expected}-"), (method, qid, name)
            assert (models.served.local_dir / name / WEIGHTS_NAME).is_file()

    assert len(set(adapter_of["mt_lora"].values())) == 1
    assert len(set(adapter_of["oppu"].values())) == len(USERS)
    p2p = adapter_of["p2p"]
    assert p2p["u0-q0"] == p2p["u0-q1"] and len(set(p2p.values())) == len(ids) - 1  # deduplicated per user
    # shuffled: each query runs with the adapter P2P made from another user's profile
    def weights(name: str) -> dict[str, torch.Tensor]:
        return load_file(models.served.local_dir / name / WEIGHTS_NAME)

    made_for = {name: owner[qid] for qid, name in p2p.items()}
    p2p_weights = {name: weights(name) for name in made_for}
    for qid, name in adapter_of["p2p_shuffled"].items():
        mine = weights(name)
        same = [n for n, w in p2p_weights.items() if all(torch.allclose(w[k], mine[k], atol=1e-6) for k in w)]
        assert len(same) == 1 and made_for[same[0]] != owner[qid], (qid, same)
    loads = [b["lora_name"] for b in server.bodies("/v1/load_lora_adapter")]  # each distinct adapter once
    assert len(loads) == len(set(loads)) == sum(len(set(names.values())) for names in adapter_of.values())


# ---------------------------------------------------------------------------------------------------------------
# A live vLLM server (run with `pytest -m vllm` and P2P_VLLM_URL set; docs/gpu-and-serving.md).

LIVE_URL = os.environ.get("P2P_VLLM_URL")


@pytest.mark.vllm
@pytest.mark.skipif(not LIVE_URL, reason="needs a live vLLM server started with runtime LoRA loading: set "
                    "P2P_VLLM_URL=http://HOST:8000/v1 (and, when it runs elsewhere, P2P_VLLM_ADAPTER_DIR / "
                    "P2P_VLLM_SERVER_DIR: a directory it reads, here / there)")
def test_live_vllm_serves_generated_adapters(tmp_path, model_cache):
    """P2P_VLLM_ARCH names the served model's architecture as params know it (default: the served model id)."""
    from p2p.lora.targets import target_layout

    def served_models() -> list[dict]:
        with urllib.request.urlopen(f"{LIVE_URL.rstrip('/')}/models", timeout=30) as response:
            return json.loads(response.read())["data"]

    base = next(m["id"] for m in served_models() if not m.get("parent"))
    layout = target_layout(os.environ.get("P2P_VLLM_ARCH", base), model_cache, LORA.targets)
    local = Path(os.environ.get("P2P_VLLM_ADAPTER_DIR") or tmp_path)
    served = export_for_serving(local, layout, LORA, random_adapters(layout, 2, seed=int(time.time())),
                                ["live-a", "live-b"], base, "p2p")
    backend = OpenAIBackend(LIVE_URL, base, concurrency=8, timeout=300, progress=False)
    client = VLLMLoraClient(backend, local, os.environ.get("P2P_VLLM_SERVER_DIR"))
    sampling = Sampling(max_new_tokens=16)
    try:
        client.load(served)
        VLLMLoraClient(backend, local, client.server_dir).load(served)  # vLLM's "already loaded" is success
        assert {s.name for s in served} <= {m["id"] for m in served_models()}
        prompt = user("Name three colours.")
        names = [served[0].name, served[1].name, served[0].name, served[1].name]
        texts = [g.text for g in client.generate([prompt] * 4, names, sampling)]
        plain = backend.generate([prompt], sampling)[0].text
        assert texts[0] == texts[2] and texts[1] == texts[3]  # greedy: an adapter answers alike
        assert len({texts[0], texts[1], plain}) > 1  # random rank-8 adapters change the answer
    finally:
        client.unload([s.name for s in served])
    assert not {s.name for s in served} & {m["id"] for m in served_models()}
    with pytest.raises(GenerationError, match="HTTP 404"):
        client.generate([user("hi")], [served[0].name], sampling)
