"""Adversarial score for picking examples: kernel density of penultimate features (paper ref. [13]).

An image whose penultimate features lie far from the clean reference images of the
class the model predicts for it is suspicious. For each class c with enough
references, a Gaussian KDE over the references' features f_j:

    log_density_c(f) = log mean_j exp(-||f - f_j||^2 / (2 h_c^2))

with bandwidth h_c = the median pairwise distance between the references of c. The
kernel argument is scale-free (distances in units of h_c), so log densities of
different classes are comparable. Calibration: the leave-one-out log density of every
clean reference image against its own class. The score of an image is the percentage
of those clean values that are above its log density (ties count half): in [0, 100],
high = lower density than most clean images = likely adversarial.

Fallback, when the predicted class has fewer than ``min_references`` reference images:
``100 * (1 - max softmax probability)``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .models import eval_mode, model_device

KDE = "kde"
CONFIDENCE = "confidence"


class AdversarialScorer:
    """Scores images by the density of their penultimate features among clean references.

    ``reference_images``: (N, C, H, W) in [0, 1]; ``reference_labels``: (N,) class
    indices (default: the model's predictions); ``feature_layer``: module path whose
    INPUT is the feature vector (default: the last ``nn.Linear`` the forward pass calls).
    """

    def __init__(
        self,
        model: nn.Module,
        reference_images: torch.Tensor,
        reference_labels: Optional[Sequence[int]] = None,
        feature_layer: Optional[str] = None,
        min_references: int = 3,
        batch_size: int = 32,
    ):
        if not isinstance(reference_images, torch.Tensor) or reference_images.dim() != 4 or len(reference_images) == 0:
            raise ValueError("reference_images must be a non-empty (N, C, H, W) tensor of clean images in [0, 1]")
        if min_references < 3:
            raise ValueError(f"min_references must be at least 3 (a bandwidth and a leave-one-out density need it), got {min_references}")
        self.model = model
        self.batch_size = batch_size
        self.min_references = min_references
        self.feature_layer = feature_layer or _last_linear(model, reference_images[:1])
        features, probabilities = self._features(reference_images)
        if reference_labels is None:
            labels = probabilities.argmax(axis=1)
        else:
            labels = np.asarray(reference_labels, dtype=np.int64).reshape(-1)
            if len(labels) != len(features):
                raise ValueError(f"{len(labels)} reference_labels for {len(features)} reference images: pass one label per image")
        self._features_by_class = {}
        self._bandwidth = {}
        calibration: List[float] = []
        for c in np.unique(labels):
            members = features[labels == c]
            if len(members) < min_references:
                continue
            h = float(np.median(_pairwise_distances(members, members)[np.triu_indices(len(members), k=1)]))
            if h <= 0:
                continue  # identical references: no density to speak of
            self._features_by_class[int(c)] = members
            self._bandwidth[int(c)] = h
            for i in range(len(members)):
                calibration.append(_log_kde(members[i : i + 1], np.delete(members, i, axis=0), h)[0])
        self.calibration = np.sort(np.asarray(calibration, dtype=np.float64))

    @property
    def kde_classes(self) -> List[int]:
        """Classes scored by density (enough references); the rest use the confidence fallback."""
        return sorted(self._features_by_class)

    def score(self, images: torch.Tensor) -> np.ndarray:
        """(B,) adversarial percentile in [0, 100] of ``images`` (B, C, H, W) in [0, 1]."""
        return self.score_with_method(images)[0]

    def score_with_method(self, images: torch.Tensor) -> Tuple[np.ndarray, List[str]]:
        """((B,) scores in [0, 100], per image ``"kde"`` or ``"confidence"``: how it was scored)."""
        features, probabilities = self._features(images)
        predicted = probabilities.argmax(axis=1)
        scores = np.empty(len(features))
        methods = []
        for b, c in enumerate(predicted):
            c = int(c)
            if c in self._features_by_class and len(self.calibration):
                log_density = _log_kde(features[b : b + 1], self._features_by_class[c], self._bandwidth[c])[0]
                above = len(self.calibration) - np.searchsorted(self.calibration, log_density, side="right")
                ties = np.searchsorted(self.calibration, log_density, side="right") - np.searchsorted(self.calibration, log_density, side="left")
                scores[b] = 100.0 * (above + 0.5 * ties) / len(self.calibration)
                methods.append(KDE)
            else:
                scores[b] = 100.0 * (1.0 - float(probabilities[b].max()))
                methods.append(CONFIDENCE)
        return scores, methods

    def _features(self, images: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float64, softmax probabilities (N, K)) in batches, hooks removed afterwards."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError("images must be a (B, C, H, W) tensor in [0, 1]; add a batch dimension with x.unsqueeze(0)")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values; pass images in [0, 1]")
        module = _module(self.model, self.feature_layer)
        captured: List[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().flatten(1)))
        features, probabilities = [], []
        device = model_device(self.model)
        try:
            with eval_mode(self.model), torch.no_grad():
                for start in range(0, len(images), self.batch_size):
                    captured.clear()
                    logits = self.model(images[start : start + self.batch_size].to(device))
                    features.append(captured[-1].double().cpu().numpy())
                    probabilities.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        finally:
            handle.remove()
        return np.concatenate(features), np.concatenate(probabilities)


def _last_linear(model: nn.Module, example: torch.Tensor) -> str:
    """Module path of the last ``nn.Linear`` called in a forward pass of ``example``."""
    names = {m: n for n, m in model.named_modules()}
    called: List[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, _a: called.append(names[mod])) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    if not called:
        raise ValueError("the model calls no nn.Linear layer, so it has no penultimate features; pass feature_layer='<module path>'")
    return called[-1]


def _module(model: nn.Module, path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path not in modules:
        raise ValueError(f"feature_layer {path!r} is not a module of the model; use a path from model.named_modules()")
    return modules[path]


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _log_kde(points: np.ndarray, references: np.ndarray, bandwidth: float) -> np.ndarray:
    """(P,) log mean_j exp(-||p - r_j||^2 / (2 h^2)), computed stably."""
    exponent = -_pairwise_distances(points, references) ** 2 / (2.0 * bandwidth**2)
    top = exponent.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(exponent - top).mean(axis=1, keepdims=True)))[:, 0]
