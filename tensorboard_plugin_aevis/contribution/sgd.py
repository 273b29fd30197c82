"""The SGD mode: the quadratic mode's answer refined through the real sub-network by Adam, the best iterate kept."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .deadline import check_deadline
from .objective import Preserved, penalties, relative_error
from .options import ContributionOptions


def fit_sgd(problem: Preserved, start: torch.Tensor, region: Optional[torch.Tensor], options: ContributionOptions
            ) -> Tuple[torch.Tensor, int, torch.Tensor]:
    """Adam on the loss of :mod:`.objective` through the network, from the quadratic mode's gates.

    ``options.steps`` Adam steps of size ``options.lr`` from ``start``, each clamped to [0, 1].
    The loss is evaluated at the start and after every step; the gates of the lowest loss are
    returned, so the answer's loss is never above the start's (docs/method.md, "Contribution
    analysis", for why this start and this budget).

    Args:
        problem: the preserved neurons and the replay (inside its hooks).
        start: (m, C) the first gates: the quadratic mode's answer (:func:`.quadratic.fit_linearised`).
        region: (H_e, W_e) float mask of the gated neurons (Eq. 8), None for whole maps.
        options: ``lr``, ``steps``, ``lambda_``, ``gamma``, ``deadline``.

    Returns:
        (gates (m, C), Adam steps run, the loss gradient (m, C) at the returned gates).

    Raises:
        ContributionTimeout: past ``options.deadline``.
    """
    z = start.clone().requires_grad_(True)
    moments = (torch.zeros_like(z), torch.zeros_like(z))
    best_loss, best_gates, best_gradient = math.inf, start, None
    with torch.enable_grad():
        for step in range(options.steps + 1):
            check_deadline(options.deadline)
            z.grad = None
            preserved = problem.select(problem.forward.run(z, region))
            loss = relative_error(preserved, problem.reference, problem.norms).sum() + penalties(z, options.lambda_, options.gamma)
            loss.backward()
            if float(loss.detach()) < best_loss or best_gradient is None:
                best_loss, best_gates, best_gradient = float(loss.detach()), z.detach().clone(), z.grad.detach().clone()
            if step == options.steps:
                break
            with torch.no_grad():
                adam_step(z, z.grad, moments, step + 1, options.lr)
                z.clamp_(0.0, 1.0)
    return best_gates, options.steps, best_gradient


def adam_step(param: torch.Tensor, grad: torch.Tensor, moments: Tuple[torch.Tensor, torch.Tensor], step: int, lr: float,
              betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One step of ``torch.optim.Adam`` (its defaults, its single-tensor CPU arithmetic) on ``param`` in place.

    ``moments``: the (first, second) moment tensors, updated in place; ``step``: 1 for the first step.
    Written out because ``torch.optim`` imports ``torch._dynamo`` on first use, which takes seconds
    of a server's first contribution request (docs/architecture.md, "Model artifact")."""
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = moments
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
