"""Real photos that ship with installable packages, and image files, as [0,1] tensors.

Nothing here downloads: the photos come from scikit-image's bundled images (only
loaders that need no ``pooch`` download), scikit-learn's ``load_sample_images`` and
matplotlib's sample data.

``PHOTOS`` maps a photo name to ``(loader, expected ImageNet class index or None)``;
a loader returns an ``(H, W, 3)`` uint8 array. ``load_photo`` and
``load_image_file`` return ``(C, size, size)`` float32 tensors in [0, 1]: the
shorter side resized to ``size`` (bicubic), then centre-cropped.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .models import imagenet_categories


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(filename) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


# name -> (loader returning (H, W, 3) uint8, ImageNet class index a person would give, or None)
PHOTOS: Dict[str, Tuple[Callable[[], np.ndarray], Optional[int]]] = {
    "chelsea": (_skimage("chelsea"), 285),  # Egyptian cat
    "coffee": (_skimage("coffee"), 967),  # espresso
    "motorcycle": (_skimage("stereo_motorcycle"), 665),  # moped
    "astronaut": (_skimage("astronaut"), None),  # a portrait: no ImageNet class
    "rocket": (_skimage("rocket"), None),  # missile / projectile / space shuttle are all defensible
    "china": (_sklearn("china.jpg"), None),  # a temple roof: palace / monastery / pagoda
    "flower": (_sklearn("flower.jpg"), None),
    "grace_hopper": (_matplotlib("grace_hopper.jpg"), 652),  # military uniform
}


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names, offline (torchvision's weight metadata)."""
    return imagenet_categories()


def load_photo(name: str, size: int = 224) -> torch.Tensor:
    """Bundled photo ``name`` (a key of ``PHOTOS``) as a (3, size, size) float32 tensor in [0, 1]."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; bundled photos: {', '.join(sorted(PHOTOS))}")
    loader, _ = PHOTOS[name]
    try:
        array = loader()
    except ImportError as e:
        raise ImportError(f"photo {name!r} needs {e.name}: pip install scikit-image scikit-learn matplotlib") from e
    return _to_tensor(Image.fromarray(np.ascontiguousarray(array)).convert("RGB"), size)


def photo_views(name: str, size: int = 224, zoom: float = 1.15) -> Tuple[List[str], torch.Tensor]:
    """Four named views of bundled photo ``name``: as is, mirrored, zoomed in by ``zoom`` (centre
    crop of a larger resize) and both -> (names, (4, 3, size, size) in [0, 1]).

    Several normal images of one class from a single photo, for the representative-target
    choice of paper Sec. 6.2.1 when only one photo of the class is bundled.
    """
    photo = load_photo(name, size)
    larger = load_photo(name, max(size + 1, round(size * zoom)))
    top = (larger.shape[1] - size) // 2
    zoomed = larger[:, top : top + size, top : top + size]
    names = [name, f"{name} (mirrored)", f"{name} (zoomed {zoom:g}x)", f"{name} (mirrored, zoomed {zoom:g}x)"]
    return names, torch.stack([photo, photo.flip(2), zoomed, zoomed.flip(2)])


def load_image_file(path: str, size: int = 224, channels: int = 3) -> torch.Tensor:
    """Image file at ``path`` as a (channels, size, size) float32 tensor in [0, 1] (channels 1 or 3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey-scale) or 3 (RGB), got {channels}")
    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path!r} is not an image PIL can read ({e}); pass a PNG or JPEG file") from e
    return _to_tensor(converted, size)


def _to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic), centre-crop -> (C, size, size) in [0, 1]."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.array(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
