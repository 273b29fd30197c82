"""The coupled examples' quadratic solved where the gamma term fuses them: one box QP and its optimality certificate."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .box_qp import solve_box_quadratic


def solve_fused(jac: np.ndarray, target: np.ndarray, linear: float, gamma: float, start: Optional[np.ndarray], max_iter: int,
                deadline: Optional[float]) -> Optional[np.ndarray]:
    """The minimiser of :func:`.admm.solve_coupled`'s problem when it gives every example the same gates, else None.

    ``sum_i ||b_i - J_i z_i||^2 + linear * sum(z) + gamma * sum_{i != j} ||z_i - z_j||`` over
    ``z`` in [0, 1]^(m x C). Restricted to ``z_i = w`` for all i it is one box-constrained
    quadratic in ``w`` (J_i stacked, ``m * linear``), solved by :func:`.box_qp.solve_box_quadratic`;
    :func:`fusion_certificate` then decides whether ``w`` for every example is the minimiser
    of the coupled problem too.

    Args:
        jac: (m, R, C) float64.
        target: b (m, R).
        linear, gamma: the penalties' weights.
        start: (m, C) the box solver's first iterate is its mean over the examples; None: its default.
        max_iter, deadline: as :func:`.box_qp.solve_box_quadratic`.

    Returns:
        (m, C) the gates, every row ``w``; None when the certificate fails (the optimum may keep
        examples apart, or the box solver stopped before its exact finish).

    Raises:
        ContributionTimeout: past ``deadline``.
    """
    m, rows, c = jac.shape
    w = solve_box_quadratic(jac.reshape(m * rows, c), m * linear, max_iter, deadline, target.reshape(-1),
                            None if start is None else start.mean(axis=0))
    if fusion_certificate(jac, target, linear, gamma, w) > 1.0:
        return None
    return np.tile(w, (m, 1))


def fusion_certificate(jac: np.ndarray, target: np.ndarray, linear: float, gamma: float, w: np.ndarray) -> float:
    """How far from optimal ``z_i = w`` (all i) is for the coupled problem: optimal when the result is <= 1.

    Optimality (KKT) at a fused point: vectors ``h_i = G_i + nu_i`` (``G_i`` the smooth part's
    gradient for example i, ``nu_i`` in the normal cone of the box at ``w``) with
    ``sum_i h_i = 0`` and pair subgradients ``s_ij = (h_j - h_i) / m`` of norm <= 2 gamma
    (then ``sum_j s_ij = -h_i``). ``nu`` is chosen per map: 0 where ``w`` is strictly inside
    the box (``h_i = G_i`` less their mean, the stacked problem's own KKT residual); at a
    bound, ``h`` as equal across the examples as the sign of ``nu`` allows (water-filling,
    :func:`_levelled`). Returns ``max_{i<j} ||h_i - h_j|| / (2 gamma m)``, or infinity when the
    stacked problem's own KKT conditions fail by more than ``1e-6 * m * linear`` (its solver's
    tolerance).

    Args:
        jac: (m, R, C); target: (m, R); w: (C,) in [0, 1].
    """
    m = jac.shape[0]
    grad = linear - 2.0 * np.einsum("irc,ir->ic", jac, target - np.einsum("irc,c->ir", jac, w))  # (m, C)
    mean = grad.mean(axis=0)
    at_zero, at_one = w <= 0.0, w >= 1.0
    wrong = np.where(at_zero, np.maximum(-mean, 0.0), np.where(at_one, np.maximum(mean, 0.0), np.abs(mean)))
    if m * float(wrong.max(initial=0.0)) > 1e-6 * max(m * linear, 1e-12):
        return float("inf")
    h = grad - mean
    h[:, at_zero] = _levelled(grad[:, at_zero] - np.minimum(mean[at_zero], 0.0))
    h[:, at_one] = -_levelled(-grad[:, at_one] + np.maximum(mean[at_one], 0.0))
    worst = max(float(np.sqrt(np.einsum("c,c->", h[i] - h[j], h[i] - h[j]))) for i in range(m) for j in range(i + 1, m))
    return worst / max(2.0 * gamma * m, 1e-300)


def _levelled(g: np.ndarray) -> np.ndarray:
    """Per column of ``g`` (m, n) with a sum >= 0: ``min(g, t)``, ``t`` the level at which the column sums to 0.

    ``sum_i min(g_i, t) <= S_k + (m - k) t`` for the sum ``S_k`` of the k smallest (equal for the
    right k), so ``t = max_k -S_k / (m - k)``, k = 0..m-1.
    """
    m, n = g.shape
    below = np.concatenate([np.zeros((1, n)), np.cumsum(np.sort(g, axis=0), axis=0)[:-1]])  # S_k, k = 0..m-1
    return np.minimum(g, (-below / (m - np.arange(m))[:, None]).max(axis=0))
