"""The entry points: one contribution query on a fresh :class:`.session.ContributionSession`."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import nn

from .inputs import Area
from .options import ContributionOptions
from .result import ContributionResult
from .session import ContributionSession


def feature_map_contributions(model: nn.Module, images: torch.Tensor, target_layer: str, channel: int, earlier_layer: str,
                              area: Optional[Area] = None, options: Optional[ContributionOptions] = None,
                              **overrides: Any) -> ContributionResult:
    """Contribution of each feature map of ``earlier_layer`` to map ``channel`` of ``target_layer`` (Eq. 7/8).

    Args:
        model: the network.
        images: (m, C_in, H, W), the m datapaths' examples analysed together (in the model's
            input space; [0, 1] for a ClassifierWrapper).
        target_layer, channel: the target map; earlier_layer: the layer whose maps are gated.
        area: None for Eq. 7 (whole target map) or, for Eq. 8, a half-open rectangle
            ``(y0, x0, y1, x1)`` in target-map neuron coordinates or an ``(H_t, W_t)`` boolean mask.
        options: the engine parameters (:class:`ContributionOptions`); ``overrides`` replace
            single fields, e.g. ``mode="quadratic", steps=40``.

    Returns:
        The :class:`ContributionResult`.

    Raises:
        ValueError: an unknown layer or channel, an area outside the map, an earlier layer that
            does not run before the target, a bad option value; TypeError: an unknown option.
        ContributionTimeout: past ``options.deadline`` (checked between steps).
    """
    start = time.perf_counter()
    options = ContributionOptions.of(options, **overrides)
    session = ContributionSession(model, images, earlier_layer, target_layer, deadline=options.deadline)
    result = session.feature_map(channel, area, options)
    result.seconds = time.perf_counter() - start
    return result


def prediction_contributions(model: nn.Module, images: torch.Tensor, layer: str, options: Optional[ContributionOptions] = None,
                             **overrides: Any) -> ContributionResult:
    """Contribution of each feature map of ``layer`` to the final prediction (its centred logits).

    Gates on ``layer`` only; arguments, result and errors as :func:`feature_map_contributions`.
    """
    start = time.perf_counter()
    options = ContributionOptions.of(options, **overrides)
    session = ContributionSession(model, images, layer, None, deadline=options.deadline)
    result = session.prediction(options)
    result.seconds = time.perf_counter() - start
    return result
