"""AdversarialScorer on a model whose penultimate features are the pixels themselves."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from scipy.stats import percentileofscore
from torch import nn

from tensorboard_plugin_aevis.adversarial_score import AdversarialScorer
from tensorboard_plugin_aevis.models import ClassifierWrapper


def pixel_feature_model() -> ClassifierWrapper:
    """Images (B, 1, 1, 2); the penultimate features are the two pixels; class 0 iff x0 > x1."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]))
        linear.bias.zero_()
    return ClassifierWrapper(nn.Sequential(nn.Flatten(), linear), mean=[0.0], std=[1.0]).eval()


def points(xy) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float32).reshape(-1, 1, 1, 2)


def clusters(n0: int, n1: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = np.array([0.8, 0.2]) + 0.05 * rng.standard_normal((n0, 2))
    b = np.array([0.2, 0.8]) + 0.05 * rng.standard_normal((n1, 2))
    return np.clip(np.concatenate([a, b]), 0, 1)


def expected_score(refs_of_class: np.ndarray, all_refs_by_class, query: np.ndarray) -> float:
    """Independent re-computation with scipy: KDE, leave-one-out calibration, percentile."""

    def log_density(q, refs, h):
        return np.log(np.mean(np.exp(-cdist(q[None], refs)[0] ** 2 / (2 * h**2))))

    calibration = []
    for refs in all_refs_by_class:
        h = np.median(pdist(refs))
        for i in range(len(refs)):
            calibration.append(log_density(refs[i], np.delete(refs, i, axis=0), h))
    value = log_density(query, refs_of_class, np.median(pdist(refs_of_class)))
    return 100.0 - percentileofscore(calibration, value, kind="mean")


def test_kde_score_matches_an_independent_computation_and_ranks_outliers_high():
    model = pixel_feature_model()
    refs = clusters(12, 10)
    scorer = AdversarialScorer(model, points(refs))
    assert scorer.feature_layer == "model.1"  # the input of the last Linear
    assert scorer.kde_classes == [0, 1]
    queries = np.array([[0.8, 0.2], [0.62, 0.3], [0.99, 0.0], [0.2, 0.8], [0.45, 0.55]])
    scores, methods = scorer.score_with_method(points(queries))
    assert methods == ["kde"] * 5
    by_class = [refs[:12], refs[12:]]
    for q, s in zip(queries, scores):
        c = 0 if q[0] > q[1] else 1
        assert s == pytest.approx(expected_score(by_class[c], by_class, q), abs=1e-6)
    # a cluster centre is as typical as a clean image; far-off points of the same class are outliers
    assert scores[0] < 50 and scores[3] < 50
    assert scores[2] == 100.0 and scores[4] == 100.0
    assert np.all((scores >= 0) & (scores <= 100))


def test_given_labels_override_predictions():
    model = pixel_feature_model()
    refs = clusters(6, 6)
    # label every reference 0: class 1 has no references, so class-1 images use the fallback
    scorer = AdversarialScorer(model, points(refs), reference_labels=[0] * 12)
    assert scorer.kde_classes == [0]
    _, methods = scorer.score_with_method(points([[0.8, 0.2], [0.2, 0.8]]))
    assert methods == ["kde", "confidence"]


def test_confidence_fallback_for_classes_with_too_few_references():
    model = pixel_feature_model()
    refs = clusters(8, 2)
    scorer = AdversarialScorer(model, points(refs))
    assert scorer.kde_classes == [0]
    query = points([[0.3, 0.7], [0.45, 0.5]])
    scores, methods = scorer.score_with_method(query)
    assert methods == ["confidence", "confidence"]
    with torch.no_grad():
        expected = 100 * (1 - torch.softmax(model(query).double(), 1).max(1).values.numpy())
    np.testing.assert_allclose(scores, expected, atol=1e-9)
    assert scores[1] > scores[0]  # less confident -> more suspicious


def test_bad_input_is_named():
    model = pixel_feature_model()
    refs = points(clusters(4, 4))
    with pytest.raises(ValueError, match="one label per image"):
        AdversarialScorer(model, refs, reference_labels=[0, 1])
    with pytest.raises(ValueError, match="not a module"):
        AdversarialScorer(model, refs, feature_layer="nope")
    with pytest.raises(ValueError, match="no nn.Linear"):
        AdversarialScorer(ClassifierWrapper(nn.Flatten(), [0.0], [1.0]), refs)
    scorer = AdversarialScorer(model, refs)
    with pytest.raises(ValueError, match="NaN"):
        scorer.score(points([[float("nan"), 0.0]]))
