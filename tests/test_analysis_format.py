"""The Analysis result object: validation and the pickle-free round trip."""

import numpy as np
import pytest

from tensorboard_plugin_aevis.analysis import Analysis, ExampleRecord, LayerRecord


def make_analysis(n=3, seed=0):
    rng = np.random.default_rng(seed)
    layers = [LayerRecord("features.0", 8, 6, 6), LayerRecord("features.3", 16, 3, 3)]
    roles = ["adversarial", "source", "target"][:n]
    examples = [
        ExampleRecord(name=f"img{i}", role=r, label=i, class_name=f"class {i}", confidence=0.9,
                      gated_label=i, binary_label=i, loss_history=[1.0, 0.5])
        for i, r in enumerate(roles)
    ]
    return Analysis(
        method="constrained", params={"lambda": 0.01, "gamma": 1.0}, examples=examples, layers=layers,
        images=rng.random((n, 3, 12, 12), dtype=np.float32),
        gates=[rng.random((n, l.channels), dtype=np.float32) for l in layers], threshold=0.5,
        max_activations=[rng.random((n, l.channels), dtype=np.float32) for l in layers],
        activation_maps=[rng.random((n, l.channels, l.height, l.width), dtype=np.float32) for l in layers],
    )


def test_npz_round_trip_is_exact(tmp_path):
    a = make_analysis()
    a.save_npz(tmp_path / "a.npz")
    b = Analysis.load_npz(tmp_path / "a.npz")
    assert b.to_json() == a.to_json()
    for x, y in zip(a.gates + a.max_activations + a.activation_maps, b.gates + b.max_activations + b.activation_maps):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.images, b.images)


def test_kept_fraction_counts_binary_gates():
    a = make_analysis()
    expected = (a.gates[0] > 0.5).sum(1) + (a.gates[1] > 0.5).sum(1)
    np.testing.assert_allclose(a.kept_fraction(), expected / 24)


@pytest.mark.parametrize("breakage, message", [
    (lambda a: a.gates[0].__setitem__((0, 0), np.nan), "NaN"),
    (lambda a: a.gates.__setitem__(1, np.zeros((3, 5), np.float32)), "expected (3, 16)"),
    (lambda a: a.examples.clear(), "no examples"),
    (lambda a: setattr(a.examples[0], "role", "victim"), "role"),
])
def test_validate_names_the_problem(breakage, message):
    a = make_analysis()
    breakage(a)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        a.validate()


def test_npz_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        Analysis.load_npz(path)


def test_stability_round_trips_and_is_logged_as_stability_arrays(tmp_path):
    from summary_writers import codec
    from summary_writers.payloads import arrays_record

    a = make_analysis()
    assert a.to_arrays()[1].keys().isdisjoint({"stability/0", "stability/1"})  # optional: absent unless set
    a.stability = [np.round(g * 4) / 4 for g in a.gates]  # fractions of K = 4 starts
    a.validate()
    a.save_npz(tmp_path / "a.npz")
    b = Analysis.load_npz(tmp_path / "a.npz")
    meta, arrays = a.to_arrays()
    c = Analysis.from_arrays(meta, arrays)
    for s, t, u in zip(a.stability, b.stability, c.stability):
        np.testing.assert_array_equal(s, t)
        np.testing.assert_array_equal(s, u)
    record = arrays_record("run", a, 0, a.max_activations, None)
    logged = codec.decode_npz(record.tensor.string_val[0])
    for l, s in enumerate(a.stability):
        np.testing.assert_array_equal(logged[f"stability/{l}"], s)
    a.stability[1][0, 0] = 1.5
    with pytest.raises(ValueError, match="stability of layer 'features.3' lies outside"):
        a.validate()
    a.stability = a.stability[:1]
    with pytest.raises(ValueError, match="stability must have one array per layer"):
        a.validate()
