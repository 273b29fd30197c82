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
import concurrent.futures
import dataclasses
import functools
import io
import json
import os
import threading
import time
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tensorboard.data import provider

from tensorboard_plugin_aevis import metadata, model_artifact
from tensorboard_plugin_aevis.analysis import Analysis
from tensorboard_plugin_aevis.bounded_cache import ByteLRU
from summary_writers.codec import NpzArchive, decode_png, dequantise_map

SAMPLING_FIX = "restart TensorBoard with --samples_per_plugin=aevis=0"
MAX_LOADED_BYTES = 1024 * 1024 * 1024  # what one server keeps of read analyses (docs/architecture.md)
MIN_RELIST_S = 1.0
BLOB_READERS = 8
MAX_STORES = 4


class AnalysisNotFoundError(LookupError):
    """No analysis with this run / name / method / step."""


class AnalysisReadError(ValueError):
    """The analysis exists but its logged data cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class AnalysisKey:
    """One analysis name + method in a run, the steps it was logged at and those of them
    whose manifest says a model was saved (contribution analysis possible)."""

    name: str
    method: str
    steps: Tuple[int, ...]
    steps_with_model: Tuple[int, ...] = ()


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
    ``version``: the manifest series' wall time (a re-logged analysis has another);
    ``nbytes``: what keeping it costs, decompressed activation maps included (an estimate).
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
    version: float = 0.0
    nbytes: int = 0

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
    """One AEVis time series: its tag, parsed plugin metadata and latest wall time (which
    changes when anything is logged to it again)."""

    tag: str
    meta: Dict[str, Any]
    wall_time: float


@dataclasses.dataclass
class _Manifest:
    """The first manifest logged in one manifest series (parsed), or why it cannot be read."""

    wall_time: float
    value: Optional[Dict[str, Any]]
    error: Optional[str]
    count: int


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
                parts[run].append(_Part(tag, meta, float(series.max_wall_time)))
    for run, message in sorted(unreadable.items()):
        warnings.append(f"run {run!r}: some AEVis data was skipped: {message}")
    return parts


def _read_manifests(data_provider, ctx, experiment_id, parts: Dict[str, List[_Part]],
                    known: Dict[Tuple[str, str], _Manifest]) -> Dict[Tuple[str, str], _Manifest]:
    """``{(run, tag): _Manifest}`` of every manifest series in ``parts``: taken from ``known``
    when its wall time is unchanged, the others read in one ``read_tensors`` call."""
    result: Dict[Tuple[str, str], _Manifest] = {}
    stale: Dict[str, List[str]] = collections.defaultdict(list)
    for run, run_parts in parts.items():
        for part in run_parts:
            if part.meta["kind"] != metadata.KIND_MANIFEST:
                continue
            found = known.get((run, part.tag))
            if found is not None and found.wall_time == part.wall_time:
                result[(run, part.tag)] = found
            else:
                stale[run].append(part.tag)
    if stale:
        read = data_provider.read_tensors(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1_000_000,
            run_tag_filter=provider.RunTagFilter(runs=sorted(stale), tags=sorted({t for tags in stale.values() for t in tags})),
        )
        wall_times = {(run, p.tag): p.wall_time for run, run_parts in parts.items() for p in run_parts}
        for run, tags in stale.items():
            for tag in tags:
                result[(run, tag)] = _parse_manifest(read.get(run, {}).get(tag, []), wall_times[(run, tag)])
    return result


def _parse_manifest(data: List[provider.TensorDatum], wall_time: float) -> _Manifest:
    if not data:
        return _Manifest(wall_time, None, "its manifest has no data", 0)
    try:
        value = json.loads(_as_bytes(data[0].numpy).decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return _Manifest(wall_time, None, f"its manifest is damaged ({exc})", len(data))
    return _Manifest(wall_time, value, None, len(data))


def _index(parts: Dict[str, List[_Part]], manifests: Dict[Tuple[str, str], _Manifest], warnings: List[str],
           logdir: Optional[str] = None) -> RunIndex:
    """The analyses per run; a step counts in ``steps_with_model`` when its manifest names a model
    artifact and, where ``logdir`` is known, that artifact's folder still exists (the writer's
    ``save_model="first-and-latest"`` policy removes superseded ones)."""
    analyses: Dict[str, List[AnalysisKey]] = {}
    for run, run_parts in sorted(parts.items()):
        manifest_parts = {(p.meta["analysis_name"], p.meta["method"], p.meta["step"]): p
                          for p in run_parts if p.meta["kind"] == metadata.KIND_MANIFEST}
        arrays = {(p.meta["analysis_name"], p.meta["method"], p.meta["step"]) for p in run_parts if p.meta["kind"] == metadata.KIND_ARRAYS}
        steps: Dict[Tuple[str, str], List[int]] = collections.defaultdict(list)
        with_model: Dict[Tuple[str, str], List[int]] = collections.defaultdict(list)
        broken = 0
        for key, part in manifest_parts.items():
            if key not in arrays:
                broken += 1
                continue
            steps[key[:2]].append(key[2])
            manifest = manifests.get((run, part.tag))
            if manifest is not None and manifest.value is not None and _model_kept(manifest.value, logdir, run):
                with_model[key[:2]].append(key[2])
        if broken:
            warnings.append(f"run {run!r}: {broken} analyses have a manifest but no arrays (damaged event file); re-log them")
        missing = _missing_by_writer(manifest_parts.values())
        if missing:
            warnings.append(
                f"run {run!r}: {missing} logged analyses are not loaded (dropped by TensorBoard's sampling or purged "
                f"because steps went backwards, or lost in a damaged event file); {SAMPLING_FIX} "
                "and --purge_orphaned_data=false"
            )
        if steps:
            analyses[run] = [AnalysisKey(name, method, tuple(sorted(s)), tuple(sorted(with_model.get((name, method), ()))))
                             for (name, method), s in sorted(steps.items())]
    return RunIndex(analyses, warnings)


def _model_kept(manifest: Dict[str, Any], logdir: Optional[str], run: str) -> bool:
    """Whether the manifest's model artifact exists (only ``has_model`` when ``logdir`` is unknown)."""
    if not manifest.get("has_model"):
        return False
    if logdir is None:
        return True
    try:
        return os.path.isdir(model_artifact.artifact_dir(_run_dir(logdir, run), manifest.get("model_artifact")))
    except model_artifact.ModelArtifactError:
        return False


def _run_dir(logdir: str, run: str) -> str:
    return logdir if run in (".", "") else os.path.join(logdir, run)


def index_runs(data_provider, ctx, experiment_id: str, runs: Optional[List[str]] = None) -> RunIndex:
    """List the analyses of every run (or of ``runs``) and the warnings about them (read now)."""
    warnings: List[str] = []
    parts = _parts(data_provider, ctx, experiment_id, runs, warnings)
    return _index(parts, _read_manifests(data_provider, ctx, experiment_id, parts, {}), warnings)


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


# ----------------------------------------------------------------- the store
@dataclasses.dataclass
class _Snapshot:
    """One listing of an experiment: its index, its parts per run, its manifests, when made."""

    index: RunIndex
    parts: Dict[str, List[_Part]]
    manifests: Dict[Tuple[str, str], _Manifest]
    made: float


class AnalysisStore:
    """What one server has read of its runs: the run index and the loaded analyses.

    - The index (every AEVis time series of the experiment, each manifest parsed once
      per wall time) is listed again when older than ``index_ttl_s`` (the plugin passes
      TensorBoard's ``--reload_interval``, how often new data can appear); while one
      request lists, the others use the previous listing. An analysis not in the
      listing makes one listing at most every ``MIN_RELIST_S`` seconds (just logged?).
    - An analysis is read once (its manifest from the listing, its blobs with one
      ``read_blob_sequences`` call and the ``read_blob`` calls in parallel) and kept in
      an LRU bounded by ``max_bytes`` (its blobs, decoded arrays and the decompressed
      size of its activation maps); simultaneous requests for it share one read. The
      key holds the manifest's wall time, so a re-logged analysis is read again.

    Thread-safe. Raises as :func:`load_analysis`.
    """

    def __init__(self, data_provider, logdir: Optional[str] = None, index_ttl_s: float = 0.0,
                 max_bytes: int = MAX_LOADED_BYTES):
        self._data_provider = data_provider
        self._logdir = logdir
        self._ttl = float(index_ttl_s)
        self._snapshots: Dict[str, _Snapshot] = {}
        self._listing = threading.Lock()
        self._loaded = ByteLRU(max_bytes)

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the loaded analyses (an estimate; at most ``max_bytes``)."""
        return self._loaded.bytes

    def index(self, ctx, experiment_id: str) -> RunIndex:
        """The run index (at most ``index_ttl_s`` old)."""
        return self._snapshot(ctx, experiment_id, self._ttl).index

    def load(self, ctx, experiment_id: str, run: str, name: str, method: str, step: int) -> LoadedAnalysis:
        """One analysis (see :func:`load_analysis`)."""
        step = int(step)
        snapshot = self._snapshot(ctx, experiment_id, self._ttl)
        by_kind = _analysis_parts(snapshot.parts.get(run, []), name, method)
        if _exact(by_kind, metadata.KIND_MANIFEST, method, step) is None:
            snapshot = self._snapshot(ctx, experiment_id, min(self._ttl, MIN_RELIST_S))
            by_kind = _analysis_parts(snapshot.parts.get(run, []), name, method)
        manifest_part = _exact(by_kind, metadata.KIND_MANIFEST, method, step)
        if manifest_part is None or _exact(by_kind, metadata.KIND_ARRAYS, method, step) is None:
            raise AnalysisNotFoundError(f"no analysis {name!r} with method {method!r} at step {step} in run {run!r}")
        manifest = snapshot.manifests[(run, manifest_part.tag)]
        key = (experiment_id, run, name, method, step, manifest.wall_time)
        return self._loaded.get_or_compute(
            key, lambda: _read_analysis(self._data_provider, ctx, experiment_id, run, name, method, step, manifest, by_kind, self._logdir),
            lambda loaded: loaded.nbytes)

    def read_ahead(self, ctx, experiment_id: str, budget_bytes: int) -> int:
        """Read the latest step of every analysis in the index, in its order (runs, then
        analyses, as the dashboard lists them), until the read analyses hold ``budget_bytes``.

        Returns:
            How many of those analyses are held now (read by this call or before). One
            that cannot be read is skipped: its routes say why when it is asked for.
        """
        held = 0
        for run, keys in self.index(ctx, experiment_id).analyses.items():
            for key in keys:
                if self.cached_bytes >= budget_bytes:
                    return held
                try:
                    self.load(ctx, experiment_id, run, key.name, key.method, key.steps[-1])
                except (AnalysisNotFoundError, AnalysisReadError):
                    continue
                held += 1
        return held

    def _snapshot(self, ctx, experiment_id: str, max_age: float) -> _Snapshot:
        current = self._snapshots.get(experiment_id)
        if current is not None and time.monotonic() - current.made < max_age:
            return current
        if not self._listing.acquire(blocking=current is None or max_age < self._ttl):
            return current  # another request is listing: use the previous listing meanwhile
        try:
            latest = self._snapshots.get(experiment_id)
            if latest is not None and latest is not current and time.monotonic() - latest.made < max_age:
                return latest
            warnings: List[str] = []
            parts = _parts(self._data_provider, ctx, experiment_id, None, warnings)
            manifests = _read_manifests(self._data_provider, ctx, experiment_id, parts, latest.manifests if latest else {})
            snapshot = _Snapshot(_index(parts, manifests, warnings, self._logdir), parts, manifests, time.monotonic())
            self._snapshots[experiment_id] = snapshot
            return snapshot
        finally:
            self._listing.release()


_stores: "collections.OrderedDict[Tuple[int, Optional[str]], Tuple[Any, AnalysisStore]]" = collections.OrderedDict()
_stores_lock = threading.Lock()


def load_analysis(
    data_provider, ctx, experiment_id: str, run: str, name: str, method: str, step: int, logdir: Optional[str] = None
) -> LoadedAnalysis:
    """Read one analysis back. ``logdir`` (TensorBoard's ``--logdir``) locates the model artifact.

    Raises AnalysisNotFoundError when there is no such analysis, AnalysisReadError when
    its data cannot be decoded. Lists the run's series on every call (a server keeps an
    :class:`AnalysisStore` instead); the analyses read are kept (keyed by run / name /
    method / step and the manifest's wall time, so a re-logged analysis is read again).
    """
    with _stores_lock:
        key = (id(data_provider), logdir)
        found = _stores.get(key)
        if found is None or found[0] is not data_provider:
            found = _stores[key] = (data_provider, AnalysisStore(data_provider, logdir))
        _stores.move_to_end(key)
        while len(_stores) > MAX_STORES:
            _stores.popitem(last=False)
    return found[1].load(ctx, experiment_id, run, name, method, step)


def _analysis_parts(parts: List[_Part], name: str, method: str) -> Dict[str, List[_Part]]:
    """The parts of analysis ``name`` by kind: its own (of ``method``) and the per-name ones."""
    by_kind: Dict[str, List[_Part]] = collections.defaultdict(list)
    for part in parts:
        if part.meta["analysis_name"] == name and part.meta["method"] in (method, ""):
            by_kind[part.meta["kind"]].append(part)
    return by_kind


def _exact(by_kind: Dict[str, List[_Part]], kind: str, method: str, step: int) -> Optional[_Part]:
    found = [p for p in by_kind.get(kind, ()) if p.meta["step"] == step and p.meta["method"] == method]
    return found[0] if found else None


def _read_analysis(data_provider, ctx, experiment_id, run, name, method, step, manifest: _Manifest,
                   by_kind: Dict[str, List[_Part]], logdir) -> LoadedAnalysis:
    """Read and decode one analysis: one ``read_blob_sequences`` call, its blobs read in parallel."""
    warnings: List[str] = []
    if manifest.value is None:
        raise AnalysisReadError(f"analysis {name!r} ({method}) at step {step} in run {run!r} is damaged ({manifest.error}); re-log it")
    if manifest.count > 1:
        warnings.append(f"analysis {name!r} ({method}) was logged {manifest.count} times at step {step}; showing the first: log again under a new step or name")
    arrays_part = _exact(by_kind, metadata.KIND_ARRAYS, method, step)
    graph_found = _nearest(by_kind[metadata.KIND_GRAPH], step)
    lf_part = _exact(by_kind, metadata.KIND_LEARNED_FEATURES, method, step)
    ref_found = _nearest(by_kind[metadata.KIND_REFERENCE_IMAGES], step)
    wanted = [(arrays_part.tag, step)]
    wanted += [(graph_found[0].tag, graph_found[1])] if graph_found else []
    wanted += [(lf_part.tag, step)] if lf_part else []
    wanted += [(ref_found[0].tag, ref_found[1])] if ref_found else []
    try:
        blobs = _read_blob_parts(data_provider, ctx, experiment_id, run, wanted)
        arrays = blobs[(arrays_part.tag, step)]
        if len(arrays) < 1:
            raise AnalysisReadError("the arrays blob sequence is empty")
        analysis, maps = _decode_arrays(manifest.value, arrays)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise AnalysisReadError(f"analysis {name!r} ({method}) at step {step} in run {run!r} is damaged ({exc}); re-log it") from exc

    graph = None
    if graph_found:
        graph = _json_part(blobs[(graph_found[0].tag, graph_found[1])], warnings, name, "model graph")
    learned_blobs = blobs[(lf_part.tag, step)] if lf_part else []
    references = blobs[(ref_found[0].tag, ref_found[1])] if ref_found else []
    artifact = _artifact_path(manifest.value, logdir, run, name, step, warnings)
    nbytes = (sum(len(b) for part_blobs in blobs.values() for b in part_blobs) + _unpacked_size(arrays[0])
              + analysis.images.nbytes + sum(g.nbytes for g in analysis.gates)
              + sum(m.nbytes for m in (analysis.max_activations or ())))
    return LoadedAnalysis(
        run=run, name=name, method=method, step=step, analysis=analysis, manifest=manifest.value, image_pngs=arrays[1:],
        activation_maps=maps, graph=graph, learned_feature_store=LearnedFeatures(learned_blobs[0]) if learned_blobs else None,
        reference_image_pngs=references, model_artifact=artifact, warnings=warnings, version=manifest.wall_time, nbytes=nbytes,
    )


def _nearest(parts: List[_Part], step: int) -> Optional[Tuple[_Part, int]]:
    """The part logged at the latest step <= ``step`` (else the earliest), with its step."""
    if not parts:
        return None
    before = [p for p in parts if p.meta["step"] <= step]
    chosen = max(before, key=lambda p: p.meta["step"]) if before else min(parts, key=lambda p: p.meta["step"])
    return chosen, chosen.meta["step"]


def _read_blob_parts(data_provider, ctx, experiment_id, run, wanted: List[Tuple[str, int]]) -> Dict[Tuple[str, int], List[bytes]]:
    """``{(tag, step): [blob bytes, ...]}`` for each wanted (tag, step) of ``run``: one
    ``read_blob_sequences`` call, then the ``read_blob`` calls in parallel."""
    result = data_provider.read_blob_sequences(
        ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1_000_000,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=sorted({tag for tag, _ in wanted})),
    )
    refs: Dict[Tuple[str, int], List[Any]] = {}
    for tag, step in wanted:
        datum = next((d for d in result.get(run, {}).get(tag, []) if d.step == step), None)
        refs[(tag, step)] = list(datum.values) if datum is not None else []
    keys = [ref.blob_key for values in refs.values() for ref in values]
    read = dict(zip(keys, _blob_readers().map(lambda key: _as_bytes(data_provider.read_blob(ctx, blob_key=key)), keys)))
    return {part: [read[ref.blob_key] for ref in values] for part, values in refs.items()}


_readers: Optional[concurrent.futures.ThreadPoolExecutor] = None
_readers_lock = threading.Lock()


def _blob_readers() -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of ``BLOB_READERS`` threads for ``read_blob`` calls (made on first use)."""
    global _readers
    with _readers_lock:
        if _readers is None:
            _readers = concurrent.futures.ThreadPoolExecutor(BLOB_READERS, thread_name_prefix="aevis-read-blob")
        return _readers


def _json_part(blobs: List[bytes], warnings: List[str], name: str, what: str) -> Optional[Any]:
    try:
        return json.loads(blobs[0].decode("utf-8")) if blobs else None
    except (ValueError, UnicodeDecodeError) as exc:
        warnings.append(f"the {what} of analysis {name!r} is damaged ({exc}); re-log the analysis")
        return None


def _unpacked_size(npz: bytes) -> int:
    """The decompressed size of an npz's arrays (read from its zip directory)."""
    try:
        with zipfile.ZipFile(io.BytesIO(npz)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return len(npz)


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
        for optional in ("max_activations", "stability"):
            if f"{optional}/{l}" in archive:
                analysis_arrays[f"{optional}/{l}"] = archive[f"{optional}/{l}"]
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
    try:
        path = model_artifact.artifact_dir(_run_dir(logdir, run), manifest.get("model_artifact"))
        if manifest.get("model_policy") == "first-and-latest" and not os.path.isdir(path):
            return None  # superseded by the writer's policy: the dashboard names the steps that kept a model
        model_artifact.read_artifact_meta(path)
    except model_artifact.ModelArtifactError as exc:
        warnings.append(f"the model of analysis {name!r} at step {step} cannot be used ({exc}): contribution analysis is unavailable; re-log with save_model=True")
        return None
    return path
