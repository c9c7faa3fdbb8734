"""Profile embedding for adapters on the spot: PyTorch (sentence-transformers) against ONNX Runtime, alone and beside
a busy Python thread, as in a server.

    p2p bench embedder --preset cpu [--profiles 12]

Both embed synthetic LaMP-2M profiles (as `bench serve` builds them: three sections of about 26, 22 and 200 tokens)
the way `p2p serve` does (`profile_embedder`, sections pooling), from a worker thread, one profile at a time, each
profile new. `busy`: meanwhile another thread runs pure Python (JSON round trips), as the HTTP threads of a server
do while the engine thread makes an adapter. Eager PyTorch takes the GIL back after each of the encoder's ops, so it
waits for that thread at every op; ONNX Runtime releases it once per forward. Prints ms per profile (median) for
each case and, last, one JSON object with them and the ratios torch / onnx.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch
from common import ROOT, parser, report
from serve import profiles

from p2p.config import load_config
from p2p.paths import Paths
from p2p.profiles.embeddings import embed_profiles, scale_rows
from p2p.profiles.profile_embedder import profile_embedder


def median_ms(embedder, texts: list[str], busy: bool) -> float:
    """Median ms per profile, embedded one at a time in a worker thread (beside a busy Python thread if `busy`)."""
    done, times = threading.Event(), []

    def python_work() -> None:
        payload = {"id": "chatcmpl-1", "choices": [{"delta": {"content": "token"}}] * 8}
        while not done.is_set():
            json.loads(json.dumps(payload))

    def embed_all() -> None:
        for text in texts:
            began = time.perf_counter()
            embed_profiles([text], lambda strings: scale_rows(embedder.encode(strings)), "sections")
            times.append((time.perf_counter() - began) * 1000)

    other = threading.Thread(target=python_work) if busy else None
    if other is not None:
        other.start()
    worker = threading.Thread(target=embed_all)
    worker.start()
    worker.join()
    done.set()
    if other is not None:
        other.join()
    return float(np.median(times))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--profiles", type=int, default=12, help="profiles per case (each case gets new ones)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime takes torch's thread count
    cfg = load_config(ROOT / "params.yaml", args.preset)
    if cfg.model.embedder_kind != "sentence":
        raise SystemExit(f"bench embedder: preset {cfg.preset} embeds with {cfg.model.embedder_kind!r}; "
                         f"only a sentence embedder runs in ONNX Runtime")
    cache = Paths(cfg, ROOT).model_cache
    embedders = {"torch": profile_embedder("sentence", cfg.model.embedder, cache, "cpu"),
                 "onnx": profile_embedder("sentence", cfg.model.embedder, cache, "cpu", onnx=True)}
    if type(embedders["onnx"]) is type(embedders["torch"]):
        raise SystemExit("bench embedder: the ONNX embedder did not load (see the warning above)")
    cases = [(name, busy) for busy in (False, True) for name in embedders]
    texts = profiles(cfg, args.profiles * (len(cases) + 1))
    for embedder in embedders.values():
        embedder.encode(texts[:3])  # warm-up
    ms = {}
    for k, (name, busy) in enumerate(cases, start=1):
        key = f"{name}_{'busy' if busy else 'alone'}_ms"
        ms[key] = round(median_ms(embedders[name], texts[k * args.profiles:(k + 1) * args.profiles], busy), 1)
        print(f"{name:5s} {'beside a busy thread' if busy else 'alone':21s} {ms[key]:8.1f} ms per profile")
    report({"preset": cfg.preset, "embedder": cfg.model.embedder, "profiles": args.profiles, **ms,
            "torch_over_onnx_alone": round(ms["torch_alone_ms"] / ms["onnx_alone_ms"], 2),
            "torch_over_onnx_busy": round(ms["torch_busy_ms"] / ms["onnx_busy_ms"], 2)})


if __name__ == "__main__":
    main()
