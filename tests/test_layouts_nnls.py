"""The river's NNLS solver against its optimality conditions and against scipy's."""

import numpy as np
import pytest
import scipy.optimize

from tensorboard_plugin_aevis.layouts.nnls import nnls
from tensorboard_plugin_aevis.layouts.river import gap_problem

SHAPES = [(5, 3), (20, 8), (8, 20), (60, 30), (200, 40)]


def kkt_violation(A, b, x):
    """max over coordinates of how far x is from the KKT point of min ||Ax - b|| s.t. x >= 0
    (negative x, or a descent direction A^T(b - Ax) positive at x = 0 or non-zero at x > 0),
    relative to ||A^T b|| + ||A^T A|| ||x||."""
    w = A.T @ (b - A @ x)
    scale = np.abs(A.T @ b).max() + np.abs(A.T @ A).max() * np.abs(x).max() + 1e-300
    violation = np.concatenate([np.maximum(-x, 0) / max(np.abs(x).max(), 1e-300),
                                np.maximum(w, 0)[x == 0] / scale, np.abs(w)[x > 0] / scale])
    return float(violation.max(initial=0.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(5))
def test_random_problems_reach_the_kkt_point_and_scipys_residual(shape, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=shape)
    b = rng.normal(size=shape[0]) * 3
    x, residual = nnls(A, b)
    assert (x >= 0).all()
    assert residual == pytest.approx(np.linalg.norm(A @ x - b), rel=1e-12)
    assert kkt_violation(A, b, x) < 1e-9
    _, reference = scipy.optimize.nnls(A, b)
    assert residual == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_the_rivers_own_problem_matches_scipy():
    """The system least_squares_layout solves: 0/1 gap-sum rows plus smoothness rows."""
    rng = np.random.default_rng(7)
    D = rng.uniform(0, 2, (31, 6, 6))
    D = 0.5 * (D + D.transpose(0, 2, 1))
    A, b = gap_problem(D, list(range(6)), 0.5)
    x, residual = nnls(A, b)
    assert kkt_violation(A, b, x) < 1e-9
    assert residual == pytest.approx(scipy.optimize.nnls(A, b)[1], rel=1e-9)


def test_known_solutions():
    # unconstrained optimum already non-negative: the least-squares solution
    A = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    exact = np.array([0.5, 1.5])
    x, residual = nnls(A, A @ exact)
    np.testing.assert_allclose(x, exact, atol=1e-12)
    assert residual == pytest.approx(0.0, abs=1e-12)
    # every coordinate pushed below zero: x = 0
    x, residual = nnls(np.eye(3), np.array([-1.0, -2.0, -3.0]))
    np.testing.assert_array_equal(x, np.zeros(3))
    assert residual == pytest.approx(np.sqrt(14.0))
    # duplicated columns (singular normal equations): the optimum's residual is still reached
    B = np.array([[1.0, 1.0], [2.0, 2.0]])
    x, residual = nnls(B, np.array([1.0, 2.0]))
    assert x.sum() == pytest.approx(1.0) and residual == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("A, b, message", [
    (np.ones((3, 2)), np.ones(2), "expected"),
    (np.ones(3), np.ones(3), "expected"),
    (np.array([[np.nan, 1.0]]), np.ones(1), "finite"),
    (np.ones((1, 2)), np.array([np.inf]), "finite"),
])
def test_bad_input_named(A, b, message):
    with pytest.raises(ValueError, match=message):
        nnls(A, b)


def test_iteration_bound_raises():
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(30, 20)), rng.normal(size=30) * 5
    with pytest.raises(RuntimeError, match="did not converge"):
        nnls(A, b, max_iter=1)
