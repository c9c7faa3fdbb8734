"""The privacy defence: Gaussian noise on the clipped profile embedding, before the hypernetwork sees it.

A P2P adapter is a deterministic function of the profile embedding through a public hypernetwork, so whoever holds
the adapter may recover what the embedding says about the user (docs/privacy.md measures how much). Clipping each
embedding to the L2 norm `clip * sqrt(dim)` bounds how far two users' embeddings can lie apart (`sensitivity`:
2 clip sqrt(dim)); Gaussian noise of standard deviation `scale` per coordinate then makes the released adapter a
Gaussian mechanism over the whole profile (its epsilon: p2p.privacy.metrics.gaussian_epsilon). The embed stage
scales every embedding to norm sqrt(dim) (p2p.profiles.embeddings.scale_rows), so a coordinate's RMS is 1 and
`scale` reads in units of it: at scale 1 the noise is as large as the profile.

Each row's noise is drawn from a generator seeded by a secret and the row's key (the pipeline: the run's seed and
the query id; `p2p serve`: a secret drawn at start-up and the profile text), so a profile asked for twice gets the
same adapter: an attacker cannot average repeated releases of one profile to cancel the noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingNoise:
    scale: float = 0.0  # noise standard deviation per coordinate (0: off)
    clip: float = 1.0  # the largest L2 norm, in units of sqrt(dim) (1: the norm the embed stage gives)

    def __post_init__(self) -> None:
        if self.scale < 0 or not math.isfinite(self.scale):
            raise ValueError(f"noise scale must be a finite number >= 0, got {self.scale}")
        if self.clip <= 0 or not math.isfinite(self.clip):
            raise ValueError(f"noise clip must be a finite number > 0, got {self.clip}")

    @property
    def active(self) -> bool:
        return self.scale > 0

    def sensitivity(self, dim: int) -> float:
        """The L2 distance two users' clipped embeddings can be apart: the Gaussian mechanism's sensitivity."""
        return 2 * self.clip * math.sqrt(dim)

    def apply(self, embeddings: np.ndarray, keys: Sequence[str], secret: str | bytes) -> np.ndarray:
        """Each row clipped to norm clip * sqrt(dim), plus noise drawn from (secret, its key); unchanged when off."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if not self.active:
            return embeddings
        if len(keys) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(keys)} noise keys")
        dim = embeddings.shape[1]
        limit = self.clip * math.sqrt(dim)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        clipped = embeddings * np.minimum(1.0, limit / np.where(norms > 0, norms, 1.0))
        noise = np.stack([row_generator(secret, key).standard_normal(dim) for key in keys])
        return (clipped + self.scale * noise).astype(np.float32)


def row_generator(secret: str | bytes, key: str) -> np.random.Generator:
    """The generator of one row's noise: a hash of the secret and the row's key."""
    secret = secret.encode() if isinstance(secret, str) else secret
    digest = hashlib.sha256(secret + b"\0" + key.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))
