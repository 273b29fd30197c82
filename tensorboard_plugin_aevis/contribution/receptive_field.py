"""The earlier-layer neurons the selected target neurons depend on: the Eq. 8 region and the local crop."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .gated_forward import GatedForward


def region_from_gradient(weight: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """(H_e, W_e) float mask and rectangle: the bounding box of the positions where ``weight`` > 0."""
    support = weight > 0
    if not support.any():
        raise ValueError("the selected target neurons do not depend on the earlier layer on these images; pick an earlier layer on the path to the target")
    ys = torch.nonzero(support.any(dim=1)).flatten()
    xs = torch.nonzero(support.any(dim=0)).flatten()
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    mask = torch.zeros(support.shape, device=support.device)
    mask[y0:y1, x0:x1] = 1.0
    return mask, (y0, x0, y1, x1)


def local_crop(forward: GatedForward, area_mask: torch.Tensor, channel: int, reference: torch.Tensor,
                earlier_hw: Tuple[int, int], margin: int):
    """The crop of the earlier maps that alone determines the selected target neurons.

    ``area_mask``: (H_t, W_t) bool; ``reference``: (m, P) the selected neurons of the
    ungated pass. Candidate crop: the area's bounding box widened by ``margin`` target
    neurons on each side, times the stride ``S = H_e / H_t`` (an integer, else no crop),
    so that it starts at a multiple of S and the pass on the crop yields the target map
    from neuron ``start / S`` on. A candidate is accepted when

    1. structurally, the selected neurons do not depend on anything outside it: with
       every earlier neuron outside set to NaN they stay finite (the margin doubles
       until they do; a global operation such as a squeeze-and-excitation mean makes
       every candidate fail);
    2. numerically, the pass on the crop alone reproduces ``reference`` (the zero padding
       at the crop's edges and the alignment change none of the selected neurons; a
       branch that still carries the whole maps fails with a shape error).

    Returns ``((crop (y0, x0, y1, x1), (h, w) bool mask of the selected neurons on the
    cropped target output), margin)``; ``(None, margin)`` when the candidate is the whole
    map already (nothing to gain); ``(None, None)`` when the sub-network between the
    layers is not spatially local (no crop will ever pass). Call under ``torch.no_grad``.
    """
    (he, we), (ht, wt) = earlier_hw, tuple(area_mask.shape)
    if he % ht or we % wt:
        return None, None
    sy, sx = he // ht, we // wt
    ys = torch.nonzero(area_mask.any(dim=1)).flatten()
    xs = torch.nonzero(area_mask.any(dim=0)).flatten()
    ty0, ty1, tx0, tx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    first = True
    while True:
        rect = (max(ty0 - margin, 0) * sy, max(tx0 - margin, 0) * sx, min((ty1 + margin) * sy, he), min((tx1 + margin) * sx, we))
        if rect == (0, 0, he, we):
            return None, (margin if first else None)
        forward.poison = rect
        try:
            poisoned = forward.run(None, None)
        finally:
            forward.poison = None
        if bool(torch.isfinite(poisoned[:, channel][:, area_mask]).all()):
            break
        margin, first = margin * 2, False
    forward.crop = rect
    try:
        out = forward.run(None, None)
    except RuntimeError:
        return None, None
    finally:
        forward.crop = None
    oy, ox = rect[0] // sy, rect[1] // sx
    window = area_mask[oy : oy + out.shape[-2], ox : ox + out.shape[-1]] if out.dim() == 4 else area_mask[:0]
    if tuple(window.shape) != tuple(out.shape[2:]) or int(window.sum()) != int(area_mask.sum()):
        return None, None
    scale = max(1.0, float(reference.abs().max()))
    if not torch.allclose(out[:, channel][:, window], reference, rtol=1e-4, atol=1e-5 * scale):
        return None, None
    return (rect, window), margin


def shift(rectangle: Optional[Tuple[int, int, int, int]], crop: Optional[Tuple[int, int, int, int]]):
    """A rectangle on the crop's grid -> the same rectangle on the whole earlier grid."""
    if rectangle is None or crop is None:
        return rectangle
    return (rectangle[0] + crop[0], rectangle[1] + crop[1], rectangle[2] + crop[0], rectangle[3] + crop[1])
