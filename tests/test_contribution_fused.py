"""The coupled quadratic's fused solution (contribution/fused.py) against the ADMM solver it short-cuts."""

import numpy as np
import pytest
import torch

from tensorboard_plugin_aevis.contribution import admm, fused, quadratic


def exact_objective(jac, target, linear, gamma, z):
    """sum_i ||b_i - J_i z_i||^2 + linear * sum(z) + gamma * sum_{i != j} ||z_i - z_j|| (no smoothing)."""
    m = z.shape[0]
    value = float(((target - np.einsum("irc,ic->ir", jac, z)) ** 2).sum()) + linear * float(z.sum())
    return value + gamma * sum(float(np.linalg.norm(z[i] - z[j])) for i in range(m) for j in range(m) if i != j)


def problem(m, rows, maps, seed, spread):
    """Examples sharing a few strong maps; ``spread`` sets how different their Jacobians are. Each
    example scaled to ``||J_i 1|| = 1``, as :func:`.quadratic.scaled64` scales the real ones."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(rows, maps)) * rng.random(maps) ** 3
    jac = common[None] + spread * rng.normal(size=(m, rows, maps)) * rng.random(maps) ** 3
    jac /= np.linalg.norm(jac.sum(axis=2), axis=1)[:, None, None]
    return jac, jac.sum(axis=2)


def tight_admm(jac, target, linear, gamma):
    return admm.solve_coupled(jac, target, linear, gamma, np.ones(jac.shape[::2]), 200000, None, tol=1e-10)


@pytest.mark.parametrize("m,rows,maps,seed", [(3, 16, 1024, 0), (6, 16, 192, 1), (2, 6, 40, 2), (4, 3, 3, 3)])
def test_fused_gates_reach_the_coupled_optimum(m, rows, maps, seed):
    """Where the gamma term fuses the examples, the fused answer's objective is the tightly converged ADMM's (1e-6)."""
    jac, target = problem(m, rows, maps, seed, spread=0.05)
    linear, gamma = 0.5 / maps, 0.05
    gates = fused.solve_fused(jac, target, linear, gamma, None, 5000, None)
    assert gates is not None
    assert np.all((gates >= 0) & (gates <= 1)) and np.all(gates == gates[0])
    reference = exact_objective(jac, target, linear, gamma, tight_admm(jac, target, linear, gamma))
    assert exact_objective(jac, target, linear, gamma, gates) <= reference * (1 + 1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_feasible_move_improves_a_certified_point(seed):
    """The certificate's claim checked directly: small moves inside the box, per example apart, never lower the objective."""
    jac, target = problem(3, 6, 40, seed, spread=0.05)
    linear, gamma = 0.5 / 40, 0.05
    gates = fused.solve_fused(jac, target, linear, gamma, None, 5000, None)
    assert gates is not None
    value = exact_objective(jac, target, linear, gamma, gates)
    rng = np.random.default_rng(seed)
    for _ in range(200):
        moved = np.clip(gates + 1e-3 * rng.normal(size=gates.shape), 0.0, 1.0)
        assert exact_objective(jac, target, linear, gamma, moved) >= value - 1e-9 * abs(value)


def test_declines_when_the_optimum_keeps_the_examples_apart():
    """A weak gamma and different examples: the coupled optimum has distinct gates, and the fused solver says None."""
    jac, target = problem(3, 6, 40, 4, spread=1.0)
    linear, gamma = 0.5 / 40, 1e-4
    optimum = tight_admm(jac, target, linear, gamma)
    assert max(np.abs(optimum[i] - optimum[j]).max() for i in range(3) for j in range(i + 1, 3)) > 1e-2
    assert fused.solve_fused(jac, target, linear, gamma, None, 5000, None) is None
    assert fused.fusion_certificate(jac, target, linear, gamma, optimum.mean(axis=0)) > 1.0


@pytest.mark.parametrize("gamma", [1e-4, 0.05, 0.3])
def test_fit_quadratic_coupled_is_never_worse_than_admm(gamma):
    """Through fit_quadratic (fused when certified, else ADMM), the objective is ADMM's at its default tolerance or lower."""
    jac, target = problem(3, 6, 40, 5, spread=0.5)
    linear = 0.5 / 40
    gates = quadratic.fit_quadratic(torch.from_numpy(jac), torch.ones(3, dtype=torch.float64), 0.5, gamma, None).double().numpy()
    baseline = admm.solve_coupled(jac, target, linear, gamma, np.ones((3, 40)), quadratic.MAX_SOLVER_ITERATIONS, None)
    reference = exact_objective(jac, target, linear, gamma, tight_admm(jac, target, linear, gamma))
    value = exact_objective(jac, target, linear, gamma, gates)
    assert value <= max(exact_objective(jac, target, linear, gamma, baseline), reference) * (1 + 1e-6)  # float32 gates
    assert value >= reference * (1 - 1e-9)


def test_levelled_columns_sum_to_zero_below_the_gradient():
    """The water-filling keeps h <= g, sums every column to 0, and leaves a column of non-negative entries all 0."""
    rng = np.random.default_rng(6)
    g = rng.normal(size=(5, 50)) + 0.2
    g[:, g.sum(axis=0) < 0] *= -1
    g[:, 0] = np.abs(g[:, 0])
    h = fused._levelled(g)
    assert np.all(h <= g) and np.allclose(h.sum(axis=0), 0.0, atol=1e-12)
    assert np.all(h[:, 0] == 0.0)
