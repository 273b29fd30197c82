"""The two extraction methods, each owning its loss, optimiser step and defaults.

:class:`Constrained` is the paper's Eq. 5 chain, :class:`DGR` the baseline of Wang et al.
(2018). The objectives, their scaling and the optimiser choice are explained, with the
measurements behind them, in docs/method.md.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch

from .options import ExtractionOptions

NORM_EPS = 1e-12  # keeps the gradient of ||z - z_j|| finite at z = z_j
FIDELITY_MAX_CONFIDENCE = 0.95


class Constrained:
    """Eq. 5 per example, fitted with Adam's step applied multiplicatively (``z * exp(-s)``) after a
    5-step fidelity warm-up, stopped on convergence (docs/method.md, "Constrained")::

        ||p(x) - p(x; z)||^2 + lambda_x ||z||_1 + gamma_x sum_j ||z - z_j||_2
        lambda_x = lambda ||p(x)||^2 / n,  gamma_x = gamma ||p(x)||^2 / sqrt(n)   (n gates)
    """

    name = "constrained"
    defaults: Dict[str, Any] = {"steps": 100, "lr": 0.1, "lambda_": 0.1, "gamma": 0.5, "threshold": 0.5,
                                "warmup": 5, "multiplicative": True}
    betas = (0.9, 0.999)
    eps = 1e-8
    converges = True  # stops on convergence, see fit.converged
    repairs_labels = True  # lowers the threshold where the binarised datapath loses the label
    refits_saturated = True  # the fidelity temperature, see fidelity_temperatures
    refits_whole_plainly = True  # a fit ending whole is refitted with plain Adam (docs/method.md, "Plain refit")

    def clamp(self, has_blocks: bool) -> float:
        """The upper bound of the gates' box (the lower is 0)."""
        return 1.0

    def loss(self, logits: torch.Tensor, clean_probs: torch.Tensor, temperatures: torch.Tensor, z: torch.Tensor,
             anchors: torch.Tensor, options: ExtractionOptions, weight: float = 1.0) -> torch.Tensor:
        """Per-example Eq. 5.

        Args:
            logits: (B, K) gated logits.
            clean_probs: (B, K) ungated prediction at ``temperatures``.
            temperatures: (B,) fidelity temperatures (1: Eq. 5 as written).
            z: (B, n) gates.
            anchors: (A, n) datapaths extracted earlier in the chain (A may be 0).
            weight: the fidelity term's weight in the gradient (the fidelity warm-up); the value
                is Eq. 5 whatever the weight.
        Returns:
            (B,) losses.
        """
        n = z.shape[1]
        fidelity = ((torch.softmax(logits / temperatures[:, None], dim=1) - clean_probs) ** 2).sum(dim=1)
        strength = (clean_probs**2).sum(dim=1)  # ||p(x)||^2: the scale of the fidelity term for x
        loss = gradient_weighted(fidelity, weight) + options.lambda_ * strength * z.abs().sum(dim=1) / n
        if options.gamma > 0 and anchors.shape[0] > 0:
            sq = ((z[:, None, :] - anchors[None, :, :]) ** 2).sum(dim=2)  # (B, A)
            loss = loss + options.gamma * strength * torch.sqrt(sq + NORM_EPS).sum(dim=1) / math.sqrt(n)
        return loss

    def init_state(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Adam's first and second moments, zeros like z (B, n)."""
        return torch.zeros_like(z), torch.zeros_like(z)

    def step(self, grad: torch.Tensor, state: Tuple[torch.Tensor, ...], t: int, lr: float) -> torch.Tensor:
        """The update to subtract at step t >= 1 (elementwise Adam, so each example keeps its own state);
        ``state`` is updated in place."""
        m, v = state
        beta1, beta2 = self.betas
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + self.eps)

    def description(self, tol: float, window: int) -> Dict[str, Any]:
        return {
            "objective": "||p(x)-p(x;z)||^2 + lambda_x*||z||_1 + gamma_x*sum_j ||z-z_j||_2",
            "scaling": "lambda_x = lambda*||p(x)||^2/n, gamma_x = gamma*||p(x)||^2/sqrt(n), n = number of gates",
            "optimizer": f"Adam betas {list(self.betas)}, its step s applied as z*exp(-s) if multiplicative else z-s, "
                         "after warmup steps weighting the fidelity's gradient by t/warmup",
            "stopping": f"loss range <= {tol:g} x loss over the last {window} steps and the binary datapath "
                        f"unchanged over those {window + 1} steps, or the step limit",
            "label_repair": "where the binarised label is lost: the smallest top-k gates keeping it (per-example threshold)",
        }


class DGR:
    """The DGR baseline (docs/method.md, "DGR"): distillation cross-entropy plus ``lambda * sum|z|``,
    SGD with momentum for a fixed number of steps, no chain, no label repair."""

    name = "dgr"
    defaults: Dict[str, Any] = {"steps": 30, "lr": 0.1, "lambda_": 0.05, "gamma": 0.0, "threshold": 0.0,
                                "warmup": 0, "multiplicative": False}
    momentum = 0.9
    clamp_residual = 100.0
    clamp_plain = 5.0
    converges = False
    repairs_labels = False
    refits_saturated = False
    refits_whole_plainly = False

    def clamp(self, has_blocks: bool) -> float:
        """[0, 100] when a gated layer is a merging (residual / concatenating) block, else [0, 5]."""
        return self.clamp_residual if has_blocks else self.clamp_plain

    def loss(self, logits: torch.Tensor, clean_probs: torch.Tensor, temperatures: torch.Tensor, z: torch.Tensor,
             anchors: torch.Tensor, options: ExtractionOptions, weight: float = 1.0) -> torch.Tensor:
        """(B,) ``-sum_c p_c(x) log p_c(x; z) + lambda * sum|z|``; arguments as :meth:`Constrained.loss`
        (``weight`` weights the distillation term's gradient; ``temperatures`` and ``anchors`` unused:
        DGR has neither)."""
        distill = -(clean_probs * torch.log_softmax(logits, dim=1)).sum(dim=1)
        return gradient_weighted(distill, weight) + options.lambda_ * z.abs().sum(dim=1)

    def init_state(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The momentum buffer, zeros like z (B, n)."""
        return (torch.zeros_like(z),)

    def step(self, grad: torch.Tensor, state: Tuple[torch.Tensor, ...], t: int, lr: float) -> torch.Tensor:
        """SGD with momentum (PyTorch's convention: the first buffer is the gradient); in place."""
        (buf,) = state
        if t == 1:
            buf.copy_(grad)
        else:
            buf.mul_(self.momentum).add_(grad)
        return lr * buf

    def description(self, tol: float, window: int) -> Dict[str, Any]:
        return {
            "objective": "-sum_c p_c(x) log p_c(x;z) + lambda * sum|z|",
            "optimizer": f"SGD momentum {self.momentum}",
            "clamp_rule": f"[0, {self.clamp_residual:g}] if a gated layer is a merging block, else [0, {self.clamp_plain:g}]",
            "stopping": "fixed number of steps",
        }


METHODS = {m.name: m for m in (Constrained(), DGR())}


def method_named(name: str):
    """The method object for ``name``. Raises ValueError for an unknown name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use 'constrained' (the paper's) or 'dgr' (the baseline)")
    return METHODS[name]


def gradient_weighted(term: torch.Tensor, weight: float) -> torch.Tensor:
    """``term`` (B,) unchanged in value, its gradient multiplied by ``weight``."""
    if weight == 1.0:
        return term
    return weight * term + ((1.0 - weight) * term).detach()


def fidelity_temperatures(logits: torch.Tensor) -> torch.Tensor:
    """Per example the temperature T >= 1 at which the confidence is at most FIDELITY_MAX_CONFIDENCE.

    Args:
        logits: (B, K) ungated logits.
    Returns:
        (B,) float32: 1 where ``max softmax(logits)`` <= 0.95, else the T (bisection, 40 rounds) with
        ``max softmax(logits / T)`` = 0.95 (that confidence falls monotonically as T grows).
    """
    logits = logits.double()

    def confidence(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / t[:, None], dim=1).amax(dim=1)

    ones = torch.ones(logits.shape[0], dtype=torch.float64, device=logits.device)
    saturated = confidence(ones) > FIDELITY_MAX_CONFIDENCE
    if not bool(saturated.any()):
        return ones.float()
    low, high = ones.clone(), ones.clone()
    while bool((confidence(high) > FIDELITY_MAX_CONFIDENCE).any()):
        high = torch.where(confidence(high) > FIDELITY_MAX_CONFIDENCE, high * 2, high)
    for _ in range(40):
        mid = (low + high) / 2
        above = confidence(mid) > FIDELITY_MAX_CONFIDENCE
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return torch.where(saturated, high, ones).float()
