"""Distances between datapaths, the diff curve (Eq. 9), diverging/merging detection
(Eq. 10) and representative-target selection (Sec. 6.2.1).

All distances use the continuous gates (``docs/method.md``): the datapath of
example i at layer l is ``analysis.gates[l][i]``, a vector of C_l gates.
Layer indices are 0-based positions in ``analysis.layers``.

``normalization``: ``"l2"`` is the paper's raw L2 distance; ``"rms"`` divides it by
sqrt(C_l), the root-mean-square gate difference, so layers of different widths
compare (a layer of 4C channels with the same per-channel difference has twice the
L2 distance but the same RMS distance).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .analysis import Analysis

DEFAULT_R = 8  # the paper's r (Sec. 6.1)
NORMALIZATIONS = ("l2", "rms")


@dataclasses.dataclass
class DivergingMerging:
    """Result of Eq. 10 on a diff curve of L layers.

    ``detected``: n_l == r and the last layer has the maximum diff. ``n_l``: how many
    of the last r layers rise (``diff[i] > diff[i-1]``). ``merging_layer``: index of
    the largest diff (the adversarial datapath is closest to the target relative to
    the source there), None when that maximum is not positive. ``diverging_layer``:
    the start of the strictly rising run of diff that ends at the merging layer (the
    last layer before the adversarial datapath starts leaving the source for the
    target), None when there is no merging layer or no rise into it.
    """

    detected: bool
    n_l: int
    r: int
    diverging_layer: Optional[int]
    merging_layer: Optional[int]

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def _check_example(analysis: Analysis, i: int, what: str = "example") -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{what} index must be an int, got {type(i).__name__}")
    n = analysis.num_examples
    if not 0 <= int(i) < n:
        raise ValueError(f"{what} index {i} is out of range; the analysis has examples 0..{n - 1}")
    return int(i)


def check_normalization(normalization: str) -> str:
    """``normalization`` itself; raises ValueError when it is not one of NORMALIZATIONS."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    return normalization


def layer_widths(analysis: Analysis) -> np.ndarray:
    """(L,) number of channels C_l of each gated layer."""
    return np.array([g.shape[1] for g in analysis.gates], dtype=np.float64)


def layer_distances(analysis: Analysis, i: int, j: int, normalization: str = "l2") -> np.ndarray:
    """(L,) distance between the continuous gates of examples i and j at each layer:
    L2 (``"l2"``) or L2 / sqrt(C_l) (``"rms"``). Raises ValueError for another normalization."""
    check_normalization(normalization)
    i, j = _check_example(analysis, i), _check_example(analysis, j)
    d = np.array([np.linalg.norm(g[i].astype(np.float64) - g[j].astype(np.float64)) for g in analysis.gates])
    return d / np.sqrt(layer_widths(analysis)) if normalization == "rms" else d


def pairwise_layer_distances(analysis: Analysis) -> Dict[Tuple[int, int], np.ndarray]:
    """``{(i, j): layer_distances(analysis, i, j)}`` for every pair i < j."""
    n = analysis.num_examples
    return {(i, j): layer_distances(analysis, i, j) for i in range(n) for j in range(i + 1, n)}


def datapath_distance(analysis: Analysis, i: int, j: int) -> float:
    """Eq. 5 distance ``||z_i - z_j||_2`` over the gates of all layers together."""
    return float(np.sqrt(np.sum(layer_distances(analysis, i, j) ** 2)))


def diff_curve(analysis: Analysis, adversarial: int, source: int, target: int, normalization: str = "l2") -> np.ndarray:
    """(L,) Eq. 9: ``||z_adv(l) - z_src(l)||_2 - ||z_adv(l) - z_tar(l)||_2`` per layer l
    (each term divided by sqrt(C_l) for ``normalization="rms"``)."""
    return (layer_distances(analysis, adversarial, source, normalization)
            - layer_distances(analysis, adversarial, target, normalization))


def default_r(num_layers: int) -> int:
    """The paper's r = 8, capped at L - 1 for shallow models (Eq. 10 needs r <= L - 1)."""
    return max(1, min(DEFAULT_R, num_layers - 1))


def detect_diverging_merging(diff: Sequence[float], r: Optional[int] = None) -> DivergingMerging:
    """Eq. 10 on a diff curve (L,), plus the diverging and merging layers (see DivergingMerging).

    ``r``: how many final layers must all rise; default ``default_r(L)``.
    Raises ValueError for fewer than 2 layers, a non-finite curve, or r outside 1..L-1.
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"diff must be a 1-D curve over at least 2 layers, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("diff contains NaN or infinite values; recompute it from finite gates")
    num_layers = d.size
    if r is None:
        r = default_r(num_layers)
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"r must be an int, got {type(r).__name__}")
    if not 1 <= r <= num_layers - 1:
        raise ValueError(f"r = {r} does not fit a curve of {num_layers} layers; use 1 <= r <= {num_layers - 1}")
    rises = d[1:] > d[:-1]  # rises[i - 1] is diff(i) > diff(i - 1)
    n_l = int(rises[-r:].sum())
    last_is_max = bool(d[-1] >= d.max())
    merging = int(np.argmax(d)) if d.max() > 0 else None
    diverging = None
    if merging is not None and merging > 0 and d[merging] > d[merging - 1]:
        start = merging
        while start > 0 and d[start] > d[start - 1]:
            start -= 1
        diverging = start
    return DivergingMerging(detected=n_l == r and last_is_max, n_l=n_l, r=int(r), diverging_layer=diverging, merging_layer=merging)


def representative_target(analysis: Analysis, adversarial: int, candidates: Sequence[int]) -> int:
    """The candidate whose datapath is most similar (1 / Eq. 5 distance) to the adversarial one."""
    adversarial = _check_example(analysis, adversarial, "adversarial")
    candidates = [_check_example(analysis, c, "candidate") for c in candidates]
    if not candidates:
        raise ValueError("no candidate targets given; pass the indices of the target examples")
    distances = [datapath_distance(analysis, adversarial, c) for c in candidates]
    return candidates[int(np.argmin(distances))]
