"""Cross-river positions of datapath curves per layer (paper Sec. 5.2; the rules are stated in ``http_api.md``, route ``river``).

A river has one curve per datapath; at each of the L layers the screen distance
between two curves stands for the distance between their datapaths. Positions ``y``
are in [0, 1] (0 = top of the river band).

- :func:`rule_layout`, three datapaths (source, adversarial, target): source and target
  sit symmetrically about 0.5 at a screen distance proportional to d1 (source-target),
  scaled so the widest layer spans [0, 1]; the adversarial curve lies between them,
  splitting that distance at the ratio d2 (adversarial-source) : d3 (adversarial-target).
- :func:`least_squares_layout`, any number n >= 2 of datapaths: the vertical order is
  fixed, so positions are cumulative sums of the n - 1 gaps between neighbours. The gaps
  g[l, k] >= 0 of all layers solve one non-negative least-squares problem::

      min_g  sum_l sum_{a<b} (sum_{k=a}^{b-1} g[l, k] - D_l[o_a, o_b])^2
           + smoothness * sum_l sum_k (g[l+1, k] - g[l, k])^2

  (:func:`nnls.nnls`), so the order is kept by construction and the curves stay
  calm across layers. Each layer is then centred on 0.5 and all layers share one scale
  so the widest layer spans [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tensorboard_plugin_aevis.layouts.nnls import nnls

ROLE_ORDER = {"source": 0, "adversarial": 1, "target": 2}


@dataclasses.dataclass
class RiverLayout:
    """``y``: (n, L) positions in [0, 1], row i for datapath i of the input;
    ``order``: datapath indices from top to bottom; ``scale``: screen units per unit of
    datapath distance (0 when every distance is 0); ``layout``: "rule" or "least_squares"."""

    layout: str
    y: np.ndarray
    order: list
    scale: float


def rule_layout(d_source_target: np.ndarray, d_adversarial_source: np.ndarray, d_adversarial_target: np.ndarray) -> RiverLayout:
    """Sec. 5.2 rule layout; inputs are (L,) per-layer distances d1, d2, d3.
    Rows of ``y``: source, adversarial, target."""
    d1, d2, d3 = (_check_curve(name, d) for name, d in (
        ("d_source_target", d_source_target), ("d_adversarial_source", d_adversarial_source), ("d_adversarial_target", d_adversarial_target)))
    if not (d1.shape == d2.shape == d3.shape):
        raise ValueError(f"the three distance curves have shapes {d1.shape}, {d2.shape}, {d3.shape}; they must all be (L,)")
    widest = float(d1.max())
    scale = 1.0 / widest if widest > 0 else 0.0
    half = d1 * scale / 2.0
    source, target = 0.5 - half, 0.5 + half
    total = d2 + d3
    ratio = np.divide(d2, total, out=np.full_like(total, 0.5), where=total > 0)
    adversarial = source + (target - source) * ratio
    return RiverLayout("rule", np.stack([source, adversarial, target]), [0, 1, 2], scale)


def least_squares_layout(distances: np.ndarray, order: Optional[Sequence[int]] = None, smoothness: float = 0.5) -> RiverLayout:
    """Order-preserving NNLS layout of n datapaths; ``distances`` is (L, n, n) per-layer
    datapath distances (symmetric, zero diagonal). ``order`` (top to bottom) defaults to
    :func:`spectral_order`."""
    D = np.asarray(distances, dtype=np.float64)
    if D.ndim != 3 or D.shape[1] != D.shape[2] or D.shape[1] < 2 or D.shape[0] < 1:
        raise ValueError(f"distances have shape {D.shape}; expected (L layers, n, n) with n >= 2 datapaths")
    if not np.isfinite(D).all() or (D < 0).any():
        raise ValueError("distances must be finite and non-negative")
    if not (np.isfinite(smoothness) and smoothness >= 0):
        raise ValueError(f"smoothness {smoothness!r} must be a non-negative finite number")
    L, n, _ = D.shape
    order = list(spectral_order(D) if order is None else order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order {order} must be a permutation of 0..{n - 1}")
    gaps = n - 1
    g, _ = nnls(*gap_problem(0.5 * (D + D.transpose(0, 2, 1)), order, smoothness))
    g = g.reshape(L, gaps)
    cumulative = np.concatenate([np.zeros((L, 1)), np.cumsum(g, axis=1)], axis=1)  # (L, n) in order
    widest = float(cumulative[:, -1].max())
    scale = 1.0 / widest if widest > 0 else 0.0
    positions = 0.5 + (cumulative - cumulative[:, -1:] / 2.0) * scale
    y = np.empty((n, L))
    for slot, datapath in enumerate(order):
        y[datapath] = positions[:, slot]
    return RiverLayout("least_squares", y, order, scale)


def gap_problem(distances: np.ndarray, order: Sequence[int], smoothness: float):
    """The least-squares system ``(A, b)`` of :func:`least_squares_layout` over the gaps
    g (L * (n - 1),), layer-major: one row per layer and pair of datapaths (the sum of the
    gaps between them against their distance) and one per layer step and gap (the change of
    that gap, weighted by sqrt(smoothness)). ``distances``: (L, n, n) symmetric."""
    L, n, _ = distances.shape
    gaps = n - 1
    rows, rhs = [], []
    for l in range(L):
        for a in range(n):
            for b in range(a + 1, n):
                row = np.zeros(L * gaps)
                row[l * gaps + a:l * gaps + b] = 1.0
                rows.append(row)
                rhs.append(distances[l, order[a], order[b]])
    weight = np.sqrt(smoothness)
    for l in range(L - 1):
        for k in range(gaps):
            row = np.zeros(L * gaps)
            row[l * gaps + k], row[(l + 1) * gaps + k] = -weight, weight
            rows.append(row)
            rhs.append(0.0)
    return np.array(rows), np.array(rhs)


def spectral_order(distances: np.ndarray, roles: Optional[Sequence[str]] = None) -> list:
    """Top-to-bottom order of n datapaths from (L, n, n) distances: by ``roles``
    (source, adversarial, target) when given, then by the first classical-MDS coordinate
    of the layer-mean distance matrix (sign fixed so datapath 0 comes first on ties)."""
    D = np.asarray(distances, dtype=np.float64).mean(axis=0)
    n = D.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D ** 2) @ J
    _, vectors = np.linalg.eigh(B)
    coordinate = vectors[:, -1]
    if coordinate[0] > coordinate.mean():
        coordinate = -coordinate
    rank = [ROLE_ORDER.get(r, len(ROLE_ORDER)) for r in roles] if roles is not None else [0] * n
    return sorted(range(n), key=lambda i: (rank[i], round(float(coordinate[i]), 12), i))


def _check_curve(name: str, d) -> np.ndarray:
    a = np.asarray(d, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} has shape {a.shape}; expected (L,) with L >= 1 layers")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return a
