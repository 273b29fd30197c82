"""Eq. 5, 9 and 10 and representative-target selection on hand-made gate vectors."""

import numpy as np
import pytest

from tensorboard_plugin_aevis.analysis import Analysis, ExampleRecord, LayerRecord
from tensorboard_plugin_aevis.datapath_metrics import (
    datapath_distance,
    default_r,
    detect_diverging_merging,
    diff_curve,
    layer_distances,
    pairwise_layer_distances,
    representative_target,
)


def make_analysis(gates_per_example, roles):
    """gates_per_example: list over examples of lists over layers of 1-D gate vectors."""
    n, num_layers = len(gates_per_example), len(gates_per_example[0])
    channels = [len(g) for g in gates_per_example[0]]
    gates = [np.stack([gates_per_example[i][l] for i in range(n)]).astype(np.float32) for l in range(num_layers)]
    return Analysis(
        method="constrained",
        params={},
        examples=[ExampleRecord(f"e{i}", r, 0, "0", 1.0, 0, 0) for i, r in enumerate(roles)],
        layers=[LayerRecord(f"layer{l}", c, 1, 1) for l, c in enumerate(channels)],
        images=np.zeros((n, 3, 4, 4), np.float32),
        gates=gates,
        threshold=0.5,
    )


def triplet(a, b):
    """adv = 0; src = a_l on channel 0; tar = b_l on channel 1: diff(l) = a_l - b_l exactly."""
    num_layers = len(a)
    adv = [np.zeros(3) for _ in range(num_layers)]
    src = [np.array([a[l], 0.0, 0.0]) for l in range(num_layers)]
    tar = [np.array([0.0, b[l], 0.0]) for l in range(num_layers)]
    return make_analysis([src, adv, tar], ["source", "adversarial", "target"])


def test_layer_and_datapath_distances_match_hand_computation():
    rng = np.random.default_rng(0)
    ex = [[rng.random(c) for c in (3, 5, 2)] for _ in range(3)]
    analysis = make_analysis(ex, ["source", "adversarial", "target"])
    want = np.array([np.sqrt(((ex[0][l] - ex[2][l]) ** 2).sum()) for l in range(3)])
    np.testing.assert_allclose(layer_distances(analysis, 0, 2), want, rtol=1e-6)
    flat = lambda i: np.concatenate(ex[i])  # noqa: E731
    assert datapath_distance(analysis, 0, 2) == pytest.approx(np.linalg.norm(flat(0) - flat(2)), rel=1e-6)
    pairs = pairwise_layer_distances(analysis)
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(pairs[(1, 2)], layer_distances(analysis, 2, 1))


def test_diff_curve_is_eq9():
    a = [0.1, 0.5, 1.0, 2.0]
    b = [1.0, 0.8, 0.2, 0.0]
    analysis = triplet(a, b)
    np.testing.assert_allclose(diff_curve(analysis, 1, 0, 2), np.array(a) - np.array(b), atol=1e-6)


def test_detects_final_rise_with_maximum_at_last_layer():
    diff = [0.0, -0.2, -0.1, 0.3, 0.4, 0.9]
    result = detect_diverging_merging(diff, r=4)
    assert result.detected and result.n_l == 4 and result.r == 4
    assert result.merging_layer == 5
    assert result.diverging_layer == 1  # the rise starts after layer 1
    # r = 5 also counts diff(1) > diff(0), which is false
    five = detect_diverging_merging(diff, r=5)
    assert not five.detected and five.n_l == 4


def test_not_detected_when_last_layer_is_not_the_maximum_or_a_layer_falls():
    peak_inside = [0.0, 0.5, 2.0, 1.0, 1.2, 1.5]
    result = detect_diverging_merging(peak_inside, r=2)
    assert result.n_l == 2 and not result.detected  # rises, but diff(m) is not the maximum
    assert result.merging_layer == 2 and result.diverging_layer == 0
    falls = detect_diverging_merging([0.0, 0.1, 0.3, 0.2, 0.5], r=3)
    assert falls.n_l == 2 and not falls.detected


def test_no_merging_layer_when_adversarial_never_closer_to_target():
    result = detect_diverging_merging([-1.0, -0.5, -0.2], r=2)
    assert result.n_l == 2 and result.merging_layer is None and result.diverging_layer is None
    assert not result.detected or result.merging_layer is None


def test_default_r_and_bad_r():
    assert default_r(20) == 8 and default_r(5) == 4 and default_r(2) == 1
    assert detect_diverging_merging(np.arange(5.0)).r == 4
    with pytest.raises(ValueError, match="1 <= r <= 4"):
        detect_diverging_merging(np.arange(5.0), r=5)
    with pytest.raises(ValueError, match="at least 2 layers"):
        detect_diverging_merging([1.0])
    with pytest.raises(ValueError, match="NaN"):
        detect_diverging_merging([0.0, float("nan"), 1.0])


def test_representative_target_is_the_closest_datapath():
    adv = [np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5])]
    far = [np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0])]
    near = [np.array([0.9, 0.1, 1.0]), np.array([0.5, 0.4])]
    mid = [np.array([1.0, 0.5, 0.5]), np.array([0.1, 0.5])]
    analysis = make_analysis([adv, far, near, mid], ["adversarial", "target", "target", "target"])
    assert representative_target(analysis, 0, [1, 2, 3]) == 2
    assert representative_target(analysis, 0, [1, 3]) == 3
    with pytest.raises(ValueError, match="out of range"):
        representative_target(analysis, 0, [7])
    with pytest.raises(ValueError, match="no candidate"):
        representative_target(analysis, 0, [])


def test_rms_normalization_divides_by_sqrt_width_and_compares_layers_of_different_widths():
    # Layer 0: 4 channels, layer 1: 16 channels; every gate differs by 0.5 in both layers.
    a = [np.zeros(4), np.zeros(16)]
    b = [np.full(4, 0.5), np.full(16, 0.5)]
    analysis = make_analysis([a, b], ["source", "adversarial"])
    raw = layer_distances(analysis, 0, 1)
    np.testing.assert_allclose(raw, [np.sqrt(4 * 0.25), np.sqrt(16 * 0.25)])  # 1, 2: the wide layer looks twice as far
    np.testing.assert_allclose(layer_distances(analysis, 0, 1, normalization="rms"), [0.5, 0.5])  # same per-gate change
    assert layer_distances(analysis, 0, 1, "l2").tolist() == raw.tolist()
    with pytest.raises(ValueError, match="normalization 'max' is unknown"):
        layer_distances(analysis, 0, 1, normalization="max")


def test_diff_curve_rms_is_the_l2_curve_over_sqrt_width():
    adv = [np.array([1.0, 0.0]), np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])]
    src = [np.array([0.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])]
    tar = [np.array([0.5, 0.0]), np.ones(8)]
    analysis = make_analysis([src, adv, tar], ["source", "adversarial", "target"])
    raw = diff_curve(analysis, 1, 0, 2)
    np.testing.assert_allclose(raw, [1 - 0.5, np.sqrt(2) - np.sqrt(6)])
    np.testing.assert_allclose(diff_curve(analysis, 1, 0, 2, normalization="rms"), raw / np.sqrt([2, 8]))
