"""The answer of a contribution query and its ranking of the earlier feature maps."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass
class ContributionResult:
    """Contributions of the C feature maps of ``earlier_layer`` for m examples.

    ``gates``: (m, C) fitted gates in [0, 1]; ``scores``: (C,) their mean over the
    examples; ``ranking``: channel indices sorted by score, highest first;
    ``fidelity``: (m,) relative squared error ``||f - f(z)||^2 / ||f||^2`` of the
    preserved quantity with the fitted gates, measured through the real network;
    ``region``: the gated rectangle ``(y0, x0, y1, x1)`` (half-open) on the earlier
    layer's grid for Eq. 8, ``None`` when the whole maps are gated.
    ``target_layer`` is ``None`` for contributions to the prediction. ``crop``: the
    rectangle of the earlier maps the computation ran on (:func:`.receptive_field.local_crop`), ``None``
    when it ran on the whole maps; the result is the same either way.
    """

    earlier_layer: str
    target_layer: Optional[str]
    channel: Optional[int]
    area: Optional[Tuple[int, int, int, int]]
    area_neurons: int
    mode: str
    gates: np.ndarray
    scores: np.ndarray
    ranking: List[int]
    fidelity: np.ndarray
    region: Optional[Tuple[int, int, int, int]]
    earlier_shape: Tuple[int, int, int]
    params: Dict[str, Any]
    seconds: float
    crop: Optional[Tuple[int, int, int, int]] = None

    def to_json(self, top: Optional[int] = None) -> Dict[str, Any]:
        """Plain JSON values; ``top`` limits the ranked list (all maps when None)."""
        ranked = self.ranking if top is None else self.ranking[:top]
        return {
            "earlier_layer": self.earlier_layer,
            "target_layer": self.target_layer,
            "channel": self.channel,
            "area": list(self.area) if self.area is not None else None,
            "area_neurons": self.area_neurons,
            "mode": self.mode,
            "region": list(self.region) if self.region is not None else None,
            "earlier_shape": list(self.earlier_shape),
            "params": self.params,
            "seconds": self.seconds,
            "fidelity": [float(v) for v in self.fidelity],
            "scores": [float(v) for v in self.scores],
            "gates": [[float(v) for v in row] for row in self.gates],
            "ranking": [{"channel": int(c), "score": float(self.scores[c])} for c in ranked],
        }



def ranking(gates: np.ndarray, pressure: np.ndarray) -> List[int]:
    """Channel indices by score (the gate averaged over the examples), highest first.

    Args:
        gates: (m, C) fitted gates in [0, 1].
        pressure: (m, C) the fit's gradient at the gates; averaged over the examples, it
            orders maps of equal score (lower first: at z = 1 the more needed map), then
            the lower channel index.

    Returns:
        The C channel indices, ranked.
    """
    scores, hold = gates.mean(axis=0), pressure.mean(axis=0)
    return sorted(range(len(scores)), key=lambda c: (-scores[c], hold[c], c))
