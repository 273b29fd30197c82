"""What each part of an analysis is serialised to: tags, plugin metadata, tensor values.

Tags (``<step>`` is the step the part belongs to; every tag holds one step, so
TensorBoard's per-tag sampling can never drop an analysis)::

    aevis/<name>/<method>/<step>/manifest          tensor, JSON string (logged last)
    aevis/<name>/<method>/<step>/arrays            blob sequence: [npz, PNG of example 0, 1, ...]
    aevis/<name>/<method>/<step>/learned_features  blob sequence: [npz] (before 2026-11: [JSON])
    aevis/<name>/<step>/graph                      blob sequence: [model DAG JSON]
    aevis/<name>/<step>/reference_images           blob sequence: [PNG, PNG, ...]

The reader identifies parts by their plugin metadata, not by parsing tags.

The ``arrays`` npz holds, for gated layer ``l``:

- ``gates/<l>``: (N, C_l) float32, exact;
- ``max_activations/<l>``: (N, C_l) float32, exact (when known);
- ``stability/<l>``: (N, C_l) float32 in [0, 1], exact (when the extraction ran K > 1 starts):
  the fraction of the starts whose binary datapath holds each feature map;
- ``maps/<l>/channels``: (K_l,) int32, the feature maps in any example's binary datapath;
- ``maps/<l>/uint8``: (N, K_l, h_l, w_l) uint8 activation maps of those channels, pooled to
  at most ``max_map_size`` per side; ``maps/<l>/min``, ``maps/<l>/max``: (N, K_l) float32.

The ``learned_features`` npz holds ``layer_names`` (L,) str and, for the ``i``-th layer
there (K_i feature maps with at most k hits each, best first):

- ``channels/<i>``: (K_i,) int32, ascending;
- ``images/<i>``: (K_i, k) int32 reference-image index, -1 pads channels with fewer hits;
- ``activations/<i>``: (K_i, k) float32 (the feature map's maximum on that image);
- ``boxes/<i>``: (K_i, k, 4) int32 receptive field ``(y0, x0, y1, x1)``, exclusive ends.

A reader decompresses only the layer it is asked about. Runs logged before this format
hold one JSON blob ``{layer: {channel: [[image, activation, box], ...]}}`` instead
(a JSON blob starts with ``{``, an npz with the zip magic ``PK``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

from tensorboard_plugin_aevis import metadata
from tensorboard_plugin_aevis.analysis import Analysis

from summary_writers import codec
from summary_writers.sink import SummaryRecord

DEFAULT_MAX_MAP_SIZE = 28


def analysis_tag(name: str, method: str, step: int, kind: str) -> str:
    return f"aevis/{name}/{method}/{int(step)}/{kind}"


def name_tag(name: str, step: int, kind: str) -> str:
    return f"aevis/{name}/{int(step)}/{kind}"


def _string_tensor(values: Sequence[bytes], scalar: bool = False) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[] if scalar else [tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(values))


def to_jsonable(value: Any) -> Any:
    """numpy scalars / arrays, tuples and dicts with int keys -> plain JSON values (NaN refused)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        if not math.isfinite(float(value)):
            raise ValueError("a logged value is NaN or infinite; check the analysis parameters")
        return float(value)
    if value is None or isinstance(value, (str, int)):
        return value
    raise TypeError(f"cannot log a value of type {type(value).__name__} as JSON")


def datapath_summary(analysis: Analysis) -> Dict[str, Any]:
    """Per-pair layer distances, kept fractions, and the diff curve + diverging / merging
    points of (first adversarial, first source, representative target) when all roles exist."""
    from tensorboard_plugin_aevis import datapath_metrics

    n = analysis.num_examples
    summary: Dict[str, Any] = {
        "kept_fraction": analysis.kept_fraction().tolist(),
        "distances": {
            f"{i},{j}": np.asarray(datapath_metrics.layer_distances(analysis, i, j), dtype=np.float64).tolist()
            for i in range(n)
            for j in range(i + 1, n)
        },
        "diff_curve": None,
        "diverging_merging": None,
    }
    adversarial, sources, targets = (analysis.indices(r) for r in ("adversarial", "source", "target"))
    if adversarial and sources and targets:
        adv, src = adversarial[0], sources[0]
        tar = targets[0] if len(targets) == 1 else int(datapath_metrics.representative_target(analysis, adv, targets))
        diff = np.asarray(datapath_metrics.diff_curve(analysis, adv, src, tar), dtype=np.float64)
        r = analysis.params.get("r")
        r = int(r) if r is not None else datapath_metrics.default_r(len(analysis.layers))
        detected = datapath_metrics.detect_diverging_merging(diff, r).to_json()
        summary["diff_curve"] = diff.tolist()
        summary["diverging_merging"] = {"adversarial": adv, "source": src, "target": tar, "diff": diff.tolist(), **detected}
    return to_jsonable(summary)


def datapath_channels(analysis: Analysis) -> List[np.ndarray]:
    """Per layer, the (K_l,) int32 channels in any example's binary datapath."""
    return [np.flatnonzero(b.any(axis=0)).astype(np.int32) for b in analysis.binary()]


def arrays_record(
    name: str,
    analysis: Analysis,
    step: int,
    max_activations: Optional[List[np.ndarray]],
    datapath_maps: Optional[List[np.ndarray]],
    max_map_size: int = DEFAULT_MAX_MAP_SIZE,
) -> SummaryRecord:
    """The ``arrays`` blob sequence. ``datapath_maps[l]``: (N, K_l, H_l, W_l) float maps of
    :func:`datapath_channels` ``[l]`` (or None: no maps logged)."""
    arrays: Dict[str, np.ndarray] = {}
    channels = datapath_channels(analysis)
    for l, gates in enumerate(analysis.gates):
        arrays[f"gates/{l}"] = np.asarray(gates, dtype=np.float32)
        if max_activations is not None:
            arrays[f"max_activations/{l}"] = np.asarray(max_activations[l], dtype=np.float32)
        if analysis.stability is not None:
            arrays[f"stability/{l}"] = np.asarray(analysis.stability[l], dtype=np.float32)
        if datapath_maps is not None:
            quantised, lo, hi = codec.quantise_maps(datapath_maps[l], max_map_size)
            arrays[f"maps/{l}/channels"] = channels[l]
            arrays[f"maps/{l}/uint8"] = quantised
            arrays[f"maps/{l}/min"] = lo
            arrays[f"maps/{l}/max"] = hi
    blobs = [codec.encode_npz(arrays)] + [codec.encode_png(image) for image in analysis.images]
    return SummaryRecord(
        analysis_tag(name, analysis.method, step, metadata.KIND_ARRAYS),
        metadata.create_summary_metadata(metadata.KIND_ARRAYS, name, analysis.method, step),
        _string_tensor(blobs),
    )


def manifest_record(
    name: str, analysis: Analysis, step: int, extras: Dict[str, Any], writer_id: str, writer_sequence: int
) -> SummaryRecord:
    """The ``manifest`` tensor: ``{"analysis": Analysis.to_json(), **datapath_summary, **extras}``."""
    manifest = {"analysis": analysis.to_json(), **datapath_summary(analysis), **to_jsonable(extras)}
    return SummaryRecord(
        analysis_tag(name, analysis.method, step, metadata.KIND_MANIFEST),
        metadata.create_summary_metadata(
            metadata.KIND_MANIFEST, name, analysis.method, step, writer_id=writer_id, writer_sequence=writer_sequence
        ),
        _string_tensor([json.dumps(manifest, allow_nan=False).encode("utf-8")], scalar=True),
    )


def graph_record(name: str, graph: Dict[str, Any], step: int) -> SummaryRecord:
    """The ``graph`` blob sequence: [the model DAG as JSON]."""
    return SummaryRecord(
        name_tag(name, step, metadata.KIND_GRAPH),
        metadata.create_summary_metadata(metadata.KIND_GRAPH, name, "", step),
        _string_tensor([json.dumps(to_jsonable(graph), allow_nan=False).encode("utf-8")]),
    )


def reference_images_record(name: str, images: np.ndarray, step: int) -> SummaryRecord:
    """The ``reference_images`` blob sequence: one PNG per (C, H, W) image in [0, 1]."""
    return SummaryRecord(
        name_tag(name, step, metadata.KIND_REFERENCE_IMAGES),
        metadata.create_summary_metadata(metadata.KIND_REFERENCE_IMAGES, name, "", step),
        _string_tensor([codec.encode_png(image) for image in images]),
    )


def learned_features_arrays(boxes: Mapping[str, Mapping[int, Sequence[Any]]]) -> Dict[str, np.ndarray]:
    """``{layer: {channel: [(image, activation, (y0, x0, y1, x1)), ...]}}`` (the output of
    ``learned_features.learned_features``) -> the per-layer arrays of the module docstring.

    Raises ValueError naming the layer and channel of a malformed or non-finite hit.
    """
    if not isinstance(boxes, Mapping):
        raise TypeError(f"learned features must be a dict {{layer: {{channel: hits}}}}, got {type(boxes).__name__}")
    names = [str(layer) for layer in boxes]
    arrays: Dict[str, np.ndarray] = {"layer_names": np.array(names, dtype=np.str_)}
    for i, (layer, per_channel) in enumerate(boxes.items()):
        if not isinstance(per_channel, Mapping):
            raise TypeError(f"learned features of layer {layer!r} must be a dict {{channel: hits}}, got {type(per_channel).__name__}")
        channels = sorted(int(c) for c in per_channel)
        if len(set(channels)) != len(channels) or any(c < 0 for c in channels):
            raise ValueError(f"learned features of layer {layer!r}: channels must be distinct non-negative integers")
        hits = {int(c): list(v) for c, v in per_channel.items()}
        k = max((len(v) for v in hits.values()), default=0)
        images = np.full((len(channels), k), -1, np.int32)
        activations = np.zeros((len(channels), k), np.float32)
        box_array = np.zeros((len(channels), k, 4), np.int32)
        for row, channel in enumerate(channels):
            for rank, hit in enumerate(hits[channel]):
                try:
                    image, activation, box = hit
                    images[row, rank], activations[row, rank] = int(image), float(activation)
                    box_array[row, rank] = [int(v) for v in box]
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"learned feature {rank} of channel {channel} at layer {layer!r} is not "
                                     f"(image index, activation, (y0, x0, y1, x1)): {exc}") from None
                if images[row, rank] < 0 or not math.isfinite(float(activation)):
                    raise ValueError(f"learned feature {rank} of channel {channel} at layer {layer!r} has a negative "
                                     "image index or a NaN / infinite activation")
        arrays[f"channels/{i}"] = np.asarray(channels, np.int32)
        arrays[f"images/{i}"] = images
        arrays[f"activations/{i}"] = activations
        arrays[f"boxes/{i}"] = box_array
    return arrays


def learned_features_record(name: str, method: str, step: int, boxes: Mapping[str, Mapping[int, Sequence[Any]]]) -> SummaryRecord:
    """The ``learned_features`` blob sequence: [npz of :func:`learned_features_arrays`]."""
    return SummaryRecord(
        analysis_tag(name, method, step, metadata.KIND_LEARNED_FEATURES),
        metadata.create_summary_metadata(metadata.KIND_LEARNED_FEATURES, name, method, step),
        _string_tensor([codec.encode_npz(learned_features_arrays(boxes))]),
    )
