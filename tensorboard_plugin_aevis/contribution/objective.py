"""The fit's loss (paper Eq. 7/8): relative fidelity of the preserved neurons plus the L1 and gamma penalties."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from .deadline import check_deadline

NORM_EPS = 1e-8  # the gamma term's smoothed norm sqrt(||d||^2 + NORM_EPS), differentiable at 0


@dataclasses.dataclass(frozen=True)
class Preserved:
    """What a fit preserves: ``select(forward.run(z, region))`` -> (m, P) preserved neurons.

    ``forward``: the :class:`.gated_forward.GatedForward` (inside its hooks); ``images``
    (m, C_in, H, W); ``reference`` (m, P): the preserved neurons of the ungated pass;
    ``norms`` (m,): their squared norms (all > 0); ``channels``: C, the earlier maps.
    """

    forward: Any
    images: torch.Tensor
    select: Callable[[torch.Tensor], torch.Tensor]
    reference: torch.Tensor
    norms: torch.Tensor
    channels: int

    def ones(self) -> torch.Tensor:
        """All-open gates (m, C) on the images' device."""
        return torch.ones(self.images.shape[0], self.channels, device=self.images.device)


def penalties(z: torch.Tensor, lambda_: float, gamma: float) -> torch.Tensor:
    """lambda * sum_i mean_k z_ik + gamma * sum_{i != j} ||z_i - z_j|| for z (m, C)."""
    loss = lambda_ * z.mean(dim=1).sum()
    if gamma > 0 and z.shape[0] > 1:
        diff = z[:, None, :] - z[None, :, :]
        loss = loss + gamma * torch.sqrt((diff**2).sum(-1) + NORM_EPS).sum() - gamma * z.shape[0] * NORM_EPS**0.5
    return loss


def relative_error(preserved: torch.Tensor, reference: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(m,) ||preserved - reference||^2 / ||reference||^2 over the flattened neurons."""
    return ((preserved - reference) ** 2).flatten(1).sum(1) / norms


def preserved_at(problem: Preserved, z: torch.Tensor, region: Optional[torch.Tensor]) -> torch.Tensor:
    """(m, P) the preserved neurons, flattened, at gates ``z`` (m, C) on ``region`` (the gated
    area's (H_e, W_e) float mask, or None) from one pass through the network without autograd."""
    with torch.no_grad():
        return problem.select(problem.forward.run(z, region)).flatten(1)


def quadratic_objective(jac64: np.ndarray, lambda_: float, gamma: float, deadline: Optional[float], target64: Optional[np.ndarray] = None):
    """``objective(flat z) -> (value, gradient)`` of sum_i ||b_i - J_i z_i||^2 + penalties.

    ``jac64``: (m, R, C) float64, already divided by ``sqrt(n_i)``; ``target64``: b (m, R),
    scaled alike, default ``J 1`` (the residual is then ``J (1 - z)``); the penalties are
    those of :func:`penalties`, in numpy (the solver calls this hundreds of times).
    """
    m, _, c = jac64.shape
    target64 = jac64.sum(axis=2) if target64 is None else target64

    def objective(flat: np.ndarray) -> Tuple[float, np.ndarray]:
        check_deadline(deadline)
        z = flat.reshape(m, c)
        residual = target64 - np.einsum("irc,ic->ir", jac64, z)
        grad = -2.0 * np.einsum("irc,ir->ic", jac64, residual) + lambda_ / c
        value = float((residual**2).sum()) + lambda_ * float(z.mean(axis=1).sum())
        if gamma > 0 and m > 1:
            diff = z[:, None, :] - z[None, :, :]
            norm = np.sqrt((diff**2).sum(-1) + NORM_EPS)
            value += gamma * float(norm.sum() - m * NORM_EPS**0.5)
            grad += 2.0 * gamma * (diff / norm[:, :, None]).sum(axis=1)
        return value, grad.reshape(-1)

    return objective
