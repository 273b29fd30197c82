"""Pickle-free encodings shared by the writer ops and the run reader.

- numeric arrays: ``.npz`` bytes (deflate), read back with ``allow_pickle=False``, either
  whole (:func:`decode_npz`) or one array at a time on first use (:class:`NpzArchive`);
- images: PNG (8 bit: ``round(x * 255)``, so a [0, 1] float image comes back within
  1/510 of its value);
- activation maps: average-pooled to at most ``max_size x max_size`` and quantised to
  uint8 with a per-map (per example and channel) min / max, so a map comes back within
  ``(max - min) / 510`` of its pooled value.
"""

from __future__ import annotations

import io
import threading
import zipfile
import zlib
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image


def encode_npz(arrays: Dict[str, np.ndarray]) -> bytes:
    """Named numeric arrays -> compressed ``.npz`` bytes (refuses object arrays)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {key!r} has dtype object; only numeric arrays can be logged")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode_npz(data: bytes) -> Dict[str, np.ndarray]:
    """Inverse of :func:`encode_npz`; never unpickles (``allow_pickle=False``).

    Raises ValueError for bytes that are not such an archive (or hold object arrays).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"not a valid .npz archive ({exc})") from exc


class NpzArchive:
    """An ``.npz`` held in memory whose arrays are decompressed one by one on first use.

    Opening reads only the zip directory, so a reader pays for the arrays it asks for
    (one layer's maps, not every layer's). Decoded arrays are kept; thread-safe. Never
    unpickles. ValueError for bytes that are not such an archive (on opening) and for
    a damaged or missing array (on access).
    """

    def __init__(self, data: bytes):
        try:
            self._npz = np.load(io.BytesIO(data), allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise ValueError(f"not a valid .npz archive ({exc})") from exc
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise ValueError("not a valid .npz archive (a single .npy array)")
        self._files = set(self._npz.files)
        self._arrays: Dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def files(self) -> List[str]:
        return sorted(self._files)

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def __getitem__(self, key: str) -> np.ndarray:
        with self._lock:
            found = self._arrays.get(key)
            if found is None:
                if key not in self._files:
                    raise ValueError(f"the archive has no array {key!r}")
                try:
                    found = self._arrays[key] = self._npz[key]
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                    raise ValueError(f"array {key!r} is damaged ({exc})") from exc
            return found


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) float in [0, 1] with C = 1 or 3 -> 8-bit PNG bytes."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image has shape {image.shape}; expected (3, H, W) or (1, H, W)")
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    if pixels.shape[0] == 1:
        Image.fromarray(pixels[0], mode="L").save(buffer, format="PNG")
    else:
        Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (C, H, W) float32 in [0, 1] (C = 1 for grey-scale, else 3)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode == "L":
            return np.asarray(img, dtype=np.float32)[None] / 255.0
        return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def pooled_size(height: int, width: int, max_size: int) -> Tuple[int, int]:
    """The (h, w) a ``height x width`` map is stored at: each side capped at ``max_size``."""
    return min(height, max_size), min(width, max_size)


def quantise_maps(maps: np.ndarray, max_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K, H, W) float maps -> (uint8 (N, K, h, w), min (N, K), max (N, K)) after pooling.

    Maps larger than ``max_size`` on a side are average-pooled (adaptive) down to it.
    """
    maps = np.asarray(maps, dtype=np.float32)
    n, k, height, width = maps.shape
    h, w = pooled_size(height, width, max_size)
    if (h, w) != (height, width) and k > 0:
        import torch  # here, not at import: the TensorBoard plugin reads runs without torch
        import torch.nn.functional as F

        maps = F.adaptive_avg_pool2d(torch.from_numpy(maps), (h, w)).numpy()
    lo = maps.min(axis=(2, 3)) if k else np.zeros((n, 0), np.float32)
    hi = maps.max(axis=(2, 3)) if k else np.zeros((n, 0), np.float32)
    scale = np.where(hi > lo, hi - lo, 1.0)[..., None, None]
    quantised = np.clip(np.rint((maps - lo[..., None, None]) / scale * 255.0), 0, 255).astype(np.uint8)
    return quantised, lo.astype(np.float32), hi.astype(np.float32)


def dequantise_map(quantised: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One uint8 (h, w) map and its min / max -> float32 (h, w)."""
    return (lo + quantised.astype(np.float32) / 255.0 * (hi - lo)).astype(np.float32)
