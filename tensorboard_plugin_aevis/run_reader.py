"""Read logged analyses back from a run through TensorBoard's DataProvider API.

Everything goes through ``list_tensors / read_tensors / list_blob_sequences /
read_blob_sequences / read_blob`` (no event-file parsing), so it works with the Rust
data server and with ``--load_fast=false``. Parts are recognised by their plugin
metadata (``metadata.parse_plugin_metadata``), not by parsing tags.

An analysis is listed once its manifest and its arrays exist (the writer logs the
manifest last). Problems that do not stop reading become warnings the dashboard
shows: manifests one writer numbered but that are missing (dropped by sampling,
purged by TensorBoard because steps went backwards, or lost in a damaged event
file), plugin data from a newer AEVis, an analysis logged twice at one step, a
model artifact that is missing or from another step. Damaged records inside an
event file are skipped by TensorBoard's loader; the rest of the run stays readable.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tensorboard.data import provider

from tensorboard_plugin_aevis import metadata, model_artifact
from tensorboard_plugin_aevis.analysis import Analysis
from summary_writers.codec import NpzArchive, decode_png, dequantise_map

SAMPLING_FIX = "restart TensorBoard with --samples_per_plugin=aevis=0"
CACHE_SIZE = 16


class AnalysisNotFoundError(LookupError):
    """No analysis with this run / name / method / step."""


class AnalysisReadError(ValueError):
    """The analysis exists but its logged data cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class AnalysisKey:
    """One analysis name + method in a run and the steps it was logged at."""

    name: str
    method: str
    steps: Tuple[int, ...]


@dataclasses.dataclass
class RunIndex:
    """``analyses[run]``: the run's AnalysisKeys; ``warnings``: messages for the dashboard."""

    analyses: Dict[str, List[AnalysisKey]]
    warnings: List[str]


Box = Tuple[int, int, int, int]
Hit = Tuple[int, float, Box]


def _array(archive: NpzArchive, key: str, what: str) -> np.ndarray:
    """``archive[key]``, or AnalysisReadError naming ``what`` is damaged and the fix."""
    try:
        return archive[key]
    except ValueError as exc:
        raise AnalysisReadError(f"the {what} of this analysis are damaged ({exc}); re-log the analysis") from exc


class ActivationMaps:
    """Logged activation maps of the feature maps in some datapath, decompressed one
    layer at a time on first use: per layer ``l`` the channels (K_l,), uint8 maps
    (N, K_l, h, w) and per-map min / max (N, K_l).

    Methods raise AnalysisReadError when the layer's arrays are damaged.
    """

    def __init__(self, archive: NpzArchive, num_layers: int, num_examples: int):
        self._archive = archive
        self.num_layers = num_layers
        self.num_examples = num_examples

    def channels(self, layer: int) -> np.ndarray:
        """(K_l,) int32: the channels of ``layer`` whose maps were logged."""
        return _array(self._archive, f"maps/{layer}/channels", "activation maps")

    def _position(self, layer: int, channel: int, example: int) -> Optional[int]:
        if not (0 <= layer < self.num_layers and 0 <= example < self.num_examples):
            return None
        hits = np.flatnonzero(self.channels(layer) == channel)
        return int(hits[0]) if hits.size else None

    def has_map(self, layer: int, channel: int, example: int) -> bool:
        """Whether that map was logged (reads only the layer's channel list)."""
        return self._position(layer, channel, example) is not None

    def quantised_map(self, layer: int, channel: int, example: int) -> Optional[Tuple[np.ndarray, float, float]]:
        """(uint8 (h, w), min, max) of one map, or None when it was not logged."""
        k = self._position(layer, channel, example)
        if k is None:
            return None
        maps = _array(self._archive, f"maps/{layer}/uint8", "activation maps")
        lo = _array(self._archive, f"maps/{layer}/min", "activation maps")
        hi = _array(self._archive, f"maps/{layer}/max", "activation maps")
        if maps.ndim != 4 or maps.shape[:2] != lo.shape or lo.shape != hi.shape or k >= maps.shape[1] or example >= maps.shape[0]:
            raise AnalysisReadError(f"the activation maps of layer {layer} have inconsistent shapes; re-log the analysis")
        return maps[example, k], float(lo[example, k]), float(hi[example, k])

    def map(self, layer: int, channel: int, example: int) -> Optional[np.ndarray]:
        """Float32 (h, w) map (dequantised), or None when it was not logged."""
        found = self.quantised_map(layer, channel, example)
        return None if found is None else dequantise_map(*found)


class LearnedFeatures:
    """The logged learned features of an analysis, decoded one layer at a time on first use.

    Reads the per-layer npz of ``summary_writers.payloads`` and, for runs logged before
    it, the older single JSON blob (parsed whole on first use, each channel converted
    when asked for). Methods raise AnalysisReadError when the data is damaged.
    """

    def __init__(self, blob: bytes):
        self._blob = blob
        self._lock = threading.Lock()
        self._archive: Optional[NpzArchive] = None
        self._layer_index: Optional[Dict[str, int]] = None
        self._legacy: Optional[Dict[str, Any]] = None

    @property
    def is_legacy_json(self) -> bool:
        return not self._blob.startswith(b"PK")

    def _open(self) -> Tuple[Optional[NpzArchive], Dict[str, int]]:
        """(archive, {layer name: index}) of the npz format; (None, {}) for legacy JSON."""
        with self._lock:
            if self._layer_index is None:
                if self.is_legacy_json:
                    self._legacy = _legacy_json(self._blob)
                    self._layer_index = {}
                else:
                    try:
                        self._archive = NpzArchive(self._blob)
                    except ValueError as exc:
                        raise AnalysisReadError(f"the learned features of this analysis are damaged ({exc}); re-log the analysis") from exc
                    names = _array(self._archive, "layer_names", "learned features")
                    self._layer_index = {str(n): i for i, n in enumerate(names.tolist())}
            return self._archive, self._layer_index

    def layers(self) -> List[str]:
        """The layer names with logged learned features."""
        archive, index = self._open()
        return list(index) if archive is not None else list(self._legacy)

    def hits(self, layer: str, channel: int) -> List[Hit]:
        """``[(reference image index, activation, (y0, x0, y1, x1)), ...]`` of one feature
        map, best first; empty when none were logged for it."""
        archive, index = self._open()
        if archive is None:  # legacy JSON: convert only this channel's entry
            return _legacy_hits(self._legacy.get(layer, {}).get(str(int(channel)), []))
        i = index.get(layer)
        if i is None:
            return []
        channels = _array(archive, f"channels/{i}", "learned features")
        row = np.flatnonzero(channels == channel)
        if not row.size:
            return []
        return self._layer_hits(archive, i, [int(row[0])])[0]

    def to_dict(self) -> Dict[str, Dict[int, List[Hit]]]:
        """Every layer: ``{layer: {channel: [(image, activation, (y0, x0, y1, x1)), ...]}}``."""
        archive, index = self._open()
        if archive is None:
            return {layer: {int(c): _legacy_hits(hits) for c, hits in per_channel.items()}
                    for layer, per_channel in self._legacy.items()}
        result = {}
        for layer, i in index.items():
            channels = _array(archive, f"channels/{i}", "learned features")
            rows = self._layer_hits(archive, i, range(len(channels)))
            result[layer] = {int(c): hits for c, hits in zip(channels.tolist(), rows)}
        return result

    @staticmethod
    def _layer_hits(archive: NpzArchive, i: int, rows) -> List[List[Hit]]:
        images = _array(archive, f"images/{i}", "learned features")
        activations = _array(archive, f"activations/{i}", "learned features")
        boxes = _array(archive, f"boxes/{i}", "learned features")
        if images.shape != activations.shape or boxes.shape != images.shape + (4,):
            raise AnalysisReadError("the learned features of this analysis have inconsistent shapes; re-log the analysis")
        return [
            [(int(img), float(act), tuple(int(v) for v in box))
             for img, act, box in zip(images[r].tolist(), activations[r].tolist(), boxes[r].tolist()) if img >= 0]
            for r in rows
        ]


def _legacy_json(blob: bytes) -> Dict[str, Any]:
    """The JSON blob of runs logged before the per-layer npz: ``{layer: {channel: [[image,
    activation, [y0, x0, y1, x1]], ...]}}`` (parsed, not yet converted)."""
    try:
        value = json.loads(blob.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnalysisReadError(f"the learned features of this analysis are damaged ({exc}); re-log the analysis") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise AnalysisReadError("the learned features of this analysis are not {layer: {channel: hits}}; re-log the analysis")
    return value


def _legacy_hits(hits: Any) -> List[Hit]:
    """One channel's JSON hits -> [(image, activation, (y0, x0, y1, x1)), ...]."""
    try:
        return [(int(i), float(a), tuple(int(v) for v in box)) for i, a, box in hits]
    except (ValueError, TypeError) as exc:
        raise AnalysisReadError(f"the learned features of this analysis are damaged ({exc}); re-log the analysis") from exc


@dataclasses.dataclass
class LoadedAnalysis:
    """One analysis read back from a run.

    ``analysis``: the Analysis (images decoded from PNG, within 1/510; gates and max
    activations exact; ``activation_maps`` None: see ``activation_maps``, which reads
    one layer at a time). ``manifest``: the logged JSON (``distances``, ``diff_curve``,
    ``diverging_merging``, ``kept_fraction``, ``has_model``, ``model_artifact`` ...).
    ``learned_feature_store``: the learned features (crops of ``reference_image(index)``),
    read one layer at a time; see ``feature_hits`` and ``learned_features``.
    """

    run: str
    name: str
    method: str
    step: int
    analysis: Analysis
    manifest: Dict[str, Any]
    image_pngs: List[bytes]
    activation_maps: Optional[ActivationMaps]
    graph: Optional[Dict[str, Any]]
    learned_feature_store: Optional[LearnedFeatures]
    reference_image_pngs: List[bytes]
    model_artifact: Optional[str]
    warnings: List[str]

    @property
    def distances(self) -> Dict[str, List[float]]:
        return self.manifest.get("distances", {})

    @property
    def diff_curve(self) -> Optional[List[float]]:
        return self.manifest.get("diff_curve")

    @property
    def diverging_merging(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("diverging_merging")

    @property
    def has_learned_features(self) -> bool:
        return self.learned_feature_store is not None

    def _damaged(self, exc: AnalysisReadError) -> None:
        message = f"analysis {self.name!r}: {exc}"
        if message not in self.warnings:
            self.warnings.append(message)

    def feature_hits(self, layer: str, channel: int) -> List[Hit]:
        """The learned features of one feature map, ``[(reference image index, activation,
        (y0, x0, y1, x1)), ...]`` best first (empty when none, or damaged: a warning)."""
        if self.learned_feature_store is None:
            return []
        try:
            return self.learned_feature_store.hits(layer, channel)
        except AnalysisReadError as exc:
            self._damaged(exc)
            return []

    @functools.cached_property
    def learned_features(self) -> Optional[Dict[str, Dict[int, List[Hit]]]]:
        """Every learned feature, ``{layer: {channel: [(reference image index, activation,
        (y0, x0, y1, x1)), ...]}}``, or None (none logged, or damaged: a warning).
        Decodes every layer: routes use ``feature_hits``."""
        if self.learned_feature_store is None:
            return None
        try:
            return self.learned_feature_store.to_dict()
        except AnalysisReadError as exc:
            self._damaged(exc)
            return None

    def reference_image(self, index: int) -> np.ndarray:
        """Reference image ``index`` as (C, H, W) float32 in [0, 1]."""
        return decode_png(self.reference_image_pngs[index])


# ----------------------------------------------------------------- listing
@dataclasses.dataclass
class _Part:
    tag: str
    meta: Dict[str, Any]


def _parts(data_provider, ctx, experiment_id, runs: Optional[List[str]], warnings: List[str]) -> Dict[str, List[_Part]]:
    """Every AEVis time series (tensors and blob sequences) per run, with parsed metadata."""
    run_filter = provider.RunTagFilter(runs=runs) if runs is not None else None
    listings = (
        data_provider.list_tensors(ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, run_tag_filter=run_filter),
        data_provider.list_blob_sequences(ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, run_tag_filter=run_filter),
    )
    parts: Dict[str, List[_Part]] = collections.defaultdict(list)
    unreadable: Dict[str, str] = {}
    for listing in listings:
        for run, tags in listing.items():
            for tag, series in tags.items():
                try:
                    meta = metadata.parse_plugin_metadata(series.plugin_content)
                except metadata.PluginDataError as exc:
                    unreadable.setdefault(run, str(exc))
                    continue
                parts[run].append(_Part(tag, meta))
    for run, message in sorted(unreadable.items()):
        warnings.append(f"run {run!r}: some AEVis data was skipped: {message}")
    return parts


def index_runs(data_provider, ctx, experiment_id: str, runs: Optional[List[str]] = None) -> RunIndex:
    """List the analyses of every run (or of ``runs``) and the warnings about them."""
    warnings: List[str] = []
    analyses: Dict[str, List[AnalysisKey]] = {}
    for run, parts in sorted(_parts(data_provider, ctx, experiment_id, runs, warnings).items()):
        manifests = {(p.meta["analysis_name"], p.meta["method"], p.meta["step"]): p for p in parts if p.meta["kind"] == metadata.KIND_MANIFEST}
        arrays = {(p.meta["analysis_name"], p.meta["method"], p.meta["step"]) for p in parts if p.meta["kind"] == metadata.KIND_ARRAYS}
        steps: Dict[Tuple[str, str], List[int]] = collections.defaultdict(list)
        broken = 0
        for key in manifests:
            if key in arrays:
                steps[key[:2]].append(key[2])
            else:
                broken += 1
        if broken:
            warnings.append(f"run {run!r}: {broken} analyses have a manifest but no arrays (damaged event file); re-log them")
        missing = _missing_by_writer(manifests.values())
        if missing:
            warnings.append(
                f"run {run!r}: {missing} logged analyses are not loaded (dropped by TensorBoard's sampling or purged "
                f"because steps went backwards, or lost in a damaged event file); {SAMPLING_FIX} "
                "and --purge_orphaned_data=false"
            )
        if steps:
            analyses[run] = [AnalysisKey(name, method, tuple(sorted(s))) for (name, method), s in sorted(steps.items())]
    return RunIndex(analyses, warnings)


def _missing_by_writer(manifests) -> int:
    """How many manifests their writers numbered but that are not here (gaps in 1..max)."""
    seen: Dict[str, set] = collections.defaultdict(set)
    for part in manifests:
        if part.meta["writer_id"]:
            seen[part.meta["writer_id"]].add(part.meta["writer_sequence"])
    return sum(max(s) - len(s) for s in seen.values())


def list_analyses(data_provider, ctx, experiment_id: str) -> Dict[str, List[AnalysisKey]]:
    """``{run: [AnalysisKey(name, method, steps), ...]}`` for every run with AEVis analyses."""
    return index_runs(data_provider, ctx, experiment_id).analyses


# ----------------------------------------------------------------- loading
_cache: "collections.OrderedDict[tuple, LoadedAnalysis]" = collections.OrderedDict()
_cache_lock = threading.Lock()


def load_analysis(
    data_provider, ctx, experiment_id: str, run: str, name: str, method: str, step: int, logdir: Optional[str] = None
) -> LoadedAnalysis:
    """Read one analysis back. ``logdir`` (TensorBoard's ``--logdir``) locates the model artifact.

    Raises AnalysisNotFoundError when there is no such analysis, AnalysisReadError when
    its data cannot be decoded. Results are cached (keyed by run / name / method / step
    and the manifest's wall time, so a re-logged analysis is read again).
    """
    step = int(step)
    warnings: List[str] = []
    parts = _parts(data_provider, ctx, experiment_id, [run], warnings).get(run, [])
    by_kind: Dict[str, List[_Part]] = collections.defaultdict(list)
    for part in parts:
        meta = part.meta
        if meta["analysis_name"] == name and (meta["method"] in (method, "")):
            by_kind[meta["kind"]].append(part)

    def exact(kind: str) -> Optional[_Part]:
        found = [p for p in by_kind[kind] if p.meta["step"] == step and p.meta["method"] == method]
        return found[0] if found else None

    manifest_part, arrays_part = exact(metadata.KIND_MANIFEST), exact(metadata.KIND_ARRAYS)
    if manifest_part is None or arrays_part is None:
        raise AnalysisNotFoundError(f"no analysis {name!r} with method {method!r} at step {step} in run {run!r}")
    manifest_data = _read_tensor_data(data_provider, ctx, experiment_id, run, manifest_part.tag)
    if len(manifest_data) > 1:
        warnings.append(f"analysis {name!r} ({method}) was logged {len(manifest_data)} times at step {step}; showing the first: log again under a new step or name")
    key = (id(data_provider), experiment_id, run, name, method, step, manifest_data[0].wall_time, logdir)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]

    try:
        manifest = json.loads(_as_bytes(manifest_data[0].numpy).decode("utf-8"))
        blobs = _read_blobs(data_provider, ctx, experiment_id, run, arrays_part.tag, step)
        if len(blobs) < 1:
            raise AnalysisReadError("the arrays blob sequence is empty")
        analysis, maps = _decode_arrays(manifest, blobs)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise AnalysisReadError(f"analysis {name!r} ({method}) at step {step} in run {run!r} is damaged ({exc}); re-log it") from exc

    graph = _read_json_part(data_provider, ctx, experiment_id, run, _nearest(by_kind[metadata.KIND_GRAPH], step), warnings, "model graph")
    lf_part = exact(metadata.KIND_LEARNED_FEATURES)
    learned_blobs = _read_blobs(data_provider, ctx, experiment_id, run, lf_part.tag, step) if lf_part else []
    ref_part = _nearest(by_kind[metadata.KIND_REFERENCE_IMAGES], step)
    references = _read_blobs(data_provider, ctx, experiment_id, run, ref_part[0].tag, ref_part[1]) if ref_part else []
    artifact = _artifact_path(manifest, logdir, run, name, step, warnings)

    loaded = LoadedAnalysis(
        run=run, name=name, method=method, step=step, analysis=analysis, manifest=manifest, image_pngs=blobs[1:],
        activation_maps=maps, graph=graph, learned_feature_store=LearnedFeatures(learned_blobs[0]) if learned_blobs else None,
        reference_image_pngs=references,
        model_artifact=artifact, warnings=warnings,
    )
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def _nearest(parts: List[_Part], step: int) -> Optional[Tuple[_Part, int]]:
    """The part logged at the latest step <= ``step`` (else the earliest), with its step."""
    if not parts:
        return None
    before = [p for p in parts if p.meta["step"] <= step]
    chosen = max(before, key=lambda p: p.meta["step"]) if before else min(parts, key=lambda p: p.meta["step"])
    return chosen, chosen.meta["step"]


def _read_tensor_data(data_provider, ctx, experiment_id, run, tag) -> List[provider.TensorDatum]:
    result = data_provider.read_tensors(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1_000_000,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
    )
    data = result.get(run, {}).get(tag, [])
    if not data:
        raise AnalysisNotFoundError(f"no data for tag {tag!r} in run {run!r}")
    return data


def _read_blobs(data_provider, ctx, experiment_id, run, tag, step) -> List[bytes]:
    result = data_provider.read_blob_sequences(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1_000_000,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
    )
    for datum in result.get(run, {}).get(tag, []):
        if datum.step == step:
            return [_as_bytes(data_provider.read_blob(ctx, blob_key=ref.blob_key)) for ref in datum.values]
    return []


def _read_json_part(data_provider, ctx, experiment_id, run, found, warnings, what) -> Optional[Any]:
    if found is None:
        return None
    part, step = found
    try:
        blobs = _read_blobs(data_provider, ctx, experiment_id, run, part.tag, step)
        return json.loads(blobs[0].decode("utf-8")) if blobs else None
    except (ValueError, UnicodeDecodeError) as exc:
        warnings.append(f"the {what} of analysis {part.meta['analysis_name']!r} is damaged ({exc}); re-log the analysis")
        return None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        value = value.item()
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _decode_arrays(manifest: Dict[str, Any], blobs: List[bytes]) -> Tuple[Analysis, Optional[ActivationMaps]]:
    """The Analysis (gates, max activations, images decoded now) and its activation maps
    (decompressed per layer on first use) from the ``arrays`` blobs."""
    meta = manifest["analysis"]
    archive = NpzArchive(blobs[0])
    n_layers = len(meta["layers"])
    images = [decode_png(png) for png in blobs[1:]]
    if len(images) != len(meta["examples"]):
        raise AnalysisReadError(f"{len(images)} images for {len(meta['examples'])} examples")
    analysis_arrays = {"images": np.stack(images)}
    for l in range(n_layers):
        analysis_arrays[f"gates/{l}"] = archive[f"gates/{l}"]
        if f"max_activations/{l}" in archive:
            analysis_arrays[f"max_activations/{l}"] = archive[f"max_activations/{l}"]
    analysis = Analysis.from_arrays(meta, analysis_arrays)
    maps = None
    if "maps/0/channels" in archive:
        missing = [f"maps/{l}/{part}" for l in range(n_layers) for part in ("channels", "uint8", "min", "max")
                   if f"maps/{l}/{part}" not in archive]
        if missing:
            raise AnalysisReadError(f"the arrays lack {missing[0]}")
        maps = ActivationMaps(archive, n_layers, len(images))
    return analysis, maps


def _artifact_path(manifest, logdir, run, name, step, warnings) -> Optional[str]:
    if not manifest.get("has_model") or logdir is None:
        return None
    run_dir = logdir if run in (".", "") else os.path.join(logdir, run)
    try:
        path = model_artifact.artifact_dir(run_dir, manifest.get("model_artifact"))
        model_artifact.read_artifact_meta(path)
    except model_artifact.ModelArtifactError as exc:
        warnings.append(f"the model of analysis {name!r} at step {step} cannot be used ({exc}): contribution analysis is unavailable; re-log with save_model=True")
        return None
    return path
