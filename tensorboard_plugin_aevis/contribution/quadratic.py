"""The quadratic mode: linearise the preserved neurons in the gates, solve the box QP, re-linearise (Gauss-Newton)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .admm import solve_coupled
from .box_qp import solve_box_quadratic
from .deadline import check_deadline
from .fused import solve_fused
from .jacobian import jacobian
from .objective import Preserved, penalties, preserved_at, quadratic_objective, relative_error
from .options import ContributionOptions

MAX_SOLVER_ITERATIONS = 5000  # per quadratic solve; the solvers stop earlier at their tolerance


def float64(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a float64 numpy array (the quadratic solvers run in numpy)."""
    return tensor.detach().double().cpu().numpy()


def scaled64(jac: torch.Tensor, norms: torch.Tensor, target: Optional[torch.Tensor]):
    """(J, b) of the quadratic in float64 numpy, divided by sqrt(n_i): (m, R, C) and (m, R), b None
    (the default ``J 1``) staying None."""
    scale = np.sqrt(float64(norms))
    return float64(jac) / scale[:, None, None], None if target is None else float64(target) / scale[:, None]




def fit_quadratic(jac: torch.Tensor, norms: torch.Tensor, lambda_: float, gamma: float, deadline: Optional[float],
                   target: Optional[torch.Tensor] = None, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Minimise sum_i ||b_i - J_i z_i||^2 / n_i + penalties over z in [0, 1]^(m x C); ``jac``: (m, R, C).

    ``target``: b (m, R), default ``J 1`` (residual ``J (1 - z)``, the linearisation at
    z = 1); ``start``: the solvers' first iterate (m, C), default all ones. Uncoupled
    examples (m = 1 or gamma = 0): one box-constrained quadratic per example,
    :func:`solve_box_quadratic`; coupled examples: the same gates for every example when
    that is the optimum (:func:`.fused.solve_fused`), else :func:`solve_coupled`; each at most
    ``MAX_SOLVER_ITERATIONS`` iterations.
    """
    m, _, c = jac.shape
    jac64, target64 = scaled64(jac, norms, target)
    target64 = jac64.sum(axis=2) if target64 is None else target64
    start64 = np.ones((m, c)) if start is None else float64(start)
    if m > 1 and gamma > 0:
        solution = solve_fused(jac64, target64, lambda_ / c, gamma, None if start is None else start64, MAX_SOLVER_ITERATIONS, deadline)
        if solution is None:
            solution = solve_coupled(jac64, target64, lambda_ / c, gamma, start64, MAX_SOLVER_ITERATIONS, deadline)
        return torch.tensor(solution, dtype=torch.float32, device=jac.device)
    gates = [solve_box_quadratic(j, lambda_ / c, MAX_SOLVER_ITERATIONS, deadline, b, z0) for j, b, z0 in zip(jac64, target64, start64)]
    return torch.tensor(np.stack(gates), dtype=torch.float32, device=jac.device)



def fit_linearised(problem: Preserved, with_area: bool, options: ContributionOptions):
    """The quadratic mode: linearise at z = 1 and solve; then ``options.relinearise`` times
    (Gauss-Newton): linearise again at the solution z_t, ``f(z) ~ f(z_t) + J_t (z - z_t)``,
    and solve ``||D (f_0 - f(z_t)) + J_t z_t - J_t z||^2 / n + penalties`` from z_t. Of these
    solutions the one of the lowest loss through the network is returned (the first on ties);
    the preserved neurons at a solution come from the next linearisation's forward pass, the
    last solution's from one more pass.

    Args:
        problem: the preserved neurons and the replay (inside its hooks).
        with_area: Eq. 8: gate only the receptive field of the preserved neurons.
        options: ``lambda_``, ``gamma``, ``max_jacobian_rows``, ``seed``,
            ``relinearise``, ``deadline``.

    Returns:
        (gates (m, C), region (H_e, W_e) float mask or None, its rectangle or None,
        the gradient at the gates (m, C) of the quadratic they minimise, the relative error
        of the preserved neurons at the gates through the network (m,)).

    Raises:
        ContributionTimeout: past ``options.deadline``.
    """
    forward, images, select, channels = problem.forward, problem.images, problem.select, problem.channels
    rows, seed, deadline, norms = options.max_jacobian_rows, options.seed, options.deadline, problem.norms
    lambda_, gamma = options.lambda_, options.gamma
    jac, directions, region, rectangle, _ = jacobian(forward, images, select, channels, rows, seed, with_area)
    gates = fit_quadratic(jac, norms, lambda_, gamma, deadline)
    goal = problem.reference.flatten(1) @ directions.T  # D f_0, (m, R)
    target = None
    solutions = [(gates, jac, target)]  # each solution with the quadratic it minimised
    reached = []  # the preserved neurons (m, P) at each solution
    for _ in range(options.relinearise):
        check_deadline(deadline)
        jac, _, _, _, at_gates = jacobian(forward, images, select, channels, rows, seed, False, gates, region)
        reached.append(at_gates)
        target = goal - at_gates @ directions.T + (jac @ gates.unsqueeze(-1)).squeeze(-1)
        gates = fit_quadratic(jac, norms, lambda_, gamma, deadline, target, gates)
        solutions.append((gates, jac, target))
    reached.append(preserved_at(problem, gates, region))
    errors = [relative_error(preserved, problem.reference.flatten(1), norms) for preserved in reached]
    # a Gauss-Newton step can raise the loss through the network (docs/method.md): keep the lowest
    losses = [float(error.sum() + penalties(solution[0], lambda_, gamma)) for error, solution in zip(errors, solutions)]
    best = losses.index(min(losses))
    (gates, jac, target), error = solutions[best], errors[best]
    jac64, target64 = scaled64(jac, norms, target)
    _, grad = quadratic_objective(jac64, lambda_, gamma, None, target64)(float64(gates).reshape(-1))
    return gates, region, rectangle, torch.from_numpy(grad.reshape(gates.shape)), error
