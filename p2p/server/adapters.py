"""Adapters made on the spot, kept in memory only: an LRU keyed by the hash of what the adapter is made from.

Making one costs the profile's embedding (as the embed stage embeds it: the checkpoint's pooling and instruction,
through `Personalizer.embed`) and one hypernetwork forward. An adapter is user data (it can leak its profile), so
it is never written to disk; the key is a sha256, so the cache holds no profile text either.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from p2p.hyper.personalize import Personalizer
from p2p.lora.hooks import Adapters


@dataclass(frozen=True)
class Made:
    adapters: Adapters  # a batch of one
    ms: float  # embedding + hypernetwork forward; 0 when it came from the cache
    cached: bool


def profile_key(profile: str, task: str | None) -> str:
    """What identifies an adapter: the profile text and its task."""
    return hashlib.sha256(json.dumps([task, profile]).encode("utf-8")).hexdigest()


class AdapterCache:
    """`get(profile, task)` from the engine thread; `drop(key)` from any thread (a deleted profile)."""

    def __init__(self, personalizer: Personalizer, size: int):
        if size < 0:
            raise ValueError(f"the adapter cache size must be at least 0, got {size}")
        self.personalizer, self.size = personalizer, size
        self._items: OrderedDict[str, Adapters] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, profile: str, task: str | None) -> str:
        # The task standardises the embedding (and an instruction embedder reads it), so it is part of the key, as
        # `Personalizer.task` resolves it: a stored profile saved without a task drops the adapter `get` made.
        try:
            task = self.personalizer.task(task)
        except ValueError:
            pass  # a task it was not trained on: `get` never made an adapter for it
        return profile_key(profile, task)

    def get(self, profile: str, task: str | None) -> Made:
        key = self.key(profile, task)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return Made(self._items[key], 0.0, True)
        began = time.perf_counter()
        adapters = self.personalizer.adapters(self.personalizer.embed([profile], task), task)
        ms = (time.perf_counter() - began) * 1000
        with self._lock:
            if self.size:
                self._items[key] = adapters
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return Made(adapters, ms, False)

    def drop(self, key: str) -> bool:
        with self._lock:
            return self._items.pop(key, None) is not None
