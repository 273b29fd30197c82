"""Non-negative least squares (Lawson and Hanson's active-set method) in numpy.

The river layout solves one small NNLS per answer inside the TensorBoard server, where
importing ``scipy.optimize`` would cost more than every other first answer together
(``docs/architecture.md``, "Server latency").
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def nnls(A: np.ndarray, b: np.ndarray, max_iter: Optional[int] = None) -> Tuple[np.ndarray, float]:
    """``argmin_x ||A x - b||_2`` subject to ``x >= 0``.

    Args:
        A: (m, n) finite matrix.
        b: (m,) finite vector.
        max_iter: bound on the outer iterations (default ``3 n``).

    Returns:
        ``(x, residual)``: x (n,) float64 with ``x >= 0`` satisfying the KKT conditions
        up to a rounding tolerance, and ``||A x - b||_2``.

    Raises:
        ValueError: on shapes that do not match or non-finite input.
        RuntimeError: when ``max_iter`` outer iterations did not reach the optimum.
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if A.ndim != 2 or b.shape != (A.shape[0],):
        raise ValueError(f"A has shape {A.shape} and b {b.shape}; expected (m, n) and (m,)")
    if not (np.isfinite(A).all() and np.isfinite(b).all()):
        raise ValueError("A and b must be finite")
    n = A.shape[1]
    gram, moment = A.T @ A, A.T @ b
    tol = 10.0 * np.finfo(np.float64).eps * max(1.0, float(np.abs(gram).sum(axis=0).max())) * max(A.shape)
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    gradient = moment.copy()  # A^T (b - A x): the descent direction of each coordinate
    for _ in range(3 * n if max_iter is None else max_iter):
        free = ~passive & (gradient > tol)
        if not free.any():
            return x, float(np.linalg.norm(A @ x - b))
        passive[np.argmax(np.where(free, gradient, -np.inf))] = True
        while True:
            s = np.zeros(n)
            index = np.flatnonzero(passive)
            s[index] = _solve(gram[index][:, index], moment[index])
            blocking = passive & (s <= tol)
            if not blocking.any():
                break
            gap = x[blocking] - s[blocking]
            step = float(np.min(np.divide(x[blocking], gap, out=np.zeros_like(gap), where=gap > 0)))
            x = x + step * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
        gradient = moment - gram @ x
    raise RuntimeError(f"NNLS did not converge in {3 * n if max_iter is None else max_iter} iterations")


def _solve(gram: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """The least-squares solution of ``gram @ s = moment`` (exact when ``gram`` is regular)."""
    try:
        return np.linalg.solve(gram, moment)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(gram, moment, rcond=None)[0]
