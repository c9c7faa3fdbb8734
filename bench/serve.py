"""Serving benchmark: `p2p serve` on loopback under a bounded load, replayed with the official `openai` client.

    p2p bench serve --preset cpu [--users 16] [--max-tokens 128] [--rounds 3]

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
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import BENCH_TASK, ROOT, parser, random_hypernetwork, report

from p2p.config import load_config
from p2p.layout import Layout
from p2p.lora.targets import target_layout
from p2p.models.presets import EMBEDDING_DIMS
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
    layout = target_layout(cfg.model.base_llm, Layout(cfg, ROOT).model_cache, lora.targets)
    hyper = random_hypernetwork(cfg, layout)
    meta = hyper_meta(cfg, layout, EMBEDDING_DIMS[cfg.model.embedder], [BENCH_TASK])
    return save_hypernetwork(out, hyper, meta)


def start_server(checkpoint: Path, cache_dir: Path, tmp: Path, device: str, users: int) -> tuple[subprocess.Popen,
                                                                                                   str, Path]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp / "serve.log"
    command = [sys.executable, "-m", "p2p.cli", "serve", "--checkpoint", str(checkpoint), "--cache-dir",
               str(cache_dir), "--port", str(port), "--device", device, "--profiles-db", str(tmp / "profiles.db"),
               "--max-batch", str(users), "--api-key-env", "P2P_BENCH_NO_KEY"]
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
                start: threading.Barrier | None) -> dict:
    """One streamed request: its completion tokens, time to first token, and the adapter's ms as the server says."""
    if start is not None:
        start.wait()
    began = time.perf_counter()
    first, tokens, adapter = None, 0, None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True},
        extra_body={"min_tokens": max_tokens} | ({"profile": profile} if profile is not None else {}))
    for chunk in stream:
        p2p = (chunk.model_extra or {}).get("p2p")
        if p2p and p2p["personalised"] and not p2p["adapter_cached"]:
            adapter = p2p["adapter_ms"]
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - began
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"tokens": tokens, "ttft_ms": (first or 0) * 1000, "adapter_ms": adapter, "end": time.perf_counter()}


def run_load(client, model: str, texts: list[str | None], max_tokens: int, concurrent: bool) -> dict:
    began = time.perf_counter()
    if concurrent:
        barrier = threading.Barrier(len(texts))
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(lambda i: one_request(client, model, QUESTIONS[i % len(QUESTIONS)], texts[i],
                                                          max_tokens, barrier), range(len(texts))))
    else:
        results = [one_request(client, model, QUESTIONS[i % len(QUESTIONS)], texts[i], max_tokens, None)
                   for i in range(len(texts))]
    seconds = max(r["end"] for r in results) - began
    tokens = sum(r["tokens"] for r in results)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "ttft_ms_p50": float(np.percentile([r["ttft_ms"] for r in results], 50)),
            "ttft_ms_all": [r["ttft_ms"] for r in results],
            "adapter_ms": [r["adapter_ms"] for r in results if r["adapter_ms"] is not None]}


def pooled(runs: list[dict]) -> dict:
    """Several runs of one load as one: the median run's seconds and tokens/s, first-token time and adapter
    milliseconds over every request of every run."""
    median = sorted(runs, key=lambda run: run["tokens_per_s"])[len(runs) // 2]
    return {**median, "ttft_ms_all": [t for run in runs for t in run["ttft_ms_all"]],
            "ttft_ms_p50": float(np.percentile([t for run in runs for t in run["ttft_ms_all"]], 50)),
            "adapter_ms": [ms for run in runs for ms in run["adapter_ms"]]}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.random_weights:
        raise SystemExit("bench serve: --random-weights is not supported (the server loads the preset's model)")
    import openai

    cfg = load_config(ROOT / "params.yaml", args.preset)
    texts = profiles(cfg, args.users * args.rounds)
    rounds = [texts[k * args.users:(k + 1) * args.users] for k in range(args.rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(cfg, Path(tmp) / "p2p")
        process, url, _ = start_server(checkpoint, Layout(cfg, ROOT).model_cache, Path(tmp), args.device, args.users)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)
            model = client.models.list().data[0].id
            # Warm-up: the first forward passes of each batch shape pay one-off costs (no profile: no adapter made).
            run_load(client, model, [None] * args.users, 4, concurrent=True)
            measured: dict[str, list[dict]] = {"base": [], "p2p": []}
            for users in rounds:
                measured["base"].append(run_load(client, model, [None] * args.users, args.max_tokens, True))
                measured["p2p"].append(run_load(client, model, users, args.max_tokens, True))
            loads = {name: pooled(runs) for name, runs in measured.items()}
            loads["serial"] = run_load(client, model, rounds[-1], args.max_tokens, concurrent=False)
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
    report({"preset": cfg.preset, "model": cfg.model.base_llm, "device": args.device, "users": args.users,
            "max_tokens": args.max_tokens, "rounds": args.rounds, "tokens_per_s_base": round(tps["base"], 2),
            "tokens_per_s_p2p": round(tps["p2p"], 2), "tokens_per_s_serial": round(tps["serial"], 2),
            "ratio_vs_base": round(tps["p2p"] / tps["base"], 3),
            "speedup_vs_serial": round(tps["p2p"] / tps["serial"], 2),
            "adapter_ms_p50": round(float(np.percentile(adapter_ms, 50)), 1),
            "adapter_ms_p99": round(float(np.percentile(adapter_ms, 99)), 1),
            "ttft_ms_p50_base": round(loads["base"]["ttft_ms_p50"], 1),
            "ttft_ms_p50_p2p": round(loads["p2p"]["ttft_ms_p50"], 1)})


if __name__ == "__main__":
    main()
