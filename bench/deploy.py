"""Deployment benchmark (paper Fig. 4): seconds per user to obtain a personalised adapter, P2P vs OPPU.

    p2p bench deploy --preset cpu [--users 8] [--out reports/bench]

Same base model, same users (synthetic LaMP-2M users with the preset's history length), one user at a time as a
deployment meets them:
- p2p: `Personalizer.make` as `p2p personalize` runs it: embed the user's profile text (the preset's embedder and
  pooling, one profile at a time, unbatched) and run the hypernetwork once;
- oppu: train a fresh LoRA on the user's history with the preset's `oppu` settings (the authors' 2 epochs at
  lr 1e-4), exactly what the oppu stage runs.
The profile text uses a fixed stand-in summary: the LLM summary is made once per user for either method's
profile-based baselines and is not part of obtaining the adapter (the paper times the same way). The hypernetwork
has random weights (speed does not depend on weight values). Writes deploy.csv (cumulative seconds per user count)
and deploy.png to --out. Last line: one JSON object with p2p_s_per_user, oppu_s_per_user, speedup, users.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import BENCH_TASK, ROOT, parser, report, setup

STAND_IN_SUMMARY = "Tags films by their dominant theme; consistent, decisive, rarely picks a second-best tag."


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = p.parse_args()
    cfg, model, tokenizer, layout, lora, hyper = setup(args)

    from p2p.baselines.oppu import train_users
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.hyper.personalize import Personalizer
    from p2p.io import write_text
    from p2p.paths import Paths
    from p2p.profiles.build import build_profiles
    from p2p.profiles.profile_embedder import profile_embedder
    from p2p.report.figures import line_figure
    from p2p.stages.common import embedder_model
    from p2p.stages.train import hyper_meta

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=cfg.seed, users=args.users, history_items=cfg.data.synth.history_items,
                       queries_per_user=1, tasks=("LaMP-2M",))
        records = load_lamp("LaMP-2M", Path(tmp) / "LaMP-2M")[:args.users]
    embedder = profile_embedder(cfg.model.embedder_kind, embedder_model(cfg), Paths(cfg, ROOT).model_cache,
                                args.device)  # as Personalizer.from_checkpoint makes it
    texts = [build_profiles(r, STAND_IN_SUMMARY, cfg.profile.retrieval_k).query_texts[r.queries[0].id]
             for r in records]
    meta = hyper_meta(cfg, layout, embedder.dim, [BENCH_TASK])
    personalizer = Personalizer(model, tokenizer, hyper.eval(), meta, embedder)
    personalizer.make(["warm-up"], BENCH_TASK)  # lazily-initialised parts load outside the timed region

    p2p_seconds, oppu_seconds = [], []
    for text in texts:
        began = time.perf_counter()
        made = personalizer.make([text], BENCH_TASK)
        _ = made.adapters.a[next(iter(made.adapters.a))].sum().item()  # on a GPU, wait for the device
        p2p_seconds.append(time.perf_counter() - began)
    for record in records:
        (run,) = train_users(model, tokenizer, layout, lora, [record], cfg.oppu, seed=cfg.seed)  # one user arrives
        oppu_seconds.append(run.seconds)

    def cumulative(values: list[float]) -> list[float]:
        out, total = [], 0.0
        for v in values:
            total += v
            out.append(total)
        return out

    p2p_cum, oppu_cum = cumulative(p2p_seconds), cumulative(oppu_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "deploy.csv", "users,p2p_seconds,oppu_seconds\n" + "".join(
        f"{i + 1},{a:.4f},{b:.4f}\n" for i, (a, b) in enumerate(zip(p2p_cum, oppu_cum))))
    line_figure({"P2P (embed + hypernetwork)": list(enumerate(p2p_cum, start=1)),
                 "OPPU (LoRA per user)": list(enumerate(oppu_cum, start=1))}, args.out / "deploy.png",
                title=f"Time to personalise ({cfg.preset} preset)", xlabel="users", ylabel="cumulative seconds")
    p2p_mean, oppu_mean = p2p_cum[-1] / len(texts), oppu_cum[-1] / len(records)
    print(f"p2p {p2p_mean:.4f} s/user, oppu {oppu_mean:.2f} s/user ({cfg.oppu.epochs} epochs, batch "
          f"{cfg.oppu.batch_size}, {len(records[0].history)} history items); wrote {args.out / 'deploy.csv'}")
    report({"users": len(records), "p2p_s_per_user": p2p_mean, "oppu_s_per_user": oppu_mean,
            "speedup": oppu_mean / p2p_mean, "preset": cfg.preset})


if __name__ == "__main__":
    main()
