"""Validation of the images and of the selected area (Eq. 8) of a contribution query."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

Area = Union[Tuple[int, int, int, int], Sequence[int], np.ndarray, torch.Tensor]


def check_images(images: torch.Tensor) -> torch.Tensor:
    """``images`` as float (m, C, H, W) (a (C, H, W) image becomes one example).

    Raises TypeError for a non-tensor, ValueError for another shape, m = 0 or non-finite values.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (m, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (m, C, H, W) with m >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return images.float()


def area_mask(area: Area, height: int, width: int) -> Tuple[torch.Tensor, Optional[Tuple[int, int, int, int]]]:
    """(H_t, W_t) bool mask of the selected neurons and the rectangle (if one was given)."""
    if isinstance(area, (np.ndarray, torch.Tensor)) and area.ndim == 2:
        mask = torch.as_tensor(np.asarray(area)).bool()
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"the area mask has shape {tuple(mask.shape)} but the target map is {height}x{width}; pass a ({height}, {width}) boolean mask")
        if not mask.any():
            raise ValueError("the area mask selects no neuron; select at least one")
        return mask, None
    values = list(np.asarray(area).reshape(-1)) if not isinstance(area, (list, tuple)) else list(area)
    if len(values) != 4 or not all(float(v).is_integer() for v in values):
        raise ValueError(f"area must be a rectangle (y0, x0, y1, x1) of integers or a ({height}, {width}) boolean mask, got {area!r}")
    y0, x0, y1, x1 = (int(v) for v in values)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(
            f"area (y0={y0}, x0={x0}, y1={y1}, x1={x1}) is outside the {height}x{width} target map or empty; "
            f"it is half-open in neuron units: need 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}"
        )
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask, (y0, x0, y1, x1)
