"""The paper's 6-layer CNN (Sec. 4.2: 5 convolutional layers + 1 fully connected layer)
for Fashion-MNIST, the idx-file reader for the Debian ``dataset-fashion-mnist``
package, and a small deterministic training loop.

Images are ``(B, 1, 28, 28)`` float tensors in [0, 1]; the dataset's normalisation
is applied inside :class:`FashionCNN`, so attacks and extraction work in pixel space.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# mean and standard deviation of the 60k training pixels, scaled to [0, 1]
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionCNN(nn.Module):
    """5 conv layers (3x3, ReLU) + 1 linear layer; ``(B, 1, 28, 28)`` in [0, 1] -> logits ``(B, 10)``.

    Feature maps: conv1 16x28x28, conv2 32x14x14, conv3 32x14x14, conv4 64x7x7,
    conv5 64x7x7 (2x2 max-pooling after conv1, conv3 and conv5), then ``fc`` on 64x3x3.
    """

    class_names = FASHION_CLASSES
    channels = (16, 32, 32, 64, 64)

    def __init__(self, num_classes: int = len(FASHION_CLASSES)):
        super().__init__()
        c1, c2, c3, c4, c5 = self.channels
        self.register_buffer("mean", torch.tensor(FASHION_MEAN).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(FASHION_STD).view(1, 1, 1, 1))
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, c1, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, 3, padding=1)), ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU()), ("pool3", nn.MaxPool2d(2)),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("relu5", nn.ReLU()), ("pool5", nn.MaxPool2d(2)),
        ]))
        self.fc = nn.Linear(c5 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"FashionCNN takes (B, 1, 28, 28) grey-scale images in [0, 1]; got shape {tuple(x.shape)}")
        h = self.features((x - self.mean) / self.std)
        return self.fc(torch.flatten(h, 1))


def _read_idx(path: str) -> np.ndarray:
    """Read one idx file (gzip-compressed or not) into a uint8 array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (bad magic number); reinstall dataset-fashion-mnist")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes of data; reinstall dataset-fashion-mnist")
    return body.reshape(shape)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install the data with "
        f"`apt-get install dataset-fashion-mnist` (it puts the idx files in {FASHION_MNIST_ROOT}) "
        f"or pass root= the folder that holds them")


def load_fashion_mnist(root: str = FASHION_MNIST_ROOT, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """Read Fashion-MNIST: ``(images (N, 28, 28) uint8, labels (N,) int64)``; N = 60000 / 10000."""
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    image_stem, label_stem = _IDX_FILES[split]
    images = _read_idx(_find_idx(root, image_stem))
    labels = _read_idx(_find_idx(root, label_stem)).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [0, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)


def train_fashion_cnn(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    steps: Optional[int] = None,
    epochs: Optional[float] = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    callback: Optional[Callable[[int, nn.Module], None]] = None,
    progress: bool = True,
) -> List[float]:
    """Train ``model`` with Adam on shuffled mini-batches; returns the loss of every step.

    ``images`` uint8 ``(N, 28, 28)``, ``labels`` ``(N,)``. Give ``steps`` or ``epochs``
    (default 1 epoch). ``callback(step, model)`` runs after steps 0, ..., with the model
    in eval mode (e.g. to log datapaths during training); training resumes afterwards.
    The same seed, data and settings give the same weights.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images and at least one of each; got {len(images)} images, {len(labels)} labels")
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    per_epoch = -(-len(images) // batch_size)
    total = steps if steps is not None else int(round((1.0 if epochs is None else epochs) * per_epoch))
    if total < 1:
        raise ValueError(f"training needs at least one step; got steps={steps}, epochs={epochs}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_all = to_tensor(images)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses: List[float] = []
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="training FashionCNN", unit="step")
    model.train()
    for step in range(total):
        if cursor + batch_size > len(order) and cursor > 0:
            order, cursor = torch.randperm(len(images), generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_all[idx]), y_all[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if callback is not None:
            model.eval()
            callback(step, model)
            model.train()
    if bar is not None:
        bar.close()
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels ``(N,)`` for float images ``(N, C, H, W)`` in [0, 1], model in eval mode."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 ``(N, 28, 28)`` images whose predicted label equals ``labels``."""
    pred = predict(model, to_tensor(images)).numpy()
    return float((pred == np.asarray(labels)).mean())


def default_cache_dir() -> str:
    """``$AEVIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/aevis``, else ``~/.cache/aevis``."""
    if os.environ.get("AEVIS_CACHE_DIR"):
        return os.environ["AEVIS_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aevis")


def pretrained_fashion_cnn(
    epochs: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    root: str = FASHION_MNIST_ROOT,
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> FashionCNN:
    """A FashionCNN trained on the Fashion-MNIST training split, cached on disk.

    The weights are stored with ``torch.save(state_dict)`` under ``cache_dir`` (default
    :func:`default_cache_dir`) in a file named after the training settings, and read
    back with ``torch.load(weights_only=True)``; a missing or unreadable file is retrained.
    """
    settings = {"arch": list(FashionCNN.channels), "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"fashion_cnn_{key}.pt")
    model = FashionCNN()
    if os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError, ValueError):
            pass  # stale or truncated cache file: retrain and overwrite it
    images, labels = load_fashion_mnist(root, "train")
    train_fashion_cnn(model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


def class_subset(images: np.ndarray, labels: np.ndarray, per_class: int, classes: Optional[Sequence[int]] = None,
                 seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A random subset with ``per_class`` images of each class in ``classes`` (default all), in class order."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(int(c) for c in labels)) if classes is None else list(classes)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images; asked for {per_class} per class")
        picked.append(np.sort(rng.choice(idx, per_class, replace=False)))
    sel = np.concatenate(picked)
    return images[sel], labels[sel]
