"""One example's box-constrained quadratic: accelerated projected gradient finished by an active-set method."""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import threadpoolctl

from .deadline import check_deadline


@functools.lru_cache(maxsize=1)
def _blas() -> threadpoolctl.ThreadpoolController:
    """The BLAS libraries loaded in this process (found once: about 1 ms)."""
    return threadpoolctl.ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS (numpy's LAPACK calls: eigvalsh, inv, lstsq) runs on the calling
    thread only: docs/method.md, "Threads of the quadratic solvers"."""
    return _blas().limit(limits=1, user_api="blas")


# Products with J go through np.einsum (never BLAS threads): docs/method.md, "Threads of the quadratic solvers".
def matvec(jac: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``J z`` for ``jac`` (R, C), ``z`` (C,), on the calling thread only."""
    return np.einsum("rc,c->r", jac, z)


def rmatvec(jac: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``J^T v`` for ``jac`` (R, C), ``v`` (R,), on the calling thread only."""
    return np.einsum("rc,r->c", jac, v)


def solve_box_quadratic(jac: np.ndarray, linear: float, max_iter: int, deadline: Optional[float], target: Optional[np.ndarray] = None,
                         start: Optional[np.ndarray] = None, warm_up: int = 100) -> np.ndarray:
    """argmin over z in [0, 1]^C of ``||b - J z||^2 + linear * sum(z)``; ``jac``: (R, C) -> (C,).

    ``target``: b (R,), default ``J 1``; ``start``: the first iterate, default all ones
    (when given, the active-set finish is tried from it first).

    Accelerated projected gradient (FISTA, step 1 / Lipschitz constant, adaptive momentum
    restarts, O'Donoghue and Candes 2015) for ``warm_up`` iterations finds roughly which
    gates sit at 0, at 1 or between; :func:`active_set` then finishes exactly from there.
    With R << C rows the Hessian ``2 J^T J`` is rank-deficient and FISTA alone needs
    thousands of iterations for the last digits. Should the active-set finish not reach
    the optimum, FISTA goes on, up to ``max_iter`` iterations in all.
    """
    with one_blas_thread():
        return _fista_then_active_set(jac, linear, max_iter, deadline, target, start, warm_up)


def _fista_then_active_set(jac: np.ndarray, linear: float, max_iter: int, deadline: Optional[float], target: Optional[np.ndarray],
                           start: Optional[np.ndarray], warm_up: int) -> np.ndarray:
    target = jac.sum(axis=1) if target is None else target
    lipschitz = max(2.0 * float(np.linalg.eigvalsh(np.einsum("rc,sc->rs", jac, jac)).max()), 1e-12)  # 2 ||J||_2^2
    z = np.ones(jac.shape[1]) if start is None else np.clip(start, 0.0, 1.0)
    if start is not None:  # a warm start (the previous Gauss-Newton solution) is usually close to the active set
        exact = active_set(jac, target, linear, z, 4 * jac.shape[0] + 16)
        if exact is not None:
            return exact
    y, momentum = z.copy(), 1.0
    for iteration in range(1, max_iter + 1):
        grad = linear - 2.0 * rmatvec(jac, target - matvec(jac, y))
        candidate = np.clip(y - grad / lipschitz, 0.0, 1.0)
        if (y - candidate) @ (candidate - z) > 0:  # adaptive restart: the momentum points uphill
            momentum = 1.0
        next_momentum = (1.0 + np.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        moved = float(np.abs(candidate - z).max())
        y = candidate + (momentum - 1.0) / next_momentum * (candidate - z)
        z, momentum = candidate, next_momentum
        if moved < 1e-9:
            break
        if iteration % warm_up == 0:
            check_deadline(deadline)
            exact = active_set(jac, target, linear, z, 4 * jac.shape[0] + 16)
            if exact is not None:
                return exact
    return z


def min_norm_solution(cols: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``np.linalg.lstsq(2 A^T A, rhs, rcond=None)[0]`` for ``A = cols`` (R, F): the minimum-norm
    least-squares solution ``V diag(1 / 2 s^2) V^T rhs`` (``A = U S V^T``) over the singular values
    lstsq keeps, ``2 s^2 > eps F max(2 s^2)``; V from the eigenvectors of the smaller Gram matrix,
    ``A^T A`` (F <= R) or ``A A^T`` (F > R: ``V = A^T U S^-1``), never decomposing an (F, F)
    matrix of rank R (docs/method.md, "Threads of the quadratic solvers").

    Returns:
        (F,) the solution.
    """
    wide = cols.shape[1] > cols.shape[0]
    squares, vectors = np.linalg.eigh(cols @ cols.T if wide else cols.T @ cols)  # s^2 and U (wide) or V
    curvature = 2.0 * squares
    kept = curvature > np.finfo(float).eps * cols.shape[1] * curvature.max(initial=0.0)
    basis = (vectors[:, kept].T @ cols) / np.sqrt(squares[kept])[:, None] if wide else vectors[:, kept].T  # V^T rows
    return basis.T @ ((basis @ rhs) / curvature[kept])


def active_set(jac: np.ndarray, target: np.ndarray, linear: float, start: np.ndarray, max_iter: int) -> Optional[np.ndarray]:
    """Primal active-set method for the box quadratic of :func:`solve_box_quadratic` from ``start``.

    Gates at a bound stay fixed; the free ones move to the minimiser on their subspace
    (the least-squares solution of ``J_F^T J_F p = -g_F / 2``, :func:`min_norm_solution`;
    where that system is inconsistent, along its
    residual, a zero-curvature descent direction), stopping at the first bound they
    hit, which then fixes that gate. When the free gates are stationary, a fixed gate
    whose gradient points into the box (the wrong sign of its multiplier) is released.
    Returns the point once the KKT conditions hold (tolerance 1e-6 of ``linear``), or
    None after ``max_iter`` changes or if the free set exceeds 4R gates.
    """
    z = start.copy()
    free = (z > 0.0) & (z < 1.0)
    tol = 1e-6 * max(linear, 1e-12)
    for _ in range(max_iter):
        grad = linear - 2.0 * rmatvec(jac, target - matvec(jac, z))
        if free.sum() > 4 * jac.shape[0]:
            return None
        if free.any():
            cols = jac[:, free]
            hessian = 2.0 * np.einsum("rf,rg->fg", cols, cols)
            step = min_norm_solution(cols, -grad[free])
            residual = -grad[free] - np.einsum("fg,g->f", hessian, step)
            if np.abs(residual).max() > tol:  # unbounded along the null space: descend along the residual
                step = residual * (1e6 / max(float(np.abs(residual).max()), 1e-300))
            if np.abs(step).max() > 1e-12:
                zf = z[free]
                limits = np.where(step > 0, (1.0 - zf) / np.where(step > 0, step, 1.0), np.where(step < 0, -zf / np.where(step < 0, step, -1.0), np.inf))
                alpha = min(1.0, float(limits.min()))
                z[free] = np.clip(zf + alpha * step, 0.0, 1.0)
                if alpha < 1.0:
                    blocking = np.flatnonzero(free)[int(limits.argmin())]
                    z[blocking] = 1.0 if step[int(limits.argmin())] > 0 else 0.0
                    free[blocking] = False
                    continue
                grad = linear - 2.0 * rmatvec(jac, target - matvec(jac, z))
        wrong = np.where(free, 0.0, np.where(z == 0.0, np.maximum(-grad, 0.0), np.maximum(grad, 0.0)))
        worst = int(wrong.argmax())
        if wrong[worst] <= tol and (not free.any() or np.abs(grad[free]).max() <= tol):
            return z
        if wrong[worst] <= tol:  # free gates not yet stationary (numerical): one more solve
            continue
        free[worst] = True
    return None
