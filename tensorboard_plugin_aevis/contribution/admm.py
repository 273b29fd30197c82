"""Several examples' quadratics coupled by the gamma term, solved by ADMM."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .box_qp import one_blas_thread
from .deadline import check_deadline


def solve_coupled(jac: np.ndarray, target: np.ndarray, linear: float, gamma: float, start: np.ndarray, max_iter: int,
                   deadline: Optional[float], tol: float = 1e-5) -> np.ndarray:
    """argmin over z in [0, 1]^(m x C) of ``sum_i ||b_i - J_i z_i||^2 + linear * sum(z) + gamma * sum_{i != j} ||z_i - z_j||``
    by ADMM; ``jac``: (m, R, C), ``target``: b (m, R), ``start`` (m, C) -> (m, C).

    Why ADMM and what it was measured against: docs/method.md, "Contribution analysis". Splitting: ``z``
    free, ``x = z`` in the box, ``u_ij = z_i - z_j`` (i < j, weight 2 gamma). The z step
    solves ``(blockdiag(2 J_i^T J_i) + rho (I + L) (x) I_C) z = r`` exactly (L: the
    Laplacian of the complete graph on the m examples) by the Woodbury identity: J_i has
    only R rows, so one (mR x mR) inverse per solve; the x step clips, the u step shrinks
    each pair's difference (group soft-threshold). ``rho`` starts at 0.1 x 2 mean_i
    ||J_i||_2^2 and is doubled or halved every 10 iterations while one residual is 10x
    the other (residual balancing). Stops when the primal residual ``|z - x|`` and the
    change of x times rho are below ``tol``, or after ``max_iter`` iterations. Returns x
    (in the box); ``tol`` is in gate units. Its products go through np.einsum and its
    inverses run with BLAS on the calling thread only (see :func:`.box_qp.one_blas_thread`).
    """
    with one_blas_thread():
        return _admm(jac, target, linear, gamma, start, max_iter, deadline, tol)


def _admm(jac: np.ndarray, target: np.ndarray, linear: float, gamma: float, start: np.ndarray, max_iter: int,
          deadline: Optional[float], tol: float) -> np.ndarray:
    m, rows, c = jac.shape
    rho = 0.1 * max(2.0 * float(np.mean([np.linalg.eigvalsh(np.einsum("rc,sc->rs", j, j)).max() for j in jac])), 1e-12)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    incidence = np.zeros((len(pairs), m))  # row k: +1 at i, -1 at j of pair k
    for k, (i, j) in enumerate(pairs):
        incidence[k, i], incidence[k, j] = 1.0, -1.0
    gram = np.einsum("irc,jsc->irjs", jac, jac).reshape(m * rows, m * rows)  # J_i J_j^T blocks

    def factor(rho: float) -> Tuple[np.ndarray, np.ndarray]:
        k_inv = np.linalg.inv(rho * ((m + 1) * np.eye(m) - np.ones((m, m))))  # (rho (I + L))^-1, mixes examples per map
        return k_inv, np.linalg.inv(np.eye(m * rows) + 2.0 * np.kron(k_inv, np.ones((rows, rows))) * gram)

    k_inv, inner_inv = factor(rho)
    twice_jtb = 2.0 * np.einsum("irc,ir->ic", jac, target)
    z = np.clip(start, 0.0, 1.0)
    x, p = z.copy(), np.zeros_like(z)
    u = np.einsum("ki,ic->kc", incidence, z)
    q = np.zeros_like(u)
    for iteration in range(max_iter):
        if iteration % 100 == 0:
            check_deadline(deadline)
        rhs = twice_jtb - linear + rho * (x - p + np.einsum("ki,kc->ic", incidence, u - q))
        y = np.einsum("ij,jc->ic", k_inv, rhs)
        s = np.einsum("ab,b->a", inner_inv, 2.0 * np.einsum("irc,ic->ir", jac, y).reshape(-1)).reshape(m, rows)
        z = y - np.einsum("ij,jc->ic", k_inv, np.einsum("irc,ir->ic", jac, s))
        x_old, x = x, np.clip(z + p, 0.0, 1.0)
        p += z - x
        differences = np.einsum("ki,ic->kc", incidence, z) + q
        norms = np.sqrt((differences**2).sum(axis=1, keepdims=True))
        u = np.maximum(0.0, 1.0 - (2.0 * gamma / rho) / np.maximum(norms, 1e-300)) * differences
        q = differences - u
        primal, dual = np.abs(z - x).max(), rho * np.abs(x - x_old).max()
        if primal < tol and dual < tol:
            break
        if iteration % 10 == 9 and max(primal, dual) > 10.0 * min(primal, dual):  # residual balancing (Boyd et al. 2011, 3.4.1)
            scale = 2.0 if primal > dual else 0.5
            rho *= scale
            p /= scale
            q /= scale
            k_inv, inner_inv = factor(rho)
    return x
