"""Geometry of the network-level river (layouts/river.py): the Sec. 5.2 rule keeps
d1 and d2 : d3; the least-squares layout keeps the vertical order, recovers distances
that a line can show exactly, and fits no worse than an even spacing."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tensorboard_plugin_aevis.layouts.river import least_squares_layout, rule_layout, spectral_order

curves = st.integers(1, 30).flatmap(lambda L: st.tuples(*[
    st.lists(st.floats(0.0, 50.0), min_size=L, max_size=L) for _ in range(3)]))


@settings(max_examples=100, deadline=None)
@given(curves)
def test_rule_layout_keeps_d1_and_the_d2_d3_ratio(ds):
    d1, d2, d3 = (np.array(d) for d in ds)
    river = rule_layout(d1, d2, d3)
    source, adversarial, target = river.y
    assert river.layout == "rule" and river.y.shape == (3, d1.size)
    assert (river.y >= -1e-12).all() and (river.y <= 1 + 1e-12).all()
    # source above target, screen distance proportional to d1 with one scale for all layers
    np.testing.assert_allclose(target - source, d1 * river.scale, atol=1e-9)
    if d1.max() > 0:
        assert np.isclose((target - source).max(), 1.0)
    # the adversarial curve splits source-target at d2 : d3
    for l in range(d1.size):
        assert source[l] - 1e-12 <= adversarial[l] <= target[l] + 1e-12
        if d2[l] + d3[l] > 0:
            np.testing.assert_allclose((adversarial[l] - source[l]) * (d2[l] + d3[l]), (target[l] - source[l]) * d2[l], atol=1e-9)
        else:
            assert np.isclose(adversarial[l], (source[l] + target[l]) / 2)


def test_rule_layout_example_by_hand():
    river = rule_layout([2.0, 4.0], [1.0, 3.0], [3.0, 1.0])
    np.testing.assert_allclose(river.y, [[0.25, 0.0], [0.375, 0.75], [0.75, 1.0]])


def pairwise(points: np.ndarray) -> np.ndarray:
    """(L, n) 1-D positions -> (L, n, n) absolute differences."""
    return np.abs(points[:, :, None] - points[:, None, :])


def best_scale_residual(screen: np.ndarray, D: np.ndarray) -> float:
    """min over a > 0 of sum over layers and pairs of (a * screen - D)^2."""
    iu = np.triu_indices(D.shape[1], 1)
    s, d = screen[:, iu[0], iu[1]].ravel(), D[:, iu[0], iu[1]].ravel()
    a = max(float(s @ d) / float(s @ s), 0.0) if s @ s > 0 else 0.0
    return float(((a * s - d) ** 2).sum())


def random_distances(rng, L, n):
    """Per-layer Euclidean distances of n random points in 4-D (not line-embeddable)."""
    pts = rng.normal(size=(L, n, 4)).cumsum(axis=0) * 0.3 + rng.normal(size=(1, n, 4))
    return np.linalg.norm(pts[:, :, None, :] - pts[:, None, :, :], axis=-1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(2, 7), st.integers(0, 10_000), st.sampled_from([0.0, 0.5, 3.0]))
def test_least_squares_keeps_order_and_beats_even_spacing(L, n, seed, smoothness):
    rng = np.random.default_rng(seed)
    D = random_distances(rng, L, n)
    river = least_squares_layout(D, smoothness=smoothness)
    assert river.layout == "least_squares" and river.y.shape == (n, L)
    assert (river.y >= -1e-9).all() and (river.y <= 1 + 1e-9).all()
    assert sorted(river.order) == list(range(n))
    ordered = river.y[river.order]  # rows top to bottom
    assert (np.diff(ordered, axis=0) >= -1e-12).all()
    screen = pairwise(river.y.T)
    even = np.empty((L, n))
    even[:, river.order] = np.arange(n)[None, :]  # same order, equal gaps
    assert best_scale_residual(screen, D) <= best_scale_residual(pairwise(even), D) + 1e-9


def test_least_squares_recovers_distances_a_line_can_show():
    rng = np.random.default_rng(3)
    L, n = 6, 5
    positions = np.sort(rng.uniform(0, 10, size=(L, n)), axis=1)  # datapath i at rank i
    D = pairwise(positions)
    river = least_squares_layout(D, order=list(range(n)), smoothness=0.0)
    np.testing.assert_allclose(pairwise(river.y.T), D * river.scale, atol=1e-9)
    assert river.order == list(range(n))


def test_smoothness_calms_the_river():
    rng = np.random.default_rng(5)
    D = random_distances(rng, 15, 4)
    order = spectral_order(D)
    rough = least_squares_layout(D, order=order, smoothness=0.0)
    calm = least_squares_layout(D, order=order, smoothness=20.0)

    def wiggle(r):
        gaps = np.diff(r.y[r.order], axis=0) / r.scale
        return float((np.diff(gaps, axis=1) ** 2).sum())

    assert wiggle(calm) < 0.5 * wiggle(rough)


def test_spectral_order_follows_roles_then_geometry():
    # points on a line: 0 at 0, 1 at 5, 2 at 1, 3 at 9
    x = np.array([[0.0, 5.0, 1.0, 9.0]])
    D = pairwise(x)
    assert spectral_order(D) == [0, 2, 1, 3]
    assert spectral_order(D, roles=["target", "source", "adversarial", "source"]) == [1, 3, 2, 0]


@pytest.mark.parametrize("D, message", [
    (np.zeros((3, 2)), "expected \\(L layers, n, n\\)"),
    (np.zeros((2, 1, 1)), "n >= 2"),
    (np.full((1, 2, 2), np.nan), "finite and non-negative"),
    (-np.ones((1, 2, 2)), "finite and non-negative"),
])
def test_least_squares_bad_input_named(D, message):
    with pytest.raises(ValueError, match=message):
        least_squares_layout(D)


def test_bad_order_and_curves_named():
    with pytest.raises(ValueError, match="permutation"):
        least_squares_layout(np.ones((1, 3, 3)), order=[0, 0, 1])
    with pytest.raises(ValueError, match="must all be \\(L,\\)"):
        rule_layout([1.0, 2.0], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        rule_layout([1.0], [-1.0], [1.0])
