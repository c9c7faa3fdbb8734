"""What the server exposes at `/metrics` (Prometheus text format): counts, sizes and timings, never texts.

Each app gets its own registry, so several servers (or tests) in one process do not share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("p2p_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.completions = Counter("p2p_completions", "chat completions finished, by kind (base, profile, user) "
                                   "and finish reason", ["kind", "finish_reason"], registry=r)
        self.queue_depth = Gauge("p2p_queue_depth", "requests waiting for a batch row", registry=r)
        self.batch_rows = Gauge("p2p_batch_rows", "rows in the running batch", registry=r)
        self.batch_size = Histogram("p2p_batch_size", "rows per decode step", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                                    registry=r)
        self.adapter_ms = Histogram("p2p_adapter_milliseconds", "making an adapter that was not cached: profile "
                                    "embedding + one hypernetwork forward", buckets=_MS, registry=r)
        self.adapters_cached = Gauge("p2p_adapters_cached", "adapters in the in-memory LRU", registry=r)
        self.adapter_cache_hits = Counter("p2p_adapter_cache_hits", "adapters found in the in-memory LRU",
                                          registry=r)
        self.ttft = Histogram("p2p_time_to_first_token_seconds", "request arrival to its first answer token",
                              buckets=_SECONDS, registry=r)
        self.tokens = Counter("p2p_generated_tokens", "answer tokens of finished requests", registry=r)
        self.tokens_per_s = Gauge("p2p_tokens_per_second", "tokens per second of the last decode step (all rows)",
                                  registry=r)

    def step(self, rows: int, seconds: float) -> None:
        """One decode step of `rows` rows (the engine's `on_step`)."""
        self.batch_size.observe(rows)
        if seconds > 0:
            self.tokens_per_s.set(rows / seconds)
