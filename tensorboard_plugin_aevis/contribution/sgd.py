"""The SGD mode: gates fitted through the real sub-network with Adam, clamped to [0, 1]."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .deadline import check_deadline
from .objective import Preserved, penalties, relative_error
from .options import ContributionOptions

PLATEAU_WINDOW = 10
PLATEAU_RTOL = 1e-3
PLATEAU_GATE_TOL = 0.01  # 1 % of a gate's range [0, 1]: over the window no gate may move more


def fit_sgd(problem: Preserved, region: Optional[torch.Tensor], options: ContributionOptions) -> Tuple[torch.Tensor, int, torch.Tensor]:
    """Adam from z = 1 on the loss of :mod:`.objective`.

    Args:
        problem: the preserved neurons and the replay (inside its hooks).
        region: (H_e, W_e) float mask of the gated neurons (Eq. 8), None for whole maps.
        options: ``lr``, ``lambda_``, ``gamma``, ``steps`` (the most steps) and ``deadline``.

    Returns:
        (gates (m, C), steps run, the loss gradient (m, C) of the last step). It stops
        early once the fit has plateaued: over the last ``PLATEAU_WINDOW`` steps the loss
        fell by less than ``PLATEAU_RTOL`` of itself and no gate moved by more than
        ``PLATEAU_GATE_TOL`` (Adam's loss is not monotone: a loss alone that rose over the
        window stopped fits whose gates were still in transit).

    Raises:
        ContributionTimeout: past ``options.deadline``.
    """
    z = problem.ones().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=options.lr)
    losses: List[float] = []
    history: List[torch.Tensor] = []  # the gates after each of the last PLATEAU_WINDOW + 1 steps
    with torch.enable_grad():
        for _ in range(options.steps):
            check_deadline(options.deadline)
            optimizer.zero_grad()
            preserved = problem.select(problem.forward.run(z, region))
            loss = relative_error(preserved, problem.reference, problem.norms).sum() + penalties(z, options.lambda_, options.gamma)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                z.clamp_(0.0, 1.0)
            losses.append(float(loss.detach()))
            history = history[-PLATEAU_WINDOW:] + [z.detach().clone()]
            if (len(losses) > PLATEAU_WINDOW and losses[-PLATEAU_WINDOW - 1] - losses[-1] < PLATEAU_RTOL * abs(losses[-1])
                    and float((history[-1] - history[0]).abs().max()) <= PLATEAU_GATE_TOL):
                break
    return z.detach(), len(losses), z.grad.detach().clone()
