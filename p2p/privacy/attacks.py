"""The attacks of the privacy audit, on numbers an attacker could hold (docs/privacy.md says who holds what).

- `adapter_features`: what an attacker reads from a LoRA adapter. The update a LoRA makes is dW = B A per layer;
  (A, B) themselves are not identifiable (B G, G^-1 A is the same update), so two OPPU users trained from different
  initialisations could share dW and differ in A and B. The features are a fixed two-sided random sketch
  U^T dW V of every layer's update (U, V Gaussian, `width` columns each, drawn from a public seed): invariant to
  that ambiguity, and inner products of sketches estimate those of the updates (Johnson-Lindenstrauss), at
  layers x kinds x width^2 numbers per adapter instead of millions.
- `ridge_probe`: a linear probe from features to the planted preference, fitted on users the attacker knows.
- `linkage_similarity`: which candidate profile an adapter came from, by cosine similarity.
- `inversion_map`: a ridge regression from adapter features back to the profile embedding.
- membership scores are the per-item losses the stage computes (`loss` and `calibrated`, as LoRA-Leak).
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.lora.hooks import Adapters


def adapter_features(adapters: Adapters, width: int = 8, seed: int = 0) -> np.ndarray:
    """(rows, features): per module type and layer, U^T (B A) V flattened, U (d_out, width) and V (d_in, width)
    Gaussian from `seed`, scaled by 1/width so the sketch's inner products estimate the updates'."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for kind in sorted(adapters.a):
        a, b = adapters.a[kind].float().cpu(), adapters.b[kind].float().cpu()  # (n, L, r, d_in), (n, L, d_out, r)
        v = torch.randn(a.shape[-1], width, generator=generator)
        u = torch.randn(b.shape[-2], width, generator=generator)
        sketch = (u.T @ b) @ (a @ v) / width  # (n, L, width, width)
        parts.append(sketch.reshape(len(sketch), -1))
    return torch.cat(parts, dim=1).numpy().astype(np.float64)


def standardizer(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the fitting rows' columns; a constant column is left unscaled."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


#: Ridge penalties the attacker chooses among by leave-one-out error on his own fitting rows, per feature.
PENALTIES = tuple(float(x) for x in np.logspace(-3, 3, 7))


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray):
    """A linear map from standardised features to the targets (a vector or one column per target), its penalty
    chosen by leave-one-out error on the fitting rows (what an attacker can do with his own data). Returns the
    function that predicts new rows."""
    from sklearn.linear_model import RidgeCV

    mean, std = standardizer(train_x)
    width = train_x.shape[1]
    ridge = RidgeCV(alphas=[p * width for p in PENALTIES]).fit((train_x - mean) / std, train_y)

    def predict(x: np.ndarray) -> np.ndarray:
        return ridge.predict((x - mean) / std)

    return predict


def cosine_similarity(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(n_rows, n_candidates) cosine similarities (a zero vector is similar to nothing)."""
    def unit(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1.0)

    return unit(np.asarray(rows, dtype=float)) @ unit(np.asarray(candidates, dtype=float)).T


def inversion_map(train_features: np.ndarray, train_embeddings: np.ndarray):
    """adapter features -> estimated profile embedding (`ridge_probe`), fitted on pairs the attacker made himself:
    profiles he chose and their adapters through the public hypernetwork, or users whose adapters and profiles he
    holds."""
    return ridge_probe(train_features, train_embeddings)
