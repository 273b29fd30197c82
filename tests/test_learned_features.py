"""learned_features: top-k against brute force, receptive fields against the analytic formula."""

import pytest
import torch
from torch import nn

from tensorboard_plugin_aevis.learned_features import learned_features
from tensorboard_plugin_aevis.models import ClassifierWrapper, load_model

# (kernel, stride, padding) of the three convolutions of the test network
CONVS = [(3, 1, 1), (3, 2, 1), (3, 1, 1)]


def conv_stack() -> ClassifierWrapper:
    torch.manual_seed(0)
    layers, c_in = [], 3
    for k, s, p in CONVS:
        layers += [nn.Conv2d(c_in, 8, k, s, p), nn.ReLU()]
        c_in = 8
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return ClassifierWrapper(net, [0.5] * 3, [0.25] * 3).eval()


def analytic_box(depth: int, h: int, w: int, size: int):
    """Receptive field of position (h, w) after the first ``depth`` convolutions (jump/start recursion)."""
    jump, extent, start = 1, 1, 0
    for k, s, p in CONVS[:depth]:
        extent += (k - 1) * jump
        start += ((k - 1) // 2 - p) * jump
        jump *= s
    centre_y, centre_x = start + h * jump, start + w * jump
    half = extent // 2
    return (max(centre_y - half, 0), max(centre_x - half, 0), min(centre_y + half + 1, size), min(centre_x + half + 1, size))


def test_top_k_matches_brute_force_and_boxes_match_the_analytic_receptive_field():
    model = conv_stack()
    size = 12
    images = torch.rand(7, 3, size, size, generator=torch.Generator().manual_seed(1))
    layers = {"model.1": 1, "model.5": 3}  # the ReLUs after conv 1 and conv 3
    result = learned_features(model, list(layers), {"model.1": [0, 5], "model.5": None}, images, top_k=3, batch_size=3)
    assert set(result) == set(layers) and sorted(result["model.1"]) == [0, 5] and sorted(result["model.5"]) == list(range(8))
    with torch.no_grad():
        for layer, depth in layers.items():
            stop = int(layer.split(".")[1]) + 1
            maps = model.model[:stop]((images - 0.5) / 0.25)  # (N, 8, H, W), computed directly
            for channel, hits in result[layer].items():
                flat = maps[:, channel].flatten(1)
                best = torch.argsort(flat.max(1).values, descending=True)[:3]
                assert [i for i, _, _ in hits] == best.tolist()
                for i, activation, box in hits:
                    assert activation == pytest.approx(float(flat[i].max()), abs=1e-5)
                    pos = int(flat[i].argmax())
                    h, w = divmod(pos, maps.shape[3])
                    assert box == analytic_box(depth, h, w, size), (layer, channel, i)


def test_hooks_removed_model_unchanged_and_top_k_capped_by_image_count():
    model = conv_stack()
    images = torch.rand(2, 3, 10, 10)
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        before = model(x)
    result = learned_features(model, ["model.3"], [[1]], images, top_k=5)
    assert len(result["model.3"][1]) == 2
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_bad_input_is_named():
    model = conv_stack()
    images = torch.rand(2, 3, 10, 10)
    with pytest.raises(ValueError, match="not modules"):
        learned_features(model, ["model.99"], None, images)
    with pytest.raises(ValueError, match="not a \\(B, C, H, W\\) feature map"):
        learned_features(model, ["model.8"], None, images)  # the Flatten
    with pytest.raises(ValueError, match="out of range"):
        learned_features(model, ["model.1"], {"model.1": [8]}, images)
    with pytest.raises(ValueError, match="one per layer"):
        learned_features(model, ["model.1"], [[0], [1]], images)
    with pytest.raises(ValueError, match="NaN"):
        learned_features(model, ["model.1"], None, torch.full((1, 3, 10, 10), float("nan")))


def test_resnet18_boxes_grow_with_depth_and_stay_inside_the_image():
    model = load_model("resnet18")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = learned_features(model, ["model.layer1.0", "model.layer3.1"], [[0, 1], [0, 1]], images, top_k=2)

    def area(box):
        return (box[2] - box[0]) * (box[3] - box[1])

    shallow = [area(b) for hits in result["model.layer1.0"].values() for _, _, b in hits]
    deep = [area(b) for hits in result["model.layer3.1"].values() for _, _, b in hits]
    assert max(shallow) < min(deep)
    for hits in list(result["model.layer1.0"].values()) + list(result["model.layer3.1"].values()):
        for _, _, (y0, x0, y1, x1) in hits:
            assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64


@pytest.mark.parametrize("layer", ["model.layer1.0", "model.layer2.1", "model.layer4.1"])
def test_shifted_boxes_equal_per_position_gradient_boxes(layer):
    from tensorboard_plugin_aevis.learned_features import _measured_boxes, _run_until, receptive_field_boxes

    model = load_model("resnet18")
    module = dict(model.named_modules())[layer]
    noise = torch.rand((3, 64, 64), generator=torch.Generator().manual_seed(0))
    feature_h, feature_w = _run_until(model, module, noise[None]).shape[-2:]
    positions = sorted((y, x) for y in range(feature_h) for x in range(feature_w))
    shifted = receptive_field_boxes(model, {layer: module}, {layer: set(positions)}, (3, 64, 64))[layer]
    exact = _measured_boxes(model, module, noise, positions)
    assert shifted == exact
