"""The Jacobian of the preserved neurons with respect to the gates, for the quadratic mode."""

from __future__ import annotations

from typing import Optional

import torch

from .gated_forward import GatedForward
from .receptive_field import region_from_gradient


def jacobian(forward: GatedForward, images, select, channels, max_rows, seed, with_area, gates: Optional[torch.Tensor] = None,
              region: Optional[torch.Tensor] = None):
    """(D J, D, region mask, rectangle, f) at ``gates`` (default z = 1) from one forward pass and one backward pass per row.

    The backward passes give the gradient of every (sketched) preserved neuron w.r.t. the gated
    earlier feature maps, (R, m, C, H_e, W_e); at z = 1 its support is the receptive field
    (Eq. 8 region, when ``with_area``; else ``region`` is used as given) and
    ``J[r, i, k] = sum_hw grad * activation * region`` (the ungated activation).
    ``D`` (R, P) is the identity when P <= ``max_rows``, else a seeded Gaussian sketch
    with ``E[D^T D] = I``; ``D J`` has shape (m, R, C) and ``f``, the preserved neurons at
    ``gates`` (the forward pass's), (m, P).
    """
    z = (torch.ones(images.shape[0], channels, device=images.device) if gates is None else gates.clone()).requires_grad_(True)
    with torch.enable_grad():
        preserved = select(forward.run(z, region)).flatten(1)  # (m, P)
    activation, ungated = forward.gated, forward.ungated.detach()
    m, p = preserved.shape
    if p <= max_rows:
        directions = torch.eye(p, device=images.device)
    else:  # drawn on the CPU: the same sketch on every device
        directions = torch.randn(max_rows, p, generator=torch.Generator().manual_seed(seed)).to(images.device) / max_rows**0.5
    batched = directions.unsqueeze(1).expand(len(directions), m, p).contiguous()
    # one backward pass per row (docs/method.md: 30 % faster than one vmapped, is_grads_batched, pass on the demo), of
    # (preserved * row).sum(): the same vector-Jacobian product as grad_outputs=row, which makes torch import sympy
    # (seconds of a server's first request; docs/architecture.md, "Model artifact")
    spatial = torch.stack([torch.autograd.grad((preserved * row).sum(), activation, retain_graph=i + 1 < len(batched))[0]
                           for i, row in enumerate(batched)])
    rectangle = None
    if with_area:
        region, rectangle = region_from_gradient(spatial.abs().sum(dim=(0, 1, 2)))
    weighted = ungated if region is None else ungated * region
    rows = (spatial * weighted.unsqueeze(0)).sum(dim=(-1, -2))  # (R, m, C)
    return rows.permute(1, 0, 2).contiguous(), directions, region, rectangle, preserved.detach()
