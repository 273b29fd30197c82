"""FashionCNN, the Fashion-MNIST idx reader and the training loop."""

import gzip
import os

import numpy as np
import pytest
import torch

from tensorboard_plugin_aevis.fashion_cnn import (
    FASHION_CLASSES, FASHION_MNIST_ROOT, FashionCNN, accuracy, class_subset, load_fashion_mnist,
    pretrained_fashion_cnn, to_tensor, train_fashion_cnn,
)

needs_data = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT),
                                reason="apt-get install dataset-fashion-mnist")


def write_idx(path, array, compress):
    """An idx file written from the format description: 0 0 0x08 ndim, big-endian dims, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path + ".gz", "wb") if compress else open(path, "wb")) as f:
        f.write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_reads_what_was_written(tmp_path, compress):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images, compress)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), labels, compress)
    got_images, got_labels = load_fashion_mnist(str(tmp_path), "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64


def test_missing_dataset_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path), "train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist(str(tmp_path), "validation")


def test_truncated_idx_file_is_reported(tmp_path):
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), np.zeros((3, 28, 28), np.uint8), False)
    with open(tmp_path / "t10k-images-idx3-ubyte", "ab") as f:
        f.write(b"\x00")
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(3, np.uint8), False)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(str(tmp_path), "test")


@needs_data
def test_installed_dataset_has_the_documented_sizes():
    images, labels = load_fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels)) == list(range(len(FASHION_CLASSES)))
    assert np.bincount(labels).tolist() == [1000] * 10


def test_model_shapes_and_input_check():
    model = FashionCNN().eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 5 and len(linears) == 1  # the paper's 6-layer CNN
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))


def test_normalisation_is_inside_the_model():
    model = FashionCNN().eval()
    x = torch.rand(2, 1, 28, 28)
    manual = model.fc(torch.flatten(model.features((x - 0.2860) / 0.3530), 1))
    torch.testing.assert_close(model(x), manual)


@needs_data
def test_training_is_deterministic_and_calls_back_every_step():
    images, labels = load_fashion_mnist(split="test")
    images, labels = images[:256], labels[:256]
    seen = []

    def train(seed):
        torch.manual_seed(123 + seed)  # a different init RNG state must not matter: the seed decides
        model = FashionCNN()
        losses = train_fashion_cnn(model, images, labels, steps=5, batch_size=32, seed=seed,
                                   callback=lambda step, m: seen.append((step, m.training)), progress=False)
        return model, losses

    (a, la), (b, lb), (c, _) = train(0), train(0), train(1)
    assert la == lb and len(la) == 5
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    assert seen[:5] == [(s, False) for s in range(5)]  # callback sees an eval-mode model
    assert not a.training


@needs_data
def test_brief_training_beats_chance_on_held_out_images():
    train_images, train_labels = load_fashion_mnist(split="train")
    test_images, test_labels = class_subset(*load_fashion_mnist(split="test"), per_class=40, seed=3)
    model = FashionCNN()
    before = accuracy(model, test_images, test_labels)
    losses = train_fashion_cnn(model, train_images[:8000], train_labels[:8000], steps=120, batch_size=32,
                               lr=2e-3, seed=0, progress=False)
    after = accuracy(model, test_images, test_labels)
    # independent check of the accuracy helper
    with torch.no_grad():
        manual = (model(to_tensor(test_images)).argmax(1).numpy() == test_labels).mean()
    assert after == pytest.approx(manual)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    # three times chance: a training outcome with a margin no CPU's rounding can cross (0.735 here)
    assert after > 0.3, f"accuracy {after:.2f} after 120 steps (chance is 0.10, untrained {before:.2f})"


def test_training_rejects_bad_arguments():
    model = FashionCNN()
    x = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="as many labels"):
        train_fashion_cnn(model, x, np.zeros(3, np.int64), steps=1, progress=False)
    with pytest.raises(ValueError, match="steps or epochs"):
        train_fashion_cnn(model, x, np.zeros(4, np.int64), steps=1, epochs=1, progress=False)


@needs_data
def test_pretrained_weights_are_cached_and_reloaded(tmp_path):
    first = pretrained_fashion_cnn(epochs=0.005, cache_dir=str(tmp_path), progress=False)  # 5 steps
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("fashion_cnn_") and files[0].endswith(".pt")
    # the second call must not need the data: it reads the cache (weights_only)
    second = pretrained_fashion_cnn(epochs=0.005, cache_dir=str(tmp_path), root=str(tmp_path / "nowhere"), progress=False)
    for p, q in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # other settings are another cache entry
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        pretrained_fashion_cnn(epochs=0.006, cache_dir=str(tmp_path), root=str(tmp_path / "nowhere"), progress=False)


def test_class_subset_takes_per_class_images():
    labels = np.repeat(np.arange(3), 5)
    images = np.arange(15)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    sub_images, sub_labels = class_subset(images, labels, per_class=2, seed=0)
    assert sub_labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(labels[sub_images[:, 0, 0]], sub_labels)
    with pytest.raises(ValueError, match="only 5 images"):
        class_subset(images, labels, per_class=6)
