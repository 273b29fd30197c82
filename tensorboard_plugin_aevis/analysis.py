"""The result object of one datapath analysis, and its pickle-free serialisation.

An :class:`Analysis` holds, for N examples (source / adversarial / target images) and
L gated layers, the fitted gates of every feature map, the binary datapaths derived
from them, the labels predicted by the ungated, gated and binarised networks, and the
activations the dashboard shows. It is what the engine returns, what the summary
writer logs and what the run reader gives back.

Shapes (N examples, L layers, layer l has C_l channels and an H_l x W_l feature map):

- ``images``: (N, 3, H, W) float32 in [0, 1] (1 channel for grey-scale models)
- ``gates[l]``: (N, C_l) float32, continuous gates (in [0, 1] for the constrained
  method; in [0, clamp] for DGR)
- ``max_activations[l]``: (N, C_l) float32, max over space of each ungated feature map
- ``activation_maps[l]``: (N, C_l, H_l, W_l) float32, ungated feature maps (optional)
- ``stability[l]``: (N, C_l) float32 in [0, 1], the fraction of the extraction's K starts
  whose binary datapath holds each feature map (optional: only from ``starts`` > 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

FORMAT_VERSION = 1
ROLES = ("source", "adversarial", "target")
METHODS = ("constrained", "dgr")


@dataclasses.dataclass
class ExampleRecord:
    """One analysed image and what the network predicts for it."""

    name: str
    role: str  # one of ROLES
    label: int  # predicted by the ungated network
    class_name: str
    confidence: float  # softmax probability of ``label``, ungated
    gated_label: int  # predicted with the continuous gates applied
    binary_label: int  # predicted with the binarised datapath applied
    true_label: Optional[int] = None
    adversarial_score: Optional[float] = None  # percentile in [0, 100]
    loss_history: List[float] = dataclasses.field(default_factory=list)
    # this example's binarisation threshold when it differs from Analysis.threshold (the
    # extraction's label repair lowered it); None: Analysis.threshold applies
    threshold: Optional[float] = None

    @property
    def label_preserved(self) -> bool:
        """True when both the continuous and the binary datapath keep the label."""
        return self.gated_label == self.label and self.binary_label == self.label


@dataclasses.dataclass
class LayerRecord:
    """One gated layer: a module path of the model and its feature-map shape."""

    name: str
    channels: int
    height: int
    width: int


@dataclasses.dataclass
class Analysis:
    """Datapaths of N examples at L gated layers (see the module docstring for shapes)."""

    method: str
    params: Dict[str, Any]
    examples: List[ExampleRecord]
    layers: List[LayerRecord]
    images: np.ndarray
    gates: List[np.ndarray]
    threshold: float
    max_activations: Optional[List[np.ndarray]] = None
    activation_maps: Optional[List[np.ndarray]] = None
    stability: Optional[List[np.ndarray]] = None

    # ----------------------------------------------------------------- queries
    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def layer_index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        known = ", ".join(l.name for l in self.layers[:8])
        raise KeyError(f"unknown layer {name!r}; this analysis gates: {known}{', ...' if len(self.layers) > 8 else ''}")

    def indices(self, role: str) -> List[int]:
        """Indices of the examples with ``role``."""
        return [i for i, e in enumerate(self.examples) if e.role == role]

    def thresholds(self) -> np.ndarray:
        """(N,) binarisation threshold of each example: its own ``threshold`` if set, else the analysis's."""
        return np.array([self.threshold if e.threshold is None else e.threshold for e in self.examples], dtype=np.float64)

    def binary(self) -> List[np.ndarray]:
        """Binary datapaths: per layer a (N, C_l) bool array, ``gates > thresholds()[:, None]``."""
        t = self.thresholds()[:, None]
        return [g > t for g in self.gates]

    def flat_gates(self) -> np.ndarray:
        """(N, sum_l C_l) continuous gates of all layers side by side."""
        return np.concatenate(self.gates, axis=1)

    def kept_fraction(self) -> np.ndarray:
        """(N,) fraction of feature maps in each example's binary datapath."""
        total = sum(l.channels for l in self.layers)
        kept = sum(b.sum(axis=1) for b in self.binary())
        return np.asarray(kept, dtype=np.float64) / max(total, 1)

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the problem when the analysis is not well formed."""
        n = len(self.examples)
        if n == 0:
            raise ValueError("analysis has no examples: pass at least one image to the extraction")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        for e in self.examples:
            if e.role not in ROLES:
                raise ValueError(f"example {e.name!r} has role {e.role!r}; expected one of {ROLES}")
        if not self.layers:
            raise ValueError("analysis has no gated layers")
        if len(self.gates) != len(self.layers):
            raise ValueError(f"{len(self.gates)} gate arrays for {len(self.layers)} layers: they must match one to one")
        if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images have shape {tuple(self.images.shape)}; expected ({n}, 3, H, W) or ({n}, 1, H, W)")
        if not np.isfinite(self.images).all():
            raise ValueError("images contain NaN or infinite values")
        self._check_per_layer("gates", self.gates, n)
        if self.max_activations is not None:
            self._check_per_layer("max_activations", self.max_activations, n)
        if self.stability is not None:
            self._check_per_layer("stability", self.stability, n)
            for layer, a in zip(self.layers, self.stability):
                if a.size and (a.min() < 0 or a.max() > 1):
                    raise ValueError(f"stability of layer {layer.name!r} lies outside [0, 1]; it is a fraction of starts")
        if self.activation_maps is not None:
            if len(self.activation_maps) != len(self.layers):
                raise ValueError("activation_maps must have one array per layer")
            for layer, a in zip(self.layers, self.activation_maps):
                want = (n, layer.channels, layer.height, layer.width)
                if tuple(a.shape) != want:
                    raise ValueError(f"activation_maps of layer {layer.name!r} have shape {tuple(a.shape)}; expected {want}")
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        for e in self.examples:
            if e.threshold is not None and not (isinstance(e.threshold, (int, float)) and math.isfinite(e.threshold)):
                raise ValueError(f"example {e.name!r} has threshold {e.threshold!r}; expected a finite number or None")

    def _check_per_layer(self, what: str, arrays: Sequence[np.ndarray], n: int) -> None:
        if len(arrays) != len(self.layers):
            raise ValueError(f"{what} must have one array per layer ({len(arrays)} for {len(self.layers)} layers)")
        for layer, a in zip(self.layers, arrays):
            if tuple(a.shape) != (n, layer.channels):
                raise ValueError(f"{what} of layer {layer.name!r} have shape {tuple(a.shape)}; expected ({n}, {layer.channels})")
            if not np.isfinite(a).all():
                raise ValueError(f"{what} of layer {layer.name!r} contain NaN or infinite values; re-run the extraction (check the input images and the learning rate)")

    # ---------------------------------------------------------- serialisation
    def to_json(self) -> Dict[str, Any]:
        """Everything but the arrays, as plain JSON-able values."""
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": self.params,
            "threshold": float(self.threshold),
            "examples": [dataclasses.asdict(e) for e in self.examples],
            "layers": [dataclasses.asdict(l) for l in self.layers],
        }

    def to_arrays(self) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """(meta, arrays): JSON metadata and named numeric arrays; no pickle anywhere."""
        arrays: Dict[str, np.ndarray] = {"images": np.asarray(self.images, dtype=np.float32)}
        for i, g in enumerate(self.gates):
            arrays[f"gates/{i}"] = np.asarray(g, dtype=np.float32)
        if self.max_activations is not None:
            for i, a in enumerate(self.max_activations):
                arrays[f"max_activations/{i}"] = np.asarray(a, dtype=np.float32)
        if self.activation_maps is not None:
            for i, a in enumerate(self.activation_maps):
                arrays[f"activation_maps/{i}"] = np.asarray(a, dtype=np.float32)
        if self.stability is not None:
            for i, a in enumerate(self.stability):
                arrays[f"stability/{i}"] = np.asarray(a, dtype=np.float32)
        return self.to_json(), arrays

    @classmethod
    def from_arrays(cls, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> "Analysis":
        """Inverse of :meth:`to_arrays`; validates the result."""
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"analysis format version {version!r} is not supported (this AEVis reads version {FORMAT_VERSION}); upgrade tensorboard-plugin-aevis")
        layers = [LayerRecord(**l) for l in meta["layers"]]
        n_layers = len(layers)

        def per_layer(prefix: str) -> Optional[List[np.ndarray]]:
            if f"{prefix}/0" not in arrays:
                return None
            return [np.asarray(arrays[f"{prefix}/{i}"]) for i in range(n_layers)]

        analysis = cls(
            method=meta["method"],
            params=meta["params"],
            examples=[ExampleRecord(**e) for e in meta["examples"]],
            layers=layers,
            images=np.asarray(arrays["images"]),
            gates=per_layer("gates") or [],
            threshold=float(meta["threshold"]),
            max_activations=per_layer("max_activations"),
            activation_maps=per_layer("activation_maps"),
            stability=per_layer("stability"),
        )
        analysis.validate()
        return analysis

    def save_npz(self, path: str) -> None:
        """Write to a compressed ``.npz`` (meta stored as a JSON string array)."""
        meta, arrays = self.to_arrays()
        np.savez_compressed(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load_npz(cls, path: str) -> "Analysis":
        """Read a file written by :meth:`save_npz`, with ``allow_pickle=False``."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
        return cls.from_arrays(meta, arrays)
