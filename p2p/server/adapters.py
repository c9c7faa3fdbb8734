"""Adapters made on the spot, kept in memory only: an LRU whose keys say whose adapter it is.

Making one costs the profile's embedding (as the embed stage embeds it: the checkpoint's pooling and instruction,
through `Personalizer.embed`) and one hypernetwork forward. An adapter is user data (it can leak its profile), so
it is never written to disk, and its key holds no profile text:
- a stored profile's adapter is keyed by (user, version, task): a PUT or DELETE makes a new version (or none), so no
  request, on this replica or another sharing the store, can reach the old adapter again; `revoke` drops it from
  memory at once, including one being made at that moment, and `sweep` drops the ones another replica made stale;
- an inline profile's adapter is keyed by (owner, sha256 of task and text): a client sees a cache hit (and its
  speed) only for a profile text its own key sent before, never for another owner's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from p2p.lora.hooks import Adapters

#: ("user", user id, version, task) or ("inline", owner, sha256 hex of task and text, None).
Key = tuple[str, str, object, object]


@dataclass(frozen=True)
class Made:
    adapters: Adapters  # a batch of one
    ms: float  # embedding + hypernetwork forward; 0 when it came from the cache
    cached: bool


def stored_key(user: str, version: int, task: str | None) -> Key:
    """A stored user's adapter: the task is part of it, as a request may ask for another task than the stored one."""
    return ("user", user, version, task)


def inline_key(owner: str, profile: str, task: str | None) -> Key:
    return ("inline", owner, hashlib.sha256(json.dumps([task, profile]).encode("utf-8")).hexdigest(), None)


class AdapterCache:
    """`get(key, make)` from the adapter worker; `revoke` and `sweep` from any thread."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"the adapter cache size must be at least 0, got {size}")
        self.size = size
        self._items: OrderedDict[Key, Adapters] = OrderedDict()
        self._making: Counter[Key] = Counter()  # keys whose adapter is being made now
        self._revoked: set[Key] = set()  # ... and must not enter the cache when it is done
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key, make: Callable[[], Adapters]) -> Made:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return Made(self._items[key], 0.0, True)
            self._making[key] += 1
        began = time.perf_counter()
        try:
            adapters = make()
        finally:
            with self._lock:
                self._making[key] -= 1
                revoked = key in self._revoked
                if not self._making[key]:
                    del self._making[key]
                    self._revoked.discard(key)
        ms = (time.perf_counter() - began) * 1000
        if self.size and not revoked:
            with self._lock:
                self._items[key] = adapters
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return Made(adapters, ms, False)

    def revoke(self, user: str) -> int:
        """Drop every adapter of stored user `user` (any version), and keep out one being made now; returns how
        many were in memory."""
        with self._lock:
            gone = [key for key in self._items if key[0] == "user" and key[1] == user]
            for key in gone:
                del self._items[key]
            self._revoked.update(key for key in self._making if key[0] == "user" and key[1] == user)
            return len(gone)

    def users(self) -> set[str]:
        """The stored users with an adapter in memory."""
        with self._lock:
            return {str(key[1]) for key in self._items if key[0] == "user"}

    def sweep(self, versions: Callable[[Collection[str]], dict[str, int]]) -> int:
        """Drop the stored users' adapters whose version is no longer the store's (`versions(users)`: the current
        version of each user that still has a profile); returns how many were dropped."""
        current = versions(self.users())
        with self._lock:
            stale = [key for key in self._items if key[0] == "user" and current.get(str(key[1])) != key[2]]
            for key in stale:
                del self._items[key]
            return len(stale)
