"""Pixel statistics the training side needs: per-channel mean/std and the RGB PCA basis.

Ingest workers return per-image moments (sum, sum of outer products, count) over every other
pixel in each direction (a quarter of the pixels: the statistics of a 256 px image do not need
65k samples, and the full product was ~10% of ingest time); the driver adds them up and calls
`finalize`. The result does not depend on the number of workers.
"""

from __future__ import annotations

import numpy as np


def moments(pixels: np.ndarray, stride: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """HxWx3 uint8 -> (sum of RGB (3,), sum of RGB outer products (3,3), pixel count), 0-1 scale,
    over every `stride`-th pixel in each direction."""
    # Channel-major (3, N) copy: numpy sums contiguous rows much faster than the columns of an
    # (N, 3) array (figures in benchmarks/RESULTS.md).
    channels = np.ascontiguousarray(pixels[::stride, ::stride].reshape(-1, 3).T, dtype=np.float64) / 255.0
    return channels.sum(axis=1), channels @ channels.T, channels.shape[1]


def finalize(total: np.ndarray, outer: np.ndarray, count: int) -> dict:
    """Mean, std, and the eigen-decomposition of the RGB covariance (AlexNet's PCA lighting)."""
    if count == 0:
        raise ValueError("no training pixels to compute statistics from")
    total, outer = np.asarray(total, dtype=np.float64), np.asarray(outer, dtype=np.float64).reshape(3, 3)
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return {
        "pixel_mean": mean.tolist(),
        "pixel_std": np.sqrt(np.clip(np.diag(cov), 1e-12, None)).tolist(),
        "pca_eigval": np.clip(eigval[order], 0, None).tolist(),
        "pca_eigvec": eigvec[:, order].tolist(),
    }
