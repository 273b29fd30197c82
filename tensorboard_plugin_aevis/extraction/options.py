"""The options of one extraction: a frozen, validated record (docs/method.md, "Options")."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple, Union

import numpy as np

Stage = Union[str, int]
METHOD_DEFAULTS = ("steps", "lr", "lambda_", "gamma", "threshold", "warmup", "multiplicative")  # None: the method's


@dataclasses.dataclass(frozen=True)
class ExtractionOptions:
    """How the gates are fitted. ``None`` fields take the method's default (see
    :attr:`.methods.Constrained.defaults` and :attr:`.methods.DGR.defaults`).

    Attributes:
        steps: the step limit per chain stage (a fit stops earlier on convergence where
            the method converges, see :func:`.fit.converged`).
        lr: the optimiser's learning rate.
        lambda_: the sparsity weight (scaled per example for the constrained method).
        gamma: the chain constraint's weight (0 for DGR).
        threshold: a gate above it is in the binary datapath; in [0, 1).
        order: the chain, a sequence of stages, each a role (all examples with that role,
            one batch) or an example index; None: adversarial, source, target.
        init_noise: in [0, 1); the first start of every fit is ``1 - init_noise * U(0, 1)``
            (0: all ones, the default start).
        seed: seeds the ``torch.Generator`` drawing every perturbed start (None: random).
        starts: K >= 1 starts per example fitted as one batch; the lowest-loss one is
            returned and ``Analysis.stability`` records how often each map was selected.
        start_noise: in (0, 1); starts 2..K begin at ``1 - max(init_noise, start_noise) * U(0, 1)``.
        warmup: W >= 0 steps of every fit in which the gradient weights the fidelity (distillation)
            term by ``t / W`` (step t = 0..W-1; the loss recorded and compared stays Eq. 5), after
            which the optimiser's moments restart; 0: off. Default: 5 for the constrained method,
            0 for DGR. See docs/method.md, "The optimiser investigation".
        multiplicative: apply the optimiser's step ``s`` as ``z <- z * exp(-s)`` (an exponentiated,
            mirror-descent step: every gate moves by the same factor under a uniform gradient)
            instead of ``z <- z - s`` (additive). Default: True for the constrained method, False
            for DGR; ``warmup=0, multiplicative=False`` is the constrained method's former plain Adam.

    Raises (from :meth:`validated`): TypeError / ValueError naming the bad field.
    """

    steps: Optional[int] = None
    lr: Optional[float] = None
    lambda_: Optional[float] = None
    gamma: Optional[float] = None
    threshold: Optional[float] = None
    order: Optional[Tuple[Stage, ...]] = None
    init_noise: float = 0.0
    seed: Optional[int] = None
    starts: int = 1
    start_noise: float = 0.02
    warmup: Optional[int] = None
    multiplicative: Optional[bool] = None

    @classmethod
    def fields(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_defaults(self, defaults: dict) -> "ExtractionOptions":
        """A copy with every ``None`` field of :data:`METHOD_DEFAULTS` set from ``defaults``, validated."""
        filled = {k: defaults[k] for k in METHOD_DEFAULTS if getattr(self, k) is None}
        return dataclasses.replace(self, **filled).validated()

    def validated(self) -> "ExtractionOptions":
        """Self with numbers normalised (ints, floats); raises on an invalid field."""
        numbers = {}
        for key in ("steps", "lr", "lambda_", "gamma", "threshold"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                raise TypeError(f"{key} must be a finite number, got {value!r}")
            numbers[key] = float(value)
        if "steps" in numbers:
            if int(numbers["steps"]) != numbers["steps"] or numbers["steps"] < 1:
                raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
            numbers["steps"] = int(numbers["steps"])
        if numbers.get("lr", 1.0) <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if numbers.get("lambda_", 0.0) < 0 or numbers.get("gamma", 0.0) < 0:
            raise ValueError(f"lambda_ and gamma must be >= 0, got {self.lambda_} and {self.gamma}")
        if not 0 <= numbers.get("threshold", 0.0) < 1:
            raise ValueError(f"threshold must be in [0, 1) (gates start at 1), got {self.threshold}")
        if isinstance(self.init_noise, bool) or not isinstance(self.init_noise, (int, float)) or not 0 <= self.init_noise < 1:
            raise ValueError(f"init_noise must be a number in [0, 1) (gates start at 1 - init_noise * U(0, 1)), got {self.init_noise!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {self.seed!r}")
        if isinstance(self.starts, bool) or not isinstance(self.starts, (int, np.integer)) or self.starts < 1:
            raise ValueError(f"starts must be a positive integer (1: one start; K > 1: a stability score from K starts), got {self.starts!r}")
        if isinstance(self.start_noise, bool) or not isinstance(self.start_noise, (int, float)) or not 0 < self.start_noise < 1:
            raise ValueError(f"start_noise must be a number in (0, 1), got {self.start_noise!r}")
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer))
                                        or self.warmup < 0):
            raise ValueError(f"warmup must be an integer >= 0 (0: no fidelity warm-up) or None (the method's), got {self.warmup!r}")
        if self.multiplicative is not None and not isinstance(self.multiplicative, (bool, np.bool_)):
            raise TypeError(f"multiplicative must be True, False or None (the method's), got {self.multiplicative!r}")
        order = self.order
        if order is not None:
            if isinstance(order, str):
                raise TypeError("order must be a sequence of roles and/or example indices, e.g. ['adversarial', 'source', 'target']")
            order = tuple(order)
        return dataclasses.replace(
            self, **numbers, order=order, init_noise=float(self.init_noise), seed=None if self.seed is None else int(self.seed),
            starts=int(self.starts), start_noise=float(self.start_noise),
            warmup=None if self.warmup is None else int(self.warmup),
            multiplicative=None if self.multiplicative is None else bool(self.multiplicative),
        )


def options_from(options: Optional[ExtractionOptions], overrides: dict) -> ExtractionOptions:
    """``options`` (or the defaults) with the keyword ``overrides`` applied.

    Raises:
        TypeError: ``options`` is not an :class:`ExtractionOptions` or a keyword is unknown.
    """
    if options is None:
        options = ExtractionOptions()
    if not isinstance(options, ExtractionOptions):
        raise TypeError(f"options must be an ExtractionOptions, got {type(options).__name__}")
    unknown = sorted(set(overrides) - set(ExtractionOptions.fields()))
    if unknown:
        raise TypeError(f"extract_datapaths got unknown keyword(s) {unknown}; options are {list(ExtractionOptions.fields())}")
    given = {k: v for k, v in overrides.items() if v is not None or k in ("order", "seed")}
    return dataclasses.replace(options, **given) if given else options

