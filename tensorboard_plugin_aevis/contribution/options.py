"""The engine parameters of one contribution query, as one frozen, validated value."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import numpy as np

MODES = ("sgd", "quadratic")
DEFAULT_LAMBDA = 0.5
DEFAULT_GAMMA = 0.05
DEFAULT_STEPS = 20
DEFAULT_LR = 0.03
DEFAULT_MAX_JACOBIAN_ROWS = 64
DEFAULT_RELINEARISE = 1


@dataclasses.dataclass(frozen=True)
class ContributionOptions:
    """How a contribution query is fitted (docs/method.md, "Contribution analysis").

    ``mode``: ``"sgd"`` (the quadratic answer refined by Adam through the network,
    :func:`.sgd.fit_sgd`) or ``"quadratic"`` (linearised);
    ``lambda_``: weight of the mean gate (L1); ``gamma``: weight of the gates'
    differences between examples; ``steps``: the SGD mode's Adam steps (the quadratic mode
    does not use it); ``lr``: Adam's step size; ``max_jacobian_rows``: preserved neurons above which the quadratic
    mode sketches ``J``; ``seed``: the sketch's seed; ``relinearise``: Gauss-Newton
    re-linearisations after the one at z = 1; ``deadline``: a ``time.monotonic()`` value
    after which :class:`.deadline.ContributionTimeout` is raised (None: no limit);
    ``crop``: with an area, run the part between the layers on the crop of the earlier
    maps the area depends on when one is found (same result, faster).

    Raises ValueError (in the constructor) for an unknown mode or a value out of range.
    """

    mode: str = "sgd"
    lambda_: float = DEFAULT_LAMBDA
    gamma: float = DEFAULT_GAMMA
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    max_jacobian_rows: int = DEFAULT_MAX_JACOBIAN_ROWS
    seed: int = 0
    relinearise: int = DEFAULT_RELINEARISE
    deadline: Optional[float] = None
    crop: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not (np.isfinite(self.lambda_) and self.lambda_ >= 0):
            raise ValueError(f"lambda_ must be a finite number >= 0, got {self.lambda_!r}")
        if not (np.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.relinearise, int) or self.relinearise < 0:
            raise ValueError(f"relinearise must be an integer >= 0, got {self.relinearise!r}")
        if not isinstance(self.max_jacobian_rows, int) or self.max_jacobian_rows < 1:
            raise ValueError(f"max_jacobian_rows must be a positive integer, got {self.max_jacobian_rows!r}")

    @classmethod
    def of(cls, options: Optional["ContributionOptions"] = None, **overrides: Any) -> "ContributionOptions":
        """``options`` (default: all defaults) with the named fields replaced.

        Raises TypeError naming an unknown field, ValueError for a bad value.
        """
        base = options if options is not None else cls()
        if not isinstance(base, cls):
            raise TypeError(f"options must be a ContributionOptions, got {type(base).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown contribution option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return dataclasses.replace(base, **overrides) if overrides else base

    def reported(self) -> Dict[str, Any]:
        """The engine parameters as reported in results (``lambda`` rather than ``lambda_``)."""
        return dict(zip(("lambda", "gamma", "steps", "lr", "max_jacobian_rows", "seed", "relinearise"),
                        (self.lambda_, self.gamma, self.steps, self.lr, self.max_jacobian_rows, self.seed, self.relinearise)))
