"""EfficientNet-Lite0 with its ImageNet weights on real photos: sparse, label-keeping datapaths."""

import pytest
import torch

from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.models import load_model
from tensorboard_plugin_aevis.sample_images import load_photo

PHOTOS = ["chelsea", "coffee", "astronaut", "motorcycle", "rocket"]
MAX_KEPT = 0.15


@pytest.mark.slow
def test_binarised_datapaths_keep_labels_with_few_feature_maps():
    model = load_model("efficientnet-lite0")
    images = torch.stack([load_photo(name) for name in PHOTOS])
    with torch.no_grad():
        labels = model(images).argmax(dim=1).tolist()
    analysis = extract_datapaths(model, images, ["target"] * len(PHOTOS), PHOTOS, steps=200, keep_activation_maps=False)
    kept = analysis.kept_fraction()
    print({name: round(float(k), 4) for name, k in zip(PHOTOS, kept)})
    assert [e.label for e in analysis.examples] == labels
    assert analysis.examples[0].class_name == "Egyptian cat"
    for example, fraction in zip(analysis.examples, kept):
        assert example.binary_label == example.label and example.gated_label == example.label, example.name
        assert fraction <= MAX_KEPT, (example.name, fraction)
