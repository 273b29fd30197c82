"""Datapath extraction: the constrained chain (paper Eq. 4-5) and the DGR baseline.

Both fit one gate per feature map of the gated layers (:mod:`..gating`) with the model's
weights frozen and return an :class:`~..analysis.Analysis`. One fit loop (:mod:`.fit`)
serves both methods; each method (:mod:`.methods`) owns its loss, step and defaults;
:class:`.options.ExtractionOptions` holds the options. Why each choice, and what was
measured: docs/method.md.
"""

from .api import extract_datapaths
from .methods import DGR, FIDELITY_MAX_CONFIDENCE, Constrained, fidelity_temperatures
from .options import ExtractionOptions

__all__ = ["extract_datapaths", "ExtractionOptions", "Constrained", "DGR", "FIDELITY_MAX_CONFIDENCE", "fidelity_temperatures"]
