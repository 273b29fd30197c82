"""Gradient-sign attacks in [0, 1] pixel space: FGSM, PGD and MI-FGSM.

All attacks take a classifier whose input is in [0, 1] pixel space (normalisation
inside the model, see :class:`~tensorboard_plugin_aevis.models.ClassifierWrapper`),
images ``x`` (B, C, H, W) in [0, 1], and return adversarial images of the same shape,
inside the L-infinity ball of radius ``eps`` around ``x`` and inside [0, 1].

- Untargeted (``target=None``): steps UP the cross-entropy of ``label`` (default: the
  model's own prediction on ``x``).
- Targeted (``target`` given): steps DOWN the cross-entropy of ``target``.

Batched: every example gets its own gradient and its own normalisation. The model is
left as it was: it runs in eval mode during the attack (training flags restored
afterwards) and gradients are taken w.r.t. the images only, so no parameter ``.grad``
is touched.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .models import eval_mode

Labels = Optional[Union[int, torch.Tensor]]


def fgsm(model: nn.Module, x: torch.Tensor, label: Labels = None, target: Labels = None, eps: float = 8 / 255) -> torch.Tensor:
    """One signed-gradient step of size ``eps``: ``clip_[0,1](x ± eps * sign(grad))`` -> (B, C, H, W)."""
    _check_budget(eps, steps=1)
    with eval_mode(model):
        x0, labels, direction = _prepare(model, x, label, target)
        grad = _loss_gradient(model, x0, labels)
        return (x0 + direction * eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    label: Labels = None,
    target: Labels = None,
    eps: float = 8 / 255,
    steps: int = 10,
    alpha: Optional[float] = None,
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.) -> (B, C, H, W).

    Start at ``x`` plus uniform noise in [-eps, eps] (``random_start``, drawn with
    ``generator`` on x's device), then ``steps`` times ``x <- clip_{x0,eps}(x ± alpha * sign(grad))``
    and clip to [0, 1]. ``alpha`` defaults to ``2.5 * eps / steps``.
    """
    _check_budget(eps, steps)
    alpha = 2.5 * eps / steps if alpha is None else float(alpha)
    with eval_mode(model):
        x0, labels, direction = _prepare(model, x, label, target)
        adv = x0.clone()
        if random_start:
            noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            adv = (adv + (noise * 2 - 1) * eps).clamp(0.0, 1.0)
        for _ in range(steps):
            grad = _loss_gradient(model, adv, labels)
            adv = _project(adv + direction * alpha * grad.sign(), x0, eps)
        return adv.detach()


def mi_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    label: Labels = None,
    target: Labels = None,
    eps: float = 16 / 255,
    steps: int = 10,
    mu: float = 1.0,
    alpha: Optional[float] = None,
) -> torch.Tensor:
    """Momentum iterative FGSM (Dong et al. 2018, docs/method.md "Attacks") -> (B, C, H, W).

    Per example, ``steps`` times: ``g <- mu * g + grad / mean(|grad|)``, then
    ``x <- clip_{x0,eps}(x ± alpha * sign(g))`` and clip to [0, 1]; ``alpha``
    defaults to ``eps / steps``. ``mean(|grad|)`` is over C, H, W (floored at 1e-12
    so an all-zero gradient leaves the image in place instead of dividing by zero).
    """
    _check_budget(eps, steps)
    if mu < 0:
        raise ValueError(f"momentum mu must be >= 0, got {mu}")
    alpha = eps / steps if alpha is None else float(alpha)
    with eval_mode(model):
        x0, labels, direction = _prepare(model, x, label, target)
        adv = x0.clone()
        momentum = torch.zeros_like(x0)
        for _ in range(steps):
            grad = _loss_gradient(model, adv, labels)
            l1 = grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True).clamp_min(1e-12)
            momentum = mu * momentum + grad / l1
            adv = _project(adv + direction * alpha * momentum.sign(), x0, eps)
        return adv.detach()


# ----------------------------------------------------------------------------- helpers


def _check_budget(eps: float, steps: int) -> None:
    if not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
        raise ValueError(f"eps must be a number in [0, 1] (pixel units, e.g. 16/255), got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _prepare(model: nn.Module, x: torch.Tensor, label: Labels, target: Labels):
    """Validate; return (x0 detached, the labels the loss uses (B,), +1 untargeted / -1 targeted)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) image tensor, got {shape}; add a batch dimension with x.unsqueeze(0)")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values; pass images in [0, 1]")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(
            f"x must be in [0, 1] pixel space (got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]); "
            "put the normalisation inside the model (ClassifierWrapper) instead of normalising the images"
        )
    x0 = x.detach().float()
    with torch.no_grad():
        logits = model(x0)
    if logits.dim() != 2 or logits.shape[0] != x0.shape[0]:
        raise ValueError(f"the model returned shape {tuple(logits.shape)}, not logits (B, num_classes); wrap it to return class logits")
    num_classes = logits.shape[1]
    if target is not None:
        return x0, _as_labels(target, x0.shape[0], num_classes, "target", x0.device), -1.0
    if label is None:
        return x0, logits.argmax(dim=1), 1.0
    return x0, _as_labels(label, x0.shape[0], num_classes, "label", x0.device), 1.0


def _as_labels(value: Union[int, torch.Tensor], batch: int, num_classes: int, what: str, device) -> torch.Tensor:
    labels = torch.as_tensor(value, device=device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.long().reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch)
    if labels.numel() != batch:
        raise ValueError(f"{what} has {labels.numel()} entries for {batch} images; pass one class index per image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{what} {labels.tolist()} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return labels


def _loss_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d/dx of the summed cross-entropy of ``labels`` -> (B, C, H, W); example b's gradient is its own."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip into the L-infinity ball of radius ``eps`` around ``x0``, then into [0, 1]."""
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0.0, 1.0).detach()
