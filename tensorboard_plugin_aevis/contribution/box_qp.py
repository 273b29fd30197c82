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
    """A context in which BLAS (numpy's ``@`` products and LAPACK calls: eigvalsh, inv, solve, eigh)
    runs on the calling thread only: docs/method.md, "Threads of the quadratic solvers"."""
    return _blas().limit(limits=1, user_api="blas")


def solve_box_quadratic(jac: np.ndarray, linear: float, max_iter: int, deadline: Optional[float], target: Optional[np.ndarray] = None,
                         start: Optional[np.ndarray] = None, warm_up: int = 50) -> np.ndarray:
    """argmin over z in [0, 1]^C of ``||b - J z||^2 + linear * sum(z)``; ``jac``: (R, C) -> (C,).

    ``target``: b (R,), default ``J 1``; ``start``: the first iterate, default all ones
    (when given, the active-set finish is tried from it first).

    Accelerated projected gradient (FISTA, step 1 / Lipschitz constant, adaptive momentum
    restarts, O'Donoghue and Candes 2015) for ``warm_up`` iterations finds roughly which
    gates sit at 0 and which at 1: :func:`active_set` then finishes exactly from the corner
    of the box that FISTA's gradient points to (each gate at 1 where its gradient is
    negative, else at 0), and failing that from FISTA's iterate itself. With R << C rows
    the Hessian ``2 J^T J`` is rank-deficient and FISTA alone needs thousands of iterations
    for the last digits. Should the active-set finish not reach the optimum, FISTA goes on,
    up to ``max_iter`` iterations in all, handing off again every ``warm_up`` iterations:
    from its iterate each time, from the corner at iterations ``warm_up * 4^k``.
    """
    with one_blas_thread():
        return _fista_then_active_set(jac, linear, max_iter, deadline, target, start, warm_up)


def _fista_then_active_set(jac: np.ndarray, linear: float, max_iter: int, deadline: Optional[float], target: Optional[np.ndarray],
                           start: Optional[np.ndarray], warm_up: int) -> np.ndarray:
    target = jac.sum(axis=1) if target is None else target
    lipschitz = max(2.0 * float(np.linalg.eigvalsh(jac @ jac.T).max()), 1e-12)  # 2 ||J||_2^2
    z = np.ones(jac.shape[1]) if start is None else np.clip(start, 0.0, 1.0)
    if start is not None:  # a warm start (the previous Gauss-Newton solution) is usually close to the active set
        exact = active_set(jac, target, linear, z, 4 * jac.shape[0] + 16)
        if exact is not None:
            return exact
    y, momentum, next_corner = z.copy(), 1.0, warm_up
    for iteration in range(1, max_iter + 1):
        grad = linear - 2.0 * (target - jac @ y) @ jac
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
            exact = None
            if iteration == next_corner:  # at warm_up, 4 warm_up, 16 warm_up, ...: a failed finish from a corner costs up to 4R + 16 changes
                next_corner *= 4
                corner = np.where(linear - 2.0 * (target - jac @ z) @ jac < 0.0, 1.0, 0.0)
                exact = active_set(jac, target, linear, corner, 4 * jac.shape[0] + 16)
            if exact is None:
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


def subspace_step(cols: np.ndarray, gram: np.ndarray, rhs: np.ndarray, tol: float) -> np.ndarray:
    """A least-squares solution p of ``2 A^T A p = rhs`` for ``A = cols`` (R, F), ``gram = A^T A`` (F, F), ``rhs`` (F,).

    When F <= R, ``np.linalg.solve`` of the (F, F) system, kept when it solves the system to
    ``tol`` (largest absolute residual). Otherwise (F > R, a singular system, or one that
    solve leaves with a larger residual: inconsistent or too ill-conditioned)
    :func:`min_norm_solution`, the minimum-norm least-squares solution.

    Returns:
        (F,) the solution.
    """
    if cols.shape[1] <= cols.shape[0]:
        try:
            step = np.linalg.solve(gram, rhs) / 2.0
        except np.linalg.LinAlgError:
            pass
        else:
            if np.abs(rhs - 2.0 * (gram @ step)).max() <= tol:
                return step
    return min_norm_solution(cols, rhs)


RELEASED_AT_ONCE = 4  # fixed gates released together by the active-set method (docs/method.md, "Contribution analysis", seventh round)


def active_set(jac: np.ndarray, target: np.ndarray, linear: float, start: np.ndarray, max_iter: int) -> Optional[np.ndarray]:
    """Primal active-set method for the box quadratic of :func:`solve_box_quadratic` from ``start``.

    Gates at a bound stay fixed; the free ones move to the minimiser on their subspace
    (the least-squares solution of ``J_F^T J_F p = -g_F / 2``, :func:`subspace_step`;
    where that system is inconsistent, along its
    residual, a zero-curvature descent direction), stopping at the first bound they
    hit, which then fixes that gate. When the free gates are stationary, the fixed gates
    whose gradient points into the box (the wrong sign of their multiplier) are released:
    the ``RELEASED_AT_ONCE`` worst, no more than keeps the free set within R gates (at least
    one), or only the worst one when the objective has not dropped since the previous
    release of several. Its products (``@``) and solves run on BLAS, which the caller holds
    to one thread (:func:`one_blas_thread`).
    Returns the point once the KKT conditions hold (tolerance 1e-6 of ``linear``), or
    None after ``max_iter`` changes or if the free set exceeds 4R gates.
    """
    z = start.copy()
    free = (z > 0.0) & (z < 1.0)
    tol = 1e-6 * max(linear, 1e-12)
    residual = target - jac @ z
    grad = linear - 2.0 * residual @ jac
    released_several, objective_at_release = False, np.inf
    for _ in range(max_iter):
        if free.sum() > 4 * jac.shape[0]:
            return None
        if free.any():
            cols = jac[:, free]
            gram = cols.T @ cols
            step = subspace_step(cols, gram, -grad[free], tol)
            unexplained = -grad[free] - 2.0 * (gram @ step)
            if np.abs(unexplained).max() > tol:  # unbounded along the null space: descend along the residual
                step = unexplained * (1e6 / max(float(np.abs(unexplained).max()), 1e-300))
            if np.abs(step).max() > 1e-12:
                zf = z[free]
                limits = np.where(step > 0, (1.0 - zf) / np.where(step > 0, step, 1.0), np.where(step < 0, -zf / np.where(step < 0, step, -1.0), np.inf))
                alpha = min(1.0, float(limits.min()))
                z[free] = np.clip(zf + alpha * step, 0.0, 1.0)
                if alpha < 1.0:
                    blocking = np.flatnonzero(free)[int(limits.argmin())]
                    z[blocking] = 1.0 if step[int(limits.argmin())] > 0 else 0.0
                    free[blocking] = False
                residual = target - jac @ z
                grad = linear - 2.0 * residual @ jac
                if alpha < 1.0:
                    continue
        wrong = np.where(free, 0.0, np.where(z == 0.0, np.maximum(-grad, 0.0), np.maximum(grad, 0.0)))
        worst = int(wrong.argmax())
        if wrong[worst] <= tol and (not free.any() or np.abs(grad[free]).max() <= tol):
            return z
        if wrong[worst] <= tol:  # free gates not yet stationary (numerical): one more solve
            continue
        objective = float(residual @ residual) + linear * float(z.sum())
        count = 1 if released_several and objective >= objective_at_release else min(RELEASED_AT_ONCE, max(jac.shape[0] - int(free.sum()), 1))
        released = np.argsort(-wrong)[:count]
        released = released[wrong[released] > tol]
        free[released] = True
        released_several, objective_at_release = released.size > 1, objective
    return None
