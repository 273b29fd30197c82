"""The AEVis TensorBoard plugin: routes of ``http_api.md`` over TensorBoard's DataProvider.

Every route reads runs only through ``context.data_provider`` (so it works with the
default Rust data server), via one :class:`run_reader.AnalysisStore` per server (the
run index refreshed at TensorBoard's ``--reload_interval``, each analysis read once),
validates each parameter before use, answers JSON errors ``{"error": ...}`` with a 4xx
status for bad input (never a traceback), and caches computed answers in a byte-bounded
LRU keyed on the request and the analysis's version. A route parses its parameters,
calls a ``*_impl`` function that returns the answer's data, and responds. Layouts are
computed here (``layouts/``, imported on first use with scipy); the dashboard only
draws. Importing this module imports neither torch nor scipy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from werkzeug import wrappers

from tensorboard import context as tb_context
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin

from tensorboard_plugin_aevis import contribution_service, datapath_metrics, metadata, run_reader
from tensorboard_plugin_aevis.bounded_cache import ByteLRU, answer_size
from tensorboard_plugin_aevis.http_common import JSON_TYPE, HttpError, Params, error_response, json_response, json_text, shown

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_QUERY_BYTES = 8 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_TREEMAP_DATAPATHS = 5
MAX_RIVER_DATAPATHS = 16
TREEMAP_SIZE_RANGE = (50, 4000)
CACHE_BYTES = 64 * 1024 * 1024
MAX_CONCURRENT_COMPUTATIONS = 4
BUSY_WAIT_SECONDS = 20.0
WARM_AFTER_IDLE_S = 1.0  # quiet time before a model or the analyses are read in the background
READ_AHEAD_BYTES = 256 * 1024 * 1024  # what the start-up read-ahead may fill of the analysis store
DEFAULT_INDEX_TTL_S = 5.0  # TensorBoard's default --reload_interval
PNG_TYPE = "image/png"
PNG_ANSWER_LEVEL = 1  # zlib level of PNGs made per request: ~4x faster to encode than 6, a few % larger
STATIC_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".map": JSON_TYPE,
                ".json": JSON_TYPE, ".svg": "image/svg+xml", ".png": PNG_TYPE, ".woff2": "font/woff2"}
STATIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")

AnalysisKey = Tuple[str, str, str, str, int]  # (experiment id, run, analysis, method, step)
ContributionHandler = Callable[[Dict[str, Any], Callable[[str, str, str, int], "run_reader.LoadedAnalysis"]], Dict[str, Any]]


class AEVisPlugin(base_plugin.TBPlugin):
    """The "AEVis" dashboard tab and its data routes (``http_api.md``)."""

    plugin_name = metadata.PLUGIN_NAME

    #: Extension point for ``POST contribution``: ``handler(payload, load) -> dict`` where
    #: ``payload`` is the request's JSON object and ``load(run, analysis, method, step)``
    #: returns a ``run_reader.LoadedAnalysis`` (raising HttpError 404 when unknown). The
    #: handler raises HttpError (4xx / 429 / 503) for requests it refuses. When None, the
    #: plugin uses ``contribution_service.handle_contribution``.
    contribution_handler: Optional[ContributionHandler] = None

    #: Read the model of an analysis in the background once its ``analysis`` answer was
    #: asked for and no AEVis request has run for ``WARM_AFTER_IDLE_S`` (reading it takes
    #: seconds of the server's CPU: never while requests wait), so the first contribution
    #: request does not wait for it.
    warm_models: bool = True

    #: From start-up, once the server is idle and the data server lists AEVis data, read
    #: the latest step of every listed analysis (up to ``READ_AHEAD_BYTES``), so the first
    #: requests find them read instead of all waiting for the same first reads.
    read_analyses_ahead: bool = True

    def __init__(self, context: base_plugin.TBContext):
        self._data_provider = context.data_provider
        self._logdir = context.logdir
        reload_interval = getattr(getattr(context, "flags", None), "reload_interval", None)
        ttl = float(reload_interval) if isinstance(reload_interval, (int, float)) and reload_interval > 0 else DEFAULT_INDEX_TTL_S
        self._store = run_reader.AnalysisStore(context.data_provider, context.logdir, index_ttl_s=ttl)
        self._cache = ByteLRU(CACHE_BYTES)
        self._computing = threading.BoundedSemaphore(MAX_CONCURRENT_COMPUTATIONS)
        self._warmed: set = set()
        self._warmed_lock = threading.Lock()
        self._activity = threading.Condition()
        self._in_flight = 0
        self._last_request = time.monotonic()
        self._answered = 0
        self._index_ttl = ttl
        if self.read_analyses_ahead:
            threading.Thread(target=self._read_analyses_ahead, name="aevis-read-ahead", daemon=True).start()

    # ------------------------------------------------------------ TBPlugin
    def get_plugin_apps(self):
        routes = {
            "/runs": self._runs,
            "/analysis": self._analysis,
            "/image": self._image,
            "/graph": self._graph,
            "/river": self._river,
            "/treemap": self._treemap,
            "/neuron": self._neuron,
            "/activation_map": self._activation_map,
            "/learned_feature": self._learned_feature,
            "/reference_image": self._reference_image,
        }
        apps = {path: self._get_route(handler) for path, handler in routes.items()}
        apps["/contribution"] = self._post_route(self._contribution)
        apps["/static/*"] = self._static
        return apps

    def is_active(self) -> bool:
        """True when the data provider lists any AEVis time series. (TensorBoard itself marks
        the tab active from ``data_plugin_names()``; it calls this only as a fallback.)"""
        ctx = tb_context.RequestContext()
        for listing in (self._data_provider.list_tensors, self._data_provider.list_blob_sequences):
            if any(listing(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME).values()):
                return True
        return False

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name="AEVis")

    # ------------------------------------------------------------ plumbing
    def _get_route(self, handler):
        @wrappers.Request.application
        def app(request: wrappers.Request):
            if request.method not in ("GET", "HEAD"):
                return error_response(request, 405, f"{request.path} answers GET only")
            return self._answer(request, lambda: handler(request, Params(request.args)))

        return app

    def _post_route(self, handler):
        @wrappers.Request.application
        def app(request: wrappers.Request):
            if request.method != "POST":
                return error_response(request, 405, f"{request.path} answers POST only (a JSON body)")
            return self._answer(request, lambda: handler(request))

        return app

    def _answer(self, request: wrappers.Request, compute: Callable[[], Any]):
        """Run ``compute`` (which returns a response), turning every failure into a JSON error."""
        if len(request.environ.get("QUERY_STRING", "")) > MAX_QUERY_BYTES:
            return error_response(request, 413, f"query string longer than {MAX_QUERY_BYTES} bytes")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return error_response(request, 413, f"request body larger than {MAX_BODY_BYTES} bytes")
        with self._activity:
            self._in_flight += 1
        try:
            return compute()
        except HttpError as e:
            return error_response(request, e.status, e.message)
        except run_reader.AnalysisReadError as e:  # a part read on first use (one layer's maps) is damaged
            return error_response(request, 404, str(e))
        except Exception:  # a bug, not bad input: log it, never show the traceback
            logger.exception("AEVis route %s failed", request.path)
            return error_response(request, 500, "internal error in the AEVis plugin; see the TensorBoard log")
        finally:
            with self._activity:
                self._in_flight -= 1
                self._answered += 1
                self._last_request = time.monotonic()
                self._activity.notify_all()

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, or ``compute()`` (once for simultaneous requests) under the concurrency bound."""

        def bounded() -> Any:
            if not self._computing.acquire(timeout=BUSY_WAIT_SECONDS):
                raise HttpError(503, "the AEVis plugin is busy computing other answers; retry in a few seconds")
            try:
                return compute()
            finally:
                self._computing.release()

        return self._cache.get_or_compute(key, bounded, answer_size)

    def _load(self, request: wrappers.Request, run: str, name: str, method: str, step: int) -> "run_reader.LoadedAnalysis":
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        try:
            return self._store.load(ctx, eid, run, name, method, step)
        except run_reader.AnalysisNotFoundError:
            raise HttpError(404, f"no analysis {name!r} with method {method!r} at step {step} in run {run!r}; "
                                 "see the 'runs' route for what exists") from None
        except run_reader.AnalysisReadError as e:
            raise HttpError(404, str(e)) from None

    def _loaded(self, request: wrappers.Request, params: Params) -> Tuple[AnalysisKey, "run_reader.LoadedAnalysis"]:
        """The (experiment id, run, analysis, method, step) of a request about one analysis, and that analysis."""
        key = (plugin_util.experiment_id(request.environ), params.string("run"), params.string("analysis"),
               params.method(), params.integer("step", lo=0))
        return key, self._load(request, *key[1:])

    def _respond_cached(self, request, route: str, key: AnalysisKey, loaded, extra: tuple, compute: Callable[[], Any], mimetype: str):
        """Respond with the cached answer of ``route`` for this analysis version and ``extra`` parameters."""
        return http_util.Respond(request, self._cached((route,) + key + (loaded.version,) + extra, compute), mimetype)

    def _warm_model(self, loaded: "run_reader.LoadedAnalysis") -> None:
        """Read the analysis's model in a background thread (once per artifact) when contributions
        use the default service, as soon as the server is idle (:meth:`_wait_until_idle`)."""
        if not self.warm_models or self.contribution_handler is not None or loaded.model_artifact is None:
            return
        with self._warmed_lock:
            if loaded.model_artifact in self._warmed:
                return
            self._warmed.add(loaded.model_artifact)

        def warm() -> None:
            self._wait_until_idle()
            contribution_service.default_service().warm(loaded)

        threading.Thread(target=warm, name="aevis-warm-model", daemon=True).start()

    def _read_analyses_ahead(self) -> None:
        """Wait until the data server lists AEVis data (checking every index TTL, while no
        AEVis request has been answered: after one, analyses are read as they are asked
        for), then read them ahead (:meth:`run_reader.AnalysisStore.read_ahead`) once idle."""
        ctx = tb_context.RequestContext()
        try:
            while True:
                self._wait_until_idle()
                if self._store.index(ctx, "").analyses:
                    break
                if self._answered:
                    return
                time.sleep(self._index_ttl)
            self._wait_until_idle()
            self._store.read_ahead(ctx, "", READ_AHEAD_BYTES)
        except Exception:  # a background courtesy: the routes report any problem when asked
            logger.debug("AEVis read-ahead stopped", exc_info=True)

    def _wait_until_idle(self) -> None:
        """Return once no AEVis request has been running for ``WARM_AFTER_IDLE_S`` seconds."""
        with self._activity:
            while True:
                quiet = time.monotonic() - self._last_request
                if self._in_flight == 0 and quiet >= WARM_AFTER_IDLE_S:
                    return
                self._activity.wait(WARM_AFTER_IDLE_S - quiet if self._in_flight == 0 else None)

    # ------------------------------------------------------------ routes
    def _runs(self, request: wrappers.Request, params: Params):
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        return json_response(request, runs_impl(self._store.index(ctx, eid)))

    def _analysis(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        self._warm_model(loaded)
        return self._respond_cached(request, "analysis", key, loaded, (), lambda: json_text(analysis_impl(loaded)), JSON_TYPE)

    def _image(self, request: wrappers.Request, params: Params):
        _, loaded = self._loaded(request, params)
        example = params.integer("example", lo=0)
        if example >= len(loaded.image_pngs):
            raise HttpError(404, f"example {example} does not exist: this analysis has {len(loaded.image_pngs)} examples (0..{len(loaded.image_pngs) - 1})")
        return http_util.Respond(request, loaded.image_pngs[example], PNG_TYPE)

    def _graph(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        return self._respond_cached(request, "graph", key, loaded, (), lambda: json_text(graph_impl(loaded)), JSON_TYPE)

    def _river(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        chosen = params.integers("examples", None, 2, MAX_RIVER_DATAPATHS)
        normalization = params.string("normalization", "l2")
        if normalization not in datapath_metrics.NORMALIZATIONS:
            raise HttpError(400, f"normalization {shown(normalization)!r} is unknown; use one of {', '.join(datapath_metrics.NORMALIZATIONS)}")
        return self._respond_cached(request, "river", key, loaded, (tuple(chosen or ()), normalization),
                                    lambda: json_text(river_impl(loaded, chosen, normalization)), JSON_TYPE)

    def _treemap(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        layer_name = params.string("layer")
        chosen = params.integers("examples", None, 1, MAX_TREEMAP_DATAPATHS)
        diff = params.integers("diff", None, 2, 2)
        width = params.integer("width", 600, *TREEMAP_SIZE_RANGE)
        height = params.integer("height", 400, *TREEMAP_SIZE_RANGE)
        return self._respond_cached(request, "treemap", key, loaded, (layer_name, tuple(chosen or ()), tuple(diff or ()), width, height),
                                    lambda: json_text(treemap_impl(loaded, layer_name, chosen, diff, width, height)), JSON_TYPE)

    def _neuron(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)
        return self._respond_cached(request, "neuron", key, loaded, (layer_name, channel),
                                    lambda: json_text(neuron_impl(loaded, layer_name, channel)), JSON_TYPE)

    def _activation_map(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)
        example = params.integer("example", lo=0)
        png, value_range = self._cached(("activation_map",) + key + (loaded.version, layer_name, channel, example),
                                        lambda: activation_map_impl(loaded, layer_name, channel, example))
        return http_util.Respond(request, png, PNG_TYPE, headers=[("X-AEVis-Range", value_range)])

    def _learned_feature(self, request: wrappers.Request, params: Params):
        key, loaded = self._loaded(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)
        rank = params.integer("rank", lo=0)
        return self._respond_cached(request, "learned_feature", key, loaded, (layer_name, channel, rank),
                                    lambda: learned_feature_impl(loaded, layer_name, channel, rank), PNG_TYPE)

    def _reference_image(self, request: wrappers.Request, params: Params):
        _, loaded = self._loaded(request, params)
        index = params.integer("index", lo=0)
        count = len(loaded.reference_image_pngs)
        if index >= count:
            raise HttpError(404, f"reference image {index} was not logged: this analysis has {count} reference images"
                                 + (f" (0..{count - 1})" if count else "; log them with add_analysis(..., reference_images=...)"))
        return http_util.Respond(request, loaded.reference_image_pngs[index], PNG_TYPE)

    def _contribution(self, request: wrappers.Request):
        if request.mimetype != JSON_TYPE:
            raise HttpError(400, f"send the request body as JSON with Content-Type {JSON_TYPE}")
        try:
            payload = json.loads(request.get_data(cache=False).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise HttpError(400, "the request body must be a JSON object")

        def load(run: str, name: str, method: str, step: int) -> "run_reader.LoadedAnalysis":
            return self._load(request, run, name, method, step)

        handler = self.contribution_handler or contribution_service.handle_contribution
        return json_response(request, handler(payload, load))

    @wrappers.Request.application
    def _static(self, request: wrappers.Request):
        name = request.path.split("/static/", 1)[-1]  # must be a plain file name: no "/" or ".."
        ext = os.path.splitext(name)[1]
        if not STATIC_NAME.match(name) or ext not in STATIC_TYPES:
            return error_response(request, 404, "no such dashboard file")
        path = os.path.join(STATIC_DIR, name)
        if not os.path.isfile(path):
            message = ("the dashboard bundle static/index.js is missing: build it with 'npm run build' in frontend/ "
                       "and reinstall tensorboard-plugin-aevis") if name == "index.js" else f"no dashboard file {name!r}"
            return error_response(request, 404, message)
        with open(path, "rb") as f:
            content = f.read()
        # Revalidated on every load (TensorBoard's no-cache): an unchanged file costs a 304, a new one is sent.
        etag = hashlib.sha256(content).hexdigest()[:32]
        if request.if_none_match.contains(etag):
            return wrappers.Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": "no-cache, must-revalidate"})
        return http_util.Respond(request, content, STATIC_TYPES[ext], headers=[("ETag", f'"{etag}"')])


# ----------------------------------------------------------------- answers (*_impl: data, no HTTP)
def runs_impl(index: "run_reader.RunIndex") -> Dict[str, Any]:
    """The ``runs`` answer from a run index."""
    runs = [
        {"run": run, "analyses": [{"name": k.name, "method": k.method, "steps": list(k.steps),
                                   "steps_with_model": list(k.steps_with_model)} for k in keys]}
        for run, keys in sorted(index.analyses.items())
    ]
    return {"runs": runs, "warnings": index.warnings}


def analysis_impl(loaded: "run_reader.LoadedAnalysis") -> Dict[str, Any]:
    """The ``analysis`` answer."""
    a, m = loaded.analysis, loaded.manifest
    kept = m.get("kept_fraction") or a.kept_fraction().tolist()
    examples = [{"index": i, **dataclasses.asdict(e), "label_preserved": e.label_preserved, "kept_fraction": kept[i]}
                for i, e in enumerate(a.examples)]
    return {
        "run": loaded.run, "analysis": loaded.name, "method": loaded.method, "step": loaded.step,
        "format_version": m["analysis"].get("format_version"),
        "params": a.params, "threshold": a.threshold, "examples": examples,
        "layers": [dataclasses.asdict(l) for l in a.layers],
        "distances": loaded.distances, "diff_curve": loaded.diff_curve,
        "diverging_merging": loaded.diverging_merging,
        "has_model": loaded.model_artifact is not None,
        "has_graph": loaded.graph is not None,
        "has_activation_maps": loaded.activation_maps is not None,
        "has_learned_features": loaded.has_learned_features,
        "warnings": loaded.warnings,
    }


def graph_impl(loaded: "run_reader.LoadedAnalysis") -> Dict[str, Any]:
    """The ``graph`` answer: the logged model DAG."""
    if loaded.graph is None:
        raise HttpError(404, "no model graph was logged for this analysis: pass model=... to add_analysis")
    return loaded.graph


def river_impl(loaded: "run_reader.LoadedAnalysis", chosen: Optional[List[int]], normalization: str = "l2") -> Dict[str, Any]:
    """The ``river`` answer for the ``chosen`` examples (default: the first MAX_RIVER_DATAPATHS),
    with layer distances ``normalization`` (``"l2"`` or ``"rms"``)."""
    a = loaded.analysis
    examples = _check_examples(chosen if chosen is not None else list(range(min(a.num_examples, MAX_RIVER_DATAPATHS))), a.num_examples)
    if len(examples) < 2:
        raise HttpError(404, "the river needs two or more examples; this analysis has one")
    return river_answer(loaded, examples, normalization)


def treemap_impl(loaded: "run_reader.LoadedAnalysis", layer_name: str, chosen: Optional[List[int]],
                 diff: Optional[List[int]], width: int, height: int) -> Dict[str, Any]:
    """The ``treemap`` answer of one layer."""
    a = loaded.analysis
    layer = _layer_index(a, layer_name)
    examples = _check_examples(chosen if chosen is not None else default_treemap_examples(a), a.num_examples)
    pair = diff if diff is not None else (examples[:2] if len(examples) >= 2 else None)
    if pair is not None:
        _check_examples(pair, a.num_examples)
    return treemap_answer(a, layer, examples, pair, width, height)


def neuron_impl(loaded: "run_reader.LoadedAnalysis", layer_name: str, channel: int) -> Dict[str, Any]:
    """The ``neuron`` answer: one feature map in every example, and its learned features."""
    a = loaded.analysis
    layer = _layer_index(a, layer_name)
    _check_channel(a, layer, channel)
    analysis_query = {"run": loaded.run, "analysis": loaded.name, "method": loaded.method, "step": loaded.step}
    query = {**analysis_query, "layer": layer_name, "channel": channel}
    examples = []
    thresholds = a.thresholds()
    for i in range(a.num_examples):
        has_map = loaded.activation_maps is not None and loaded.activation_maps.has_map(layer, channel, i)
        examples.append({
            "example": i,
            "max_activation": None if a.max_activations is None else float(a.max_activations[layer][i, channel]),
            "gate": float(a.gates[layer][i, channel]),
            "in_datapath": bool(a.gates[layer][i, channel] > thresholds[i]),
            "stability": None if a.stability is None else float(a.stability[layer][i, channel]),
            "activation_map": f"activation_map?{urllib.parse.urlencode({**query, 'example': i})}" if has_map else None,
        })
    features = [
        {"rank": rank, "activation": box["activation"], "reference_image": box["image"], "box": box["box"],
         "url": f"learned_feature?{urllib.parse.urlencode({**query, 'rank': rank})}",
         "reference_url": f"reference_image?{urllib.parse.urlencode({**analysis_query, 'index': box['image']})}"}
        for rank, box in enumerate(_feature_boxes(loaded, layer, channel))
    ]
    return {"layer": layer_name, "layer_index": layer, "channel": channel, "examples": examples, "learned_features": features}


def activation_map_impl(loaded: "run_reader.LoadedAnalysis", layer_name: str, channel: int, example: int) -> Tuple[bytes, str]:
    """(grey PNG of one logged activation map, its value range ``"min,max"``)."""
    a = loaded.analysis
    layer = _layer_index(a, layer_name)
    _check_channel(a, layer, channel)
    _check_examples([example], a.num_examples)
    found = None if loaded.activation_maps is None else loaded.activation_maps.quantised_map(layer, channel, example)
    if found is None:
        raise HttpError(404, f"no activation map of channel {channel} at layer {layer_name!r}: maps are logged only for "
                             "feature maps in some datapath, and only when add_analysis had the model or activation maps")
    pixels, lo, hi = found
    return _png_grey(pixels), f"{lo!r},{hi!r}"


def learned_feature_impl(loaded: "run_reader.LoadedAnalysis", layer_name: str, channel: int, rank: int) -> bytes:
    """PNG of the ``rank``-th learned feature (receptive-field crop) of one feature map."""
    a = loaded.analysis
    layer = _layer_index(a, layer_name)
    _check_channel(a, layer, channel)
    boxes = _feature_boxes(loaded, layer, channel)
    if rank >= len(boxes):
        raise HttpError(404, f"channel {channel} of layer {layer_name!r} has {len(boxes)} learned features (ranks 0..{len(boxes) - 1}); got rank {rank}")
    return _crop_png(loaded, boxes[rank])


def _layer_index(analysis, name: str) -> int:
    for i, layer in enumerate(analysis.layers):
        if layer.name == name:
            return i
    listed = ", ".join(l.name for l in analysis.layers[:6])
    raise HttpError(404, f"unknown layer {shown(name)}; this analysis gates {len(analysis.layers)} layers: {listed}"
                         f"{', ...' if len(analysis.layers) > 6 else ''} (see the 'analysis' route)")


def _check_channel(analysis, layer: int, channel: int) -> None:
    channels = analysis.layers[layer].channels
    if channel >= channels:
        raise HttpError(404, f"channel {channel} does not exist: layer {analysis.layers[layer].name!r} has {channels} channels (0..{channels - 1})")


def _check_examples(examples: Sequence[int], n: int) -> List[int]:
    bad = [e for e in examples if e >= n]
    if bad:
        raise HttpError(404, f"example {bad[0]} does not exist: this analysis has {n} examples (0..{n - 1})")
    return list(examples)


def default_treemap_examples(analysis) -> List[int]:
    """The first source, adversarial and target example when all exist, else the first three."""
    firsts = [analysis.indices(role)[:1] for role in ("source", "adversarial", "target")]
    if all(firsts):
        return sorted(f[0] for f in firsts)
    return list(range(min(3, analysis.num_examples)))


def river_answer(loaded: "run_reader.LoadedAnalysis", examples: List[int], normalization: str = "l2") -> Dict[str, Any]:
    """The ``river`` answer for ``examples`` (indices into the analysis); distances and the
    diff curve are the logged L2 ones, divided by sqrt(C_l) for ``normalization="rms"``."""
    a = loaded.analysis
    L, n = len(a.layers), len(examples)
    per_layer = 1.0 / np.sqrt([max(1, l.channels) for l in a.layers]) if normalization == "rms" else np.ones(L)
    D = np.zeros((L, n, n))
    for p in range(n):
        for q in range(p + 1, n):
            i, j = sorted((examples[p], examples[q]))
            curve = loaded.distances.get(f"{i},{j}")
            if curve is None or len(curve) != L:
                raise HttpError(404, f"the logged analysis has no per-layer distance between examples {i} and {j}; re-log it")
            D[:, p, q] = D[:, q, p] = np.asarray(curve) * per_layer
    from tensorboard_plugin_aevis.layouts import river as river_layout  # scipy: imported on first use

    roles = [a.examples[e].role for e in examples]
    if sorted(roles) == ["adversarial", "source", "target"]:
        s, v, t = (roles.index(r) for r in ("source", "adversarial", "target"))
        layout = river_layout.rule_layout(D[:, s, t], D[:, v, s], D[:, v, t])
        y = np.empty((n, L))
        y[[s, v, t]] = layout.y
    else:
        layout = river_layout.least_squares_layout(D, order=river_layout.spectral_order(D, roles))
        y = layout.y
    markers = []
    dm = loaded.diverging_merging
    if dm:
        for kind in ("diverging", "merging"):
            if dm.get(f"{kind}_layer") is not None:
                markers.append({"kind": kind, "layer": int(dm[f"{kind}_layer"]), "detected": bool(dm.get("detected"))})
    return {
        "layers": [l.name for l in a.layers],
        "layout": layout.layout,
        "scale": layout.scale,
        "order": [examples[k] for k in layout.order],
        "paths": [{"example": e, "role": a.examples[e].role, "name": a.examples[e].name, "y": [round(float(v), 6) for v in y[k]]}
                  for k, e in enumerate(examples)],
        "normalization": normalization,
        "distances": {f"{min(i, j)},{max(i, j)}": (np.asarray(loaded.distances[f"{min(i, j)},{max(i, j)}"]) * per_layer).tolist()
                      for p, i in enumerate(examples) for j in examples[p + 1:]},
        "diff_curve": None if loaded.diff_curve is None else (np.asarray(loaded.diff_curve) * per_layer).tolist(),
        "markers": markers,
    }


def treemap_answer(analysis, layer: int, examples: List[int], diff: Optional[Sequence[int]], width: int, height: int) -> Dict[str, Any]:
    """The ``treemap`` answer: the layout of ``examples``' datapaths at ``layer``."""
    from tensorboard_plugin_aevis.layouts import treemap as treemap_layout

    binary = analysis.binary()[layer]
    tm = treemap_layout.build_treemap(binary[examples], width, height)
    names = [analysis.examples[e].name for e in examples]
    activation_diff = None
    if diff is not None and analysis.max_activations is not None:
        maxima = analysis.max_activations[layer]
        activation_diff = maxima[diff[0]] - maxima[diff[1]]

    def rect(r) -> Dict[str, float]:
        return {"x": round(r.x, 3), "y": round(r.y, 3), "dx": round(r.dx, 3), "dy": round(r.dy, 3)}

    stability = None if analysis.stability is None else analysis.stability[layer]
    cells = [{"channel": c.channel, "members": [examples[m] for m in c.members], **rect(c.rect),
              "activation_diff": None if activation_diff is None else float(activation_diff[c.channel]),
              "stability": None if stability is None else [round(float(stability[examples[m], c.channel]), 4) for m in c.members],
              "contribution": None} for c in tm.cells]
    shown = [abs(c["activation_diff"]) for c in cells if c["activation_diff"] is not None]
    return {
        "layer": analysis.layers[layer].name, "width": width, "height": height,
        "examples": examples, "diff": list(diff) if diff is not None else None,
        "containers": [{"example": examples[c.member], "label": names[c.member], "size": c.size,
                        "set_size": int(binary[examples[c.member]].sum()), **rect(c.rect)} for c in tm.containers],
        "sets": [{"members": [examples[m] for m in r.members], "label": " ∩ ".join(names[m] for m in r.members),
                  "size": len(r.channels), "parent": examples[r.owner], "shared": r.shared, **rect(r.rect)} for r in tm.regions],
        "cells": cells,
        "max_abs_activation_diff": max(shown) if shown else None,
    }


def _feature_boxes(loaded: "run_reader.LoadedAnalysis", layer: int, channel: int) -> List[Dict[str, Any]]:
    """The logged learned features of one feature map, best first: ``{"image", "activation",
    "box": [y0, x0, y1, x1]}`` (empty when none were logged; malformed entries skipped)."""
    boxes = []
    for hit in loaded.feature_hits(loaded.analysis.layers[layer].name, channel):
        try:
            image, activation, box = hit
            y0, x0, y1, x1 = (int(v) for v in box)
            boxes.append({"image": int(image), "activation": float(activation), "box": [y0, x0, y1, x1]})
        except (TypeError, ValueError):
            continue
    return boxes


def _crop_png(loaded: "run_reader.LoadedAnalysis", feature: Dict[str, Any]) -> bytes:
    """PNG of the receptive-field crop ``feature["box"]`` of reference image ``feature["image"]``
    (the logged PNG itself when the box covers the whole image, as it does in deep layers)."""
    index = feature["image"]
    if not 0 <= index < len(loaded.reference_image_pngs):
        raise HttpError(404, f"the learned feature refers to reference image {index}, which was not logged; re-log the analysis with reference_images")
    png = loaded.reference_image_pngs[index]
    try:
        image = Image.open(io.BytesIO(png))
        w, h = image.size
    except (OSError, ValueError):
        raise HttpError(404, f"reference image {index} is not a readable PNG; re-log the analysis") from None
    y0, x0, y1, x1 = feature["box"]
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if y1 <= y0 or x1 <= x0:
        raise HttpError(404, "the learned feature's box lies outside its reference image; re-log the analysis")
    if (y0, x0, y1, x1) == (0, 0, h, w):
        return png
    buffer = io.BytesIO()
    crop = image.crop((x0, y0, x1, y1))
    (crop if crop.mode in ("L", "RGB") else crop.convert("RGB")).save(buffer, format="PNG", compress_level=PNG_ANSWER_LEVEL)
    return buffer.getvalue()


def _png_grey(pixels: np.ndarray) -> bytes:
    """(h, w) uint8 -> grey-scale PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG", compress_level=PNG_ANSWER_LEVEL)
    return buffer.getvalue()
