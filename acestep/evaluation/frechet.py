"""The Fréchet distance between two sets of embeddings, each summarised as a Gaussian (mean, covariance).

d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2). The trace term goes through symmetric
eigen-decompositions, which stay real and stable for the rank-deficient covariances of a handful of songs.
"""

from __future__ import annotations

import numpy as np


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of [n, d] embeddings; one embedding has zero covariance."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError("embeddings must be [n >= 1, d]")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]) if x.shape[0] > 1 else np.zeros((x.shape[1],) * 2)
    return mean, cov


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)
    return max(value, 0.0)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two embedding sets."""
    return frechet_distance(*gaussian(a), *gaussian(b))
