"""load_model, ClassifierWrapper and the bundled photos."""

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tensorboard_plugin_aevis.models import ClassifierWrapper, load_model
from tensorboard_plugin_aevis.sample_images import PHOTOS, imagenet_class_names, load_image_file, load_photo


def test_wrapper_normalises_inside_and_checks_input_and_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.LazyLinear(4))
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    wrapper = ClassifierWrapper(net, mean, std, class_names=list("abcd"))
    x = torch.rand(2, 3, 5, 5)
    normalised = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(wrapper(x), net(normalised))
    assert wrapper.class_name(2) == "c" and wrapper.class_name(7) == "class 7"
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        wrapper(torch.rand(1, 1, 5, 5))
    with pytest.raises(ValueError, match="not logits"):
        ClassifierWrapper(nn.Conv2d(3, 2, 1), mean, std)(x)
    with pytest.raises(ValueError, match="positive"):
        ClassifierWrapper(net, mean, [1.0, 0.0, 1.0])


def test_torchvision_model_random_weights_and_weights_file(tmp_path):
    model = load_model("resnet18")
    assert not model.training
    assert model.class_names[285] == "Egyptian cat" and len(model.class_names) == 1000
    assert model.input_size == (224, 224)
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    path = tmp_path / "w.pt"
    torch.save(model.model.state_dict(), path)
    again = load_model("resnet18", weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_unknown_names_and_bad_weights_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="did you mean.*resnet50"):
        load_model("resnet5")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("resnet18", weights=str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_model("resnet18", weights=str(garbage))
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_model("resnet18", weights=str(other))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_in_weights_files_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    with pytest.raises(ValueError, match="refused for safety"):
        load_model("resnet18", weights=str(path))


def test_module_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "user_cnn_for_models_test.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(3)
            return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))

        def not_a_model():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("user_cnn_for_models_test:make")
    assert model.in_channels == 1 and model.class_names is None
    x = torch.rand(2, 1, 9, 9)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x))  # identity normalisation
    path = tmp_path / "w.pt"
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(1.0)
    torch.save(model.model.state_dict(), path)
    reloaded = load_model("user_cnn_for_models_test:make", weights=str(path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        load_model("user_cnn_for_models_test:not_a_model")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_model("user_cnn_for_models_test:missing")
    with pytest.raises(ValueError, match="PYTHONPATH"):
        load_model("no_such_module_xyz:make")
    sys.modules.pop("user_cnn_for_models_test", None)


def test_photos_and_image_files(tmp_path):
    names = imagenet_class_names()
    assert names[967] == "espresso"
    for name in PHOTOS:
        photo = load_photo(name, size=32)
        assert photo.shape == (3, 32, 32) and photo.dtype == torch.float32
        assert 0 <= photo.min() and photo.max() <= 1 and photo.std() > 0.02
    # a known image through a file: resize the shorter side, centre crop
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 20:60] = 255  # the centre 40 x 40 square is white, the sides black
    Image.fromarray(array).save(tmp_path / "img.png")
    loaded = load_image_file(str(tmp_path / "img.png"), size=20)
    assert loaded.shape == (3, 20, 20)
    assert loaded[:, :, 1:-1].min() > 0.95  # the crop is the white centre
    grey = load_image_file(str(tmp_path / "img.png"), size=20, channels=1)
    assert grey.shape == (1, 20, 20)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_file(str(tmp_path / "nope.png"))
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        load_image_file(str(tmp_path / "text.png"))
    with pytest.raises(ValueError, match="bundled photos: .*chelsea"):
        load_photo("kitten")


@pytest.mark.slow
def test_efficientnet_lite0_recognises_the_labelled_photos():
    model = load_model("efficientnet-lite0")
    labelled = [(n, c) for n, (_, c) in PHOTOS.items() if c is not None]
    x = torch.stack([load_photo(n) for n, _ in labelled])
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    assert predicted == [c for _, c in labelled]


@pytest.mark.parametrize("default", [True, False])
def test_engine_turns_tf32_off_and_restores_the_users_setting(default):
    """exact_float32 (used by extraction and contribution analysis) restores whatever the user set."""
    from tensorboard_plugin_aevis.extraction import extract_datapaths
    from tensorboard_plugin_aevis.models import exact_float32

    def flags():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    saved = flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = default
    try:
        with exact_float32():
            assert flags() == (False, False)
        assert flags() == (default, default)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        extract_datapaths(ClassifierWrapper(net, (0.5,) * 3, (0.25,) * 3), torch.rand(1, 3, 8, 8), ["source"], steps=2)
        assert flags() == (default, default)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
