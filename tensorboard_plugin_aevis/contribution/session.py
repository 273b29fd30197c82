"""Many contribution queries on one model, image batch, earlier and target layer: the per-analysis cache."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..bounded_cache import ByteLRU
from .deadline import check_deadline
from .gated_forward import GatedForward
from .inputs import Area, area_mask, check_images
from .model_access import analysis_mode
from .objective import Preserved, preserved_at, relative_error
from .options import ContributionOptions
from .quadratic import fit_linearised
from .receptive_field import local_crop, shift
from .result import ContributionResult, ranking
from .sgd import fit_sgd

Select = Callable[[torch.Tensor], torch.Tensor]
LINEARISED_CACHE_BYTES = 8 << 20  # the quadratic answers a session keeps as the SGD mode's starts


class ContributionSession:
    """Many contribution queries on one model, image batch, earlier layer and target layer.

    The constructor runs the one real forward pass (up to the target) and prepares the
    replay between the two layers (:class:`.gated_forward.GatedForward`: the activations
    below the earlier layer are computed once and cached); every query
    (:meth:`feature_map` for a channel and an area, or :meth:`prediction` when
    ``target_layer`` is None) then re-runs only the part between the layers. The quadratic
    mode's answer of a query is kept (up to ``LINEARISED_CACHE_BYTES``): the SGD mode of the
    same query starts from it without computing it again. The model must not change while a
    session is used.

    Args:
        model: the network (put in eval mode with frozen parameters during each call, then restored).
        images: (m, C_in, H, W) the examples analysed together (a (C_in, H, W) image is one example).
        earlier_layer, target_layer: module paths; ``target_layer`` None: the prediction.
        deadline: a ``time.monotonic()`` value for the preparing pass.

    Raises:
        ValueError / TypeError: bad images, an unknown layer, an earlier layer that does not run before the target.
        ContributionTimeout: the preparing pass ended past ``deadline``.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, earlier_layer: str, target_layer: Optional[str] = None,
                 deadline: Optional[float] = None):
        self.images = check_images(images)
        if earlier_layer == target_layer:
            raise ValueError(f"earlier layer and target layer are both {target_layer!r}; pick an earlier layer closer to the input")
        self.model, self.earlier_layer, self.target_layer = model, earlier_layer, target_layer
        self._forward = GatedForward(model, earlier_layer, target_layer)
        with analysis_mode(model), self._forward.hooks(), torch.no_grad():
            self._output = self._forward.prepare(self.images, earlier_layer, target_layer)
        self.earlier_shape = tuple(int(v) for v in self._forward.gated.shape[1:])
        self._crop_margin: Optional[int] = 1  # in target neurons; None: the layers are not spatially local, never crop
        self._linearised = ByteLRU(LINEARISED_CACHE_BYTES)
        check_deadline(deadline)

    def clear_cache(self) -> None:
        """Forget the kept quadratic answers: the next query of each computes everything again."""
        self._linearised = ByteLRU(LINEARISED_CACHE_BYTES)

    @property
    def target_shape(self) -> Tuple[int, ...]:
        """Shape of the target output for one example: (C_t, H_t, W_t), or (K,) for the prediction."""
        return tuple(int(v) for v in self._output.shape[1:])

    def feature_map(self, channel: int, area: Optional[Area] = None, options: Optional[ContributionOptions] = None,
                    **overrides: Any) -> ContributionResult:
        """Eq. 7 (``area`` None) or Eq. 8 for map ``channel`` of the target layer.

        Args:
            channel: the target map.
            area: None (Eq. 7: the whole map) or, for Eq. 8, a half-open rectangle
                ``(y0, x0, y1, x1)`` in target-map neurons or an (H_t, W_t) boolean mask.
            options: the engine parameters (default :class:`ContributionOptions`()); ``overrides``
                replace single fields (``mode="quadratic"``). With an area and ``options.crop``,
                the part between the layers runs only on the crop of the earlier maps that the
                area depends on, when :func:`.receptive_field.local_crop` finds one (same result).

        Returns:
            The :class:`ContributionResult`.

        Raises:
            ValueError: an unknown channel, an area outside the map, all-zero preserved neurons.
            ContributionTimeout: past ``options.deadline``.
        """
        start = time.perf_counter()
        options = ContributionOptions.of(options, **overrides)
        out = self._output
        if self.target_layer is None:
            raise ValueError("this session's target is the prediction; create one with a target_layer for feature maps")
        if out.dim() != 4:
            raise ValueError(f"the target layer outputs shape {tuple(out.shape)}, not a (B, C, H, W) feature map; pick a convolutional block")
        if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < out.shape[1]:
            raise ValueError(f"channel {channel!r} does not exist in target layer {self.target_layer!r}: it has {out.shape[1]} feature maps (0..{out.shape[1] - 1})")
        channel = int(channel)
        rectangle, mask = None, None
        if area is None:
            neurons = int(out.shape[2] * out.shape[3])
            select = lambda o: o[:, channel]  # noqa: E731
        else:
            mask, rectangle = area_mask(area, int(out.shape[2]), int(out.shape[3]))
            mask = mask.to(out.device)
            neurons = int(mask.sum())
            select = lambda o: o[:, channel][:, mask]  # noqa: E731
        query = (channel, None if mask is None else mask.cpu().numpy().tobytes())
        fit = self._fit(select, mask, channel if options.crop else None, options, query)
        return self._result(fit, options, start, channel=channel, area=rectangle, area_neurons=neurons)

    def prediction(self, options: Optional[ContributionOptions] = None, **overrides: Any) -> ContributionResult:
        """Contributions to the prediction: the preserved quantity is the centred logits (m, K).

        Args / Raises: as :meth:`feature_map` (no area; ``crop`` is not used).
        """
        start = time.perf_counter()
        options = ContributionOptions.of(options, **overrides)
        if self.target_layer is not None:
            raise ValueError("this session's target is a feature map; create one with target_layer=None for the prediction")
        if self._output.dim() != 2:
            raise ValueError(f"the model outputs shape {tuple(self._output.shape)}; contributions to the prediction need logits (B, K)")
        fit = self._fit(lambda o: o - o.mean(dim=1, keepdim=True), None, None, options, ("prediction",))
        return self._result(fit, options, start, channel=None, area=None, area_neurons=0)

    def _result(self, fit: dict, options: ContributionOptions, start: float, **query: Any) -> ContributionResult:
        params = options.reported()
        if fit["steps_run"] is not None:
            params["steps_run"] = fit["steps_run"]
        return ContributionResult(
            earlier_layer=self.earlier_layer, target_layer=self.target_layer, mode=options.mode, gates=fit["gates"],
            scores=fit["gates"].mean(axis=0), ranking=ranking(fit["gates"], fit["pressure"]), fidelity=fit["fidelity"],
            region=fit["region"], earlier_shape=self.earlier_shape, params=params, seconds=time.perf_counter() - start,
            crop=fit["crop"], **query,
        )

    def _fit(self, select: Select, mask: Optional[torch.Tensor], crop_channel: Optional[int], options: ContributionOptions,
             query: tuple) -> dict:
        """The fit of the preserved ``select(out)`` -> dict of ``gates`` (m, C), ``fidelity`` (m,),
        ``pressure`` (m, C) the gradient at the gates, ``region`` the gated rectangle or None,
        ``crop`` or None, ``steps_run`` (SGD) or None.

        ``mask``: (H_t, W_t) bool for Eq. 8, else None; ``crop_channel``: the target channel
        when the computation may run on a crop of the earlier maps, else None; ``query``:
        what identifies the preserved neurons (with the crop and the options, the key of the
        kept quadratic answers).
        """
        forward = self._forward
        reference = select(self._output).detach()
        norms = reference.flatten(1).pow(2).sum(1)
        if not bool((norms > 0).all()):
            zero = [int(i) for i in torch.nonzero(norms == 0).flatten()]
            raise ValueError(
                f"the preserved neurons are all zero for example(s) {zero}: nothing to explain; "
                "select an area where the target map is active on every example"
            )
        with analysis_mode(self.model), forward.hooks():
            check_deadline(options.deadline)
            crop = None
            if mask is not None and crop_channel is not None and self._crop_margin is not None:
                with torch.no_grad():
                    found, self._crop_margin = local_crop(forward, mask, crop_channel, reference, self.earlier_shape[1:], self._crop_margin)
                if found is not None:
                    crop, window = found
                    select = lambda o: o[:, crop_channel][:, window]  # noqa: E731
            problem = Preserved(forward, self.images, select, reference, norms, self.earlier_shape[0])
            key = (query, crop, options.lambda_, options.gamma, options.max_jacobian_rows, options.seed, options.relinearise)
            try:
                forward.crop = crop
                linearised = self._linearised.get_or_compute(key, lambda: fit_linearised(problem, mask is not None, options),
                                                             lambda fit: sum(t.numel() * t.element_size() for t in fit if isinstance(t, torch.Tensor)))
                fit = _fit_gates(problem, linearised, options)
            finally:
                forward.crop = None
        fit.update(region=shift(fit["region"], crop), crop=crop)
        return fit


def _fit_gates(problem: Preserved, linearised: tuple, options: ContributionOptions) -> dict:
    """The fit itself (inside the hooks, on the crop when ``forward.crop`` is set) from the quadratic
    mode's answer ``linearised`` (:func:`.quadratic.fit_linearised`); see :meth:`ContributionSession._fit`."""
    gates, region, rectangle, pressure, fidelity = linearised
    steps_run = None
    if options.mode == "sgd":
        gates, steps_run, pressure = fit_sgd(problem, gates, region, options)
        fidelity = relative_error(preserved_at(problem, gates, region), problem.reference.flatten(1), problem.norms)
    return dict(gates=gates.cpu().numpy().copy(), fidelity=fidelity.cpu().numpy(), pressure=pressure.cpu().numpy().copy(), region=rectangle,
                steps_run=steps_run)
