"""Serving benchmark: `p2p serve` on loopback under a bounded load, replayed with the official `openai` client.

    p2p bench serve --preset cpu [--users 16] [--max-tokens 128] [--rounds 3]
        [--adversarial [--hostile-threads 1] [--hostile-kinds seed,big_profile,...]] [--serve-arg=--OPTION ...]

The server runs the preset's base model and embedder with a hypernetwork of the preset's size (random weights with
perturbed heads, as every benchmark here: speed does not depend on weight values), written to a temporary
checkpoint, so it runs on a fresh clone without a trained one. Three loads, each of --users streaming requests with
the same short questions, every answer forced to exactly --max-tokens tokens (`min_tokens`), greedy:
- base: all users at once, no profile (the bare base model, batched: the ceiling);
- p2p: all users at once, each with their own profile never seen before by the server (their adapters are made on
  the spot, inside the measured time), in one batch with per-row adapters;
- serial: the same users with the same profiles, one request at a time (one adapter at a time, as a server that
  swaps adapters per user serves them; their adapters are in the server's cache by then).
The base and p2p loads run --rounds times, alternating, each p2p round with --users profiles new to the server;
tokens/s are the medians over rounds (one load on a shared 2-core machine varies by about 10%), the adapter and
first-token percentiles are over every request. The serial load runs once, with the last round's users.
Profiles are synthetic LaMP-2M users' profile texts as the embed stage builds them. Tokens/s is completion tokens
over the wall time from the first request to the last answer; time to first token is measured at the client.
Prints each load's figures and, last, one JSON object with tokens_per_s_base, tokens_per_s_p2p, tokens_per_s_serial,
ratio_vs_base, speedup_vs_serial, adapter_ms_p50, adapter_ms_p99, ttft_ms_p50_base, ttft_ms_p50_p2p.

--adversarial (issue 29: no client can hurt another's answers) then adds two p2p-style loads, alternated over
--rounds, each with --users profiles new to the server: clean (alone) and hostile (the same load while hostile clients
run in background threads from just before its first request to its last answer). --hostile-threads of each hostile
client loop, 0.2 s apart, over raw sockets: chat requests with out-of-range sampling parameters (a seed of 2^70,
temperature 1e-45, top_p 1e-300); a body sent 8 bytes a second; headers that never finish; a stream dropped after
its first chunk; a body dropped halfway; a chat with a new 1,000,000-character inline profile. The server gets a
batch row for each hostile client (so they do not take the well-behaved users' rows) and a --max-body-bytes that lets
the 1 MB profile in. A well-behaved request the server fails counts as failed (no tokens), never ends the bench.
Per load: tokens/s (medians over rounds), the p99 gap between consecutive streamed content chunks and the p50 time to
first token (over every well-behaved request that did not fail); per hostile client, the count of each outcome (the
status code, or closed, timeout: no answer within 30 s or before the load ended, refused, dropped: hung up by
design). The JSON gains tokens_per_s_clean, tokens_per_s_hostile, hostile_ratio (hostile / clean), gap_p99_s_clean,
gap_p99_s_hostile, ttft_ms_p50_clean, ttft_ms_p50_hostile, failed_clean, failed_hostile, hostile_threads and
hostile_outcomes; issue 29's targets (printed, not enforced): hostile_ratio at least 0.8, gap_p99_s_hostile under 0.5.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
from common import BENCH_TASK, ROOT, parser, random_hypernetwork, report

from p2p.config import load_config
from p2p.lora.targets import target_layout
from p2p.models.presets import EMBEDDING_DIMS
from p2p.paths import Paths
from p2p.stages.common import lora_shape
from p2p.stages.train import hyper_meta

STAND_IN_SUMMARY = "Tags films by their dominant theme; consistent, decisive, rarely picks a second-best tag."
QUESTIONS = ["Recommend a film for a rainy evening.", "What should I watch with my friends tonight?",
             "Suggest a movie I have probably never heard of.", "Which film would make a good double feature?",
             "Name a movie that is worth seeing twice.", "What is a good film for a long flight?",
             "Recommend something short I can watch at lunch.", "Which movie has the best soundtrack?",
             "Suggest a film to watch with my parents.", "What film would you show someone new to cinema?",
             "Recommend a movie that is better than its reviews.", "Which film should I see in a cinema?",
             "Suggest a classic I should not miss.", "What is a good movie to fall asleep to?",
             "Recommend a film with a great ending.", "Which recent film is worth the hype?"]


def profiles(cfg, users: int) -> list[str]:
    """One profile text per synthetic LaMP-2M user, as the embed stage builds it (stand-in summary)."""
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.profiles.build import build_profiles

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=cfg.seed, users=users, history_items=cfg.data.synth.history_items,
                       queries_per_user=1, tasks=("LaMP-2M",))
        records = load_lamp("LaMP-2M", Path(tmp) / "LaMP-2M")[:users]
    return [build_profiles(r, STAND_IN_SUMMARY, cfg.profile.retrieval_k).query_texts[r.queries[0].id]
            for r in records]


def write_checkpoint(cfg, out: Path) -> Path:
    """A checkpoint directory of the preset's sizes with random weights, as the train stage writes one."""
    from p2p.hyper.checkpoint import save_hypernetwork

    lora = lora_shape(cfg)
    layout = target_layout(cfg.model.base_llm, Paths(cfg, ROOT).model_cache, lora.targets)
    hyper = random_hypernetwork(cfg, layout)
    meta = hyper_meta(cfg, layout, EMBEDDING_DIMS[cfg.model.embedder], [BENCH_TASK])
    return save_hypernetwork(out, hyper, meta)


def start_server(checkpoint: Path, cache_dir: Path, tmp: Path, device: str, max_batch: int,
                 extra: list[str]) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp / "serve.log"
    command = [sys.executable, "-m", "p2p.cli", "serve", "--checkpoint", str(checkpoint), "--cache-dir",
               str(cache_dir), "--port", str(port), "--device", device, "--profiles-db", str(tmp / "profiles.db"),
               "--max-batch", str(max_batch), "--api-key-env", "P2P_BENCH_NO_KEY", *extra]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "P2P_BENCH_NO_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"bench serve: the server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url, log
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"bench serve: the server did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def one_request(client, model: str, question: str, profile: str | None, max_tokens: int,
                start: threading.Barrier | None, tolerate: bool = False) -> dict:
    """One streamed request: its completion tokens, time to first token, the gaps between its content chunks and the
    adapter's ms as the server says. With `tolerate`, a request the server fails counts as failed (no tokens)
    instead of ending the bench: under hostile traffic that is what is measured."""
    if start is not None:
        start.wait()
    began = time.perf_counter()
    chunks, tokens, adapter, failed = [], 0, None, False
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"min_tokens": max_tokens} | ({"profile": profile} if profile is not None else {}))
        for chunk in stream:
            p2p = (chunk.model_extra or {}).get("p2p")
            if p2p and p2p["personalised"] and not p2p["adapter_cached"]:
                adapter = p2p["adapter_ms"]
            if chunk.choices and chunk.choices[0].delta.content:
                chunks.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except (openai.OpenAIError, httpx.HTTPError):
        if not tolerate:
            raise
        tokens, failed = 0, True
    return {"tokens": tokens, "ttft_ms": (chunks[0] - began if chunks else 0) * 1000, "adapter_ms": adapter,
            "gaps": np.diff(chunks).tolist(), "failed": failed, "end": time.perf_counter()}


def run_load(client, model: str, texts: list[str | None], max_tokens: int, concurrent: bool,
             tolerate: bool = False) -> dict:
    began = time.perf_counter()
    if concurrent:
        barrier = threading.Barrier(len(texts))
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(lambda i: one_request(client, model, QUESTIONS[i % len(QUESTIONS)], texts[i],
                                                          max_tokens, barrier, tolerate), range(len(texts))))
    else:
        results = [one_request(client, model, QUESTIONS[i % len(QUESTIONS)], texts[i], max_tokens, None, tolerate)
                   for i in range(len(texts))]
    seconds = max(r["end"] for r in results) - began
    tokens = sum(r["tokens"] for r in results)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "ttft_ms_p50": percentile([r["ttft_ms"] for r in results if not r["failed"]], 50),
            "ttft_ms_all": [r["ttft_ms"] for r in results if not r["failed"]],
            "adapter_ms": [r["adapter_ms"] for r in results if r["adapter_ms"] is not None],
            "gaps": [gap for r in results for gap in r["gaps"]], "failed": sum(r["failed"] for r in results)}


def percentile(values: list[float], q: float) -> float | None:
    """None where nothing was measured (under hostile traffic every well-behaved request may fail)."""
    return float(np.percentile(values, q)) if values else None


def pooled(runs: list[dict]) -> dict:
    """Several runs of one load as one: the median run's seconds and tokens/s; first-token times, adapter
    milliseconds, inter-token gaps and failed requests over every request of every run."""
    median = sorted(runs, key=lambda run: run["tokens_per_s"])[len(runs) // 2]
    return {**median, "ttft_ms_all": [t for run in runs for t in run["ttft_ms_all"]],
            "ttft_ms_p50": percentile([t for run in runs for t in run["ttft_ms_all"]], 50),
            "adapter_ms": [ms for run in runs for ms in run["adapter_ms"]],
            "gaps": [gap for run in runs for gap in run["gaps"]], "failed": sum(run["failed"] for run in runs)}


# Hostile clients (--adversarial). Each is a small function `(port, model, stop) -> outcome` that sends one request
# the way a hostile client would, over a raw socket (the official client cannot send the slow or broken ones), and
# returns what came back: the status code, "closed" (the server closed the connection without answering), "timeout"
# (no answer within HOLD_S or before the load ended), "refused" (no connection) or "dropped" (we hung up, by design).
# Every exchange tolerates any answer or none: a hostile client never ends the bench.

BAD_SAMPLING = {"seed": {"seed": 1180591620717411303424}, "temperature": {"temperature": 1e-45},
                "top_p": {"temperature": 1, "top_p": 1e-300}}
BIG_PROFILE_CHARS = 1_000_000  # a 1 MB inline profile (the bench server's --max-body-bytes lets its body in)
HOSTILE_TOKENS = 8             # max_tokens of a hostile request the server accepts
DROP_STREAM_TOKENS = 64        # a stream long enough to be dropped after its first chunk
TRICKLE_BYTES, TRICKLE_PAUSE_S = 8, 1.0  # a slow client's body: ~150 bytes over ~20 s
HOLD_S = 30.0                  # the longest a hostile client waits for an answer
PAUSE_S = 0.2                  # between one hostile client's attempts
LEAD_IN_S = 0.5                # hostile clients start this long before the well-behaved load


def head(port: int, length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def chat_body(model: str, **fields) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}],
                       "max_tokens": HOSTILE_TOKENS} | fields).encode()


def answer(sock: socket.socket, stop: threading.Event, until: bytes = b"\r\n") -> str:
    """The status code of the server's answer once `until` has arrived (the status line by default)."""
    sock.settimeout(0.25)  # short, so a client notices the end of the load
    data, deadline = b"", time.monotonic() + HOLD_S
    while until not in data:
        try:
            got = sock.recv(65536)
        except TimeoutError:
            if stop.is_set() or time.monotonic() > deadline:
                return "timeout"
            continue
        except OSError:
            got = b""
        if not got:
            break
        data += got
    line = data.split(b"\r\n", 1)[0].split(b" ")
    return line[1].decode() if len(line) > 1 and line[0].startswith(b"HTTP/") and b"\r\n" in data else "closed"


def exchange(port: int, data: bytes, stop: threading.Event, until: bytes = b"\r\n") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may have answered (413, 408) and closed before reading it all
            pass
        return answer(sock, stop, until)


def bad_sampling(fields: dict, port: int, model: str, stop: threading.Event) -> str:
    """A chat request with out-of-range sampling parameters (issue 29: they failed every request in the batch)."""
    body = chat_body(model, **fields)
    return exchange(port, head(port, len(body)) + body, stop)


def slow_body(port: int, model: str, stop: threading.Event) -> str:
    """Headers at once, then the body a few bytes at a time with pauses (a slowloris on the body)."""
    body = chat_body(model)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(head(port, len(body)))
            for i in range(0, len(body), TRICKLE_BYTES):
                if stop.wait(TRICKLE_PAUSE_S):
                    return "timeout"
                sock.sendall(body[i:i + TRICKLE_BYTES])
        except OSError:
            pass
        return answer(sock, stop)


def half_headers(port: int, model: str, stop: threading.Event) -> str:
    """Headers that never finish: held until the server gives up on them (or the load ends)."""
    return exchange(port, head(port, 100).split(b"Content-Length")[0], stop)


def drop_stream(port: int, model: str, stop: threading.Event) -> str:
    """A streaming request whose client hangs up after the first chunk (its row should be freed at once)."""
    body = chat_body(model, stream=True, max_tokens=DROP_STREAM_TOKENS)
    return exchange(port, head(port, len(body)) + body, stop, until=b"data:")


def drop_body(port: int, model: str, stop: threading.Event) -> str:
    """A client that hangs up halfway through its body."""
    body = chat_body(model)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head(port, len(body)) + body[:len(body) // 2])
    return "dropped"


def big_profile(text: str, port: int, model: str, stop: threading.Event) -> str:
    """A real chat request with a ~1,000,000-character inline profile, new each time (no cached adapter)."""
    profile = f"{uuid.uuid4().hex}\n{text}"
    profile = (profile * (BIG_PROFILE_CHARS // len(profile) + 1))[:BIG_PROFILE_CHARS]
    body = chat_body(model, profile=profile)
    return exchange(port, head(port, len(body)) + body, stop)


def hostile_clients(profile: str) -> dict[str, Callable[[int, str, threading.Event], str]]:
    return {**{name: partial(bad_sampling, fields) for name, fields in BAD_SAMPLING.items()},
            "slow_body": slow_body, "half_headers": half_headers, "drop_stream": drop_stream,
            "drop_body": drop_body, "big_profile": partial(big_profile, profile)}


def _hostile_loops(port: int, model: str, profile: str, threads: int, kinds: list[str], stop: Any,
                   results: Any) -> None:
    """The hostile process: `threads` of each hostile client of `kinds`, looping until `stop` is set; then their
    outcomes (client -> outcome -> count) go back through `results`."""
    outcomes: dict[str, Counter] = {}
    lock = threading.Lock()

    def loop(name: str, client: Callable[[int, str, Any], str]) -> None:
        while not stop.is_set():
            try:
                outcome = client(port, model, stop)
            except ConnectionRefusedError:
                outcome = "refused"
            except TimeoutError:
                outcome = "timeout"
            except OSError:
                outcome = "closed"
            with lock:
                outcomes.setdefault(name, Counter())[outcome] += 1
            stop.wait(PAUSE_S)

    workers = [threading.Thread(target=loop, args=item, daemon=True)
               for item in hostile_clients(profile).items() if item[0] in kinds for _ in range(threads)]
    for worker in workers:
        worker.start()
    stop.wait()
    for worker in workers:
        worker.join(timeout=HOLD_S)
    with lock:
        results.send({name: dict(counts) for name, counts in outcomes.items()})


@contextmanager
def hostile_traffic(port: int, model: str, profile: str, threads: int, kinds: list[str],
                    outcomes: dict[str, Counter]) -> Iterator[None]:
    """`threads` of each hostile client of `kinds`, looping in the background for as long as the `with` block runs;
    their outcomes are counted into `outcomes`. They run in a process of their own: in this one their Python would hold
    the GIL that the well-behaved clients' threads need to read their streams, which measures the bench, not the
    server. They still share the machine's cores with everything else."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_hostile_loops, args=(port, model, profile, threads, kinds, stop, send),
                              daemon=True)
    process.start()
    time.sleep(LEAD_IN_S)
    try:
        yield
    finally:
        stop.set()
        got = receive.recv() if receive.poll(HOLD_S + 30) else {}
        process.join(timeout=10)
        for name, counts in got.items():
            outcomes.setdefault(name, Counter()).update(counts)


def wait_idle(url: str, seconds: float = 20) -> None:
    """Until the server has no rows and no queue (what a hostile load left, still being answered), at most
    `seconds`: each measured load starts on an idle server."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                health = json.load(response)
            if not health.get("batch_rows") and not health.get("queued"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--adversarial", action="store_true",
                   help="also measure the well-behaved users alone (clean) and beside hostile clients (hostile)")
    p.add_argument("--hostile-threads", type=int, default=1, help="threads of each hostile client (--adversarial)")
    p.add_argument("--hostile-kinds", default=",".join(hostile_clients("")),
                   help="the hostile clients that run, comma-separated (--adversarial; default: all)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="an option passed on to `p2p serve` (repeatable), e.g. --serve-arg=--no-onnx-embedder")
    args = p.parse_args()
    kinds = [kind for kind in args.hostile_kinds.split(",") if kind]
    unknown = sorted(set(kinds) - set(hostile_clients("")))
    if unknown or not kinds:
        raise SystemExit(f"bench serve: --hostile-kinds {args.hostile_kinds!r}: unknown {unknown}; the hostile "
                         f"clients are {', '.join(hostile_clients(''))}")
    if args.random_weights:
        raise SystemExit("bench serve: --random-weights is not supported (the server loads the preset's model)")
    if args.hostile_threads < 1:
        raise SystemExit(f"bench serve: --hostile-threads must be at least 1, got {args.hostile_threads}")

    cfg = load_config(ROOT / "params.yaml", args.preset)
    groups = args.rounds * (3 if args.adversarial else 1)  # p2p rounds, then clean and hostile rounds
    texts = profiles(cfg, args.users * groups)
    rounds = [texts[k * args.users:(k + 1) * args.users] for k in range(groups)]
    # Under --adversarial each hostile client gets a batch row of its own, so what is measured is the hostile
    # requests' effect on the batch, not their taking the well-behaved users' rows; 1 MB profiles must get in.
    max_batch = args.users + (args.hostile_threads * len(kinds) if args.adversarial else 0)
    extra = (["--max-body-bytes", str(4 * BIG_PROFILE_CHARS)] if args.adversarial else []) + args.serve_arg
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(cfg, Path(tmp) / "p2p")
        process, url, _ = start_server(checkpoint, Paths(cfg, ROOT).model_cache, Path(tmp), args.device, max_batch,
                                       extra)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)
            model = client.models.list().data[0].id
            # Warm-up: the first forward passes of each batch shape pay one-off costs (no profile: no adapter made).
            run_load(client, model, [None] * args.users, 4, concurrent=True)
            measured: dict[str, list[dict]] = {"base": [], "p2p": []}
            for users in rounds[:args.rounds]:
                measured["base"].append(run_load(client, model, [None] * args.users, args.max_tokens, True))
                measured["p2p"].append(run_load(client, model, users, args.max_tokens, True))
            loads = {name: pooled(runs) for name, runs in measured.items()}
            loads["serial"] = run_load(client, model, rounds[args.rounds - 1], args.max_tokens, concurrent=False)
            if args.adversarial:
                outcomes: dict[str, Counter] = {}
                hostile: dict[str, list[dict]] = {"clean": [], "hostile": []}
                for k in range(args.rounds):
                    clean_users, hostile_users = rounds[args.rounds + 2 * k], rounds[args.rounds + 2 * k + 1]
                    wait_idle(url)
                    hostile["clean"].append(run_load(client, model, clean_users, args.max_tokens, True, True))
                    wait_idle(url)
                    with hostile_traffic(urlsplit(url).port, model, texts[0], args.hostile_threads, kinds,
                                         outcomes):
                        hostile["hostile"].append(run_load(client, model, hostile_users, args.max_tokens, True, True))
                adversarial = {name: pooled(runs) for name, runs in hostile.items()}
        finally:
            process.terminate()
            process.wait(timeout=30)
    for name, load in loads.items():
        print(f"{name:7s} {load['seconds']:7.2f} s  {load['tokens']:5d} tokens  {load['tokens_per_s']:7.1f} tokens/s  "
              f"first token p50 {load['ttft_ms_p50']:7.1f} ms")
    adapter_ms = loads["p2p"]["adapter_ms"]
    if len(adapter_ms) != args.users * args.rounds:
        raise SystemExit(f"bench serve: {len(adapter_ms)} of {args.users * args.rounds} adapters were made on the spot")
    tps = {name: load["tokens_per_s"] for name, load in loads.items()}
    result = {"preset": cfg.preset, "model": cfg.model.base_llm, "device": args.device, "users": args.users,
              "max_tokens": args.max_tokens, "rounds": args.rounds, "tokens_per_s_base": round(tps["base"], 2),
              "tokens_per_s_p2p": round(tps["p2p"], 2), "tokens_per_s_serial": round(tps["serial"], 2),
              "ratio_vs_base": round(tps["p2p"] / tps["base"], 3),
              "speedup_vs_serial": round(tps["p2p"] / tps["serial"], 2),
              "adapter_ms_p50": round(float(np.percentile(adapter_ms, 50)), 1),
              "adapter_ms_p99": round(float(np.percentile(adapter_ms, 99)), 1),
              "ttft_ms_p50_base": round(loads["base"]["ttft_ms_p50"], 1),
              "ttft_ms_p50_p2p": round(loads["p2p"]["ttft_ms_p50"], 1)}
    if args.adversarial:
        result |= adversarial_report(adversarial, outcomes, args.hostile_threads)
    report(result)


def adversarial_report(loads: dict[str, dict], outcomes: dict[str, Counter], threads: int) -> dict:
    """Prints the clean and hostile loads and the hostile clients' outcomes; returns their keys of the JSON."""
    clean, hostile = loads["clean"], loads["hostile"]
    gap_p99 = {name: percentile(load["gaps"], 99) for name, load in loads.items()}
    ratio = hostile["tokens_per_s"] / clean["tokens_per_s"] if clean["tokens_per_s"] else None
    print(f"\nwell-behaved users alone (clean) and beside hostile clients (hostile), {threads} thread(s) of each:")
    print(f"{'load':8s} {'tokens/s':>9s} {'gap p99 s':>10s} {'first token p50 ms':>19s} {'failed':>7s}")
    for name, load in loads.items():
        gap = f"{gap_p99[name]:10.3f}" if gap_p99[name] is not None else f"{'-':>10s}"
        ttft = f"{load['ttft_ms_p50']:19.1f}" if load["ttft_ms_p50"] is not None else f"{'-':>19s}"
        print(f"{name:8s} {load['tokens_per_s']:9.1f} {gap} {ttft} {load['failed']:7d}")
    if ratio is not None and gap_p99["hostile"] is not None:
        print(f"hostile / clean tokens/s {ratio:.3f} (issue 29's target: at least 0.8); hostile gap p99 "
              f"{gap_p99['hostile']:.3f} s (target: under 0.5 s)")
    print("hostile clients' outcomes over every hostile load (status code, closed, timeout, refused, dropped):")
    for name, counts in outcomes.items():
        print(f"  {name:13s} " + ", ".join(f"{outcome}: {n}" for outcome, n in sorted(counts.items())))
    return {"tokens_per_s_clean": round(clean["tokens_per_s"], 2),
            "tokens_per_s_hostile": round(hostile["tokens_per_s"], 2),
            "hostile_ratio": rounded(ratio, 3), "gap_p99_s_clean": rounded(gap_p99["clean"], 4),
            "gap_p99_s_hostile": rounded(gap_p99["hostile"], 4), "ttft_ms_p50_clean": rounded(clean["ttft_ms_p50"], 1),
            "ttft_ms_p50_hostile": rounded(hostile["ttft_ms_p50"], 1),
            "failed_clean": clean["failed"], "failed_hostile": hostile["failed"], "hostile_threads": threads,
            "hostile_outcomes": {name: dict(sorted(counts.items())) for name, counts in outcomes.items()}}


def rounded(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


if __name__ == "__main__":
    main()
