"""Contribution analysis (paper Sec. 5.4, Eq. 7 and 8): which feature maps of an earlier layer
make a target feature map (or the prediction) what it is.

One gate per earlier map and example is fitted to keep the preserved neurons while being small
and similar across the examples. The method, its choices and measurements: docs/method.md,
"Contribution analysis". Modules: :mod:`.api` (entry points), :mod:`.session` (per-analysis
cache), :mod:`.gated_forward` / :mod:`.replay` / :mod:`.lca_graph` (the gated sub-network),
:mod:`.receptive_field`, :mod:`.objective`, :mod:`.sgd`, :mod:`.jacobian`, :mod:`.quadratic`,
:mod:`.box_qp`, :mod:`.fused`, :mod:`.admm` (solvers), :mod:`.result`, :mod:`.options`, :mod:`.deadline`.
"""

from .api import feature_map_contributions, prediction_contributions
from .deadline import ContributionTimeout
from .options import (DEFAULT_GAMMA, DEFAULT_LAMBDA, DEFAULT_LR, DEFAULT_MAX_JACOBIAN_ROWS, DEFAULT_RELINEARISE, DEFAULT_STEPS, MODES,
                      ContributionOptions)
from .result import ContributionResult
from .session import ContributionSession

__all__ = [
    "DEFAULT_GAMMA", "DEFAULT_LAMBDA", "DEFAULT_LR", "DEFAULT_MAX_JACOBIAN_ROWS", "DEFAULT_RELINEARISE", "DEFAULT_STEPS", "MODES",
    "ContributionOptions", "ContributionResult", "ContributionSession", "ContributionTimeout",
    "feature_map_contributions", "prediction_contributions",
]
