"""The AEVis TensorBoard plugin: routes of ``http_api.md`` over TensorBoard's DataProvider.

Every route reads runs only through ``context.data_provider`` (so it works with the
default Rust data server), validates each parameter before use, answers JSON errors
``{"error": ...}`` with a 4xx status for bad input (never a traceback), and caches
computed answers in an LRU keyed on the request (experiment, route, parameters).
Layouts are computed here (``layouts/``); the dashboard only draws.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import io
import json
import logging
import os
import re
import threading
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from werkzeug import wrappers

from tensorboard import context as tb_context
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin

from tensorboard_plugin_aevis import datapath_metrics, metadata, run_reader
from tensorboard_plugin_aevis.analysis import METHODS
from tensorboard_plugin_aevis.layouts import river as river_layout
from tensorboard_plugin_aevis.layouts import treemap as treemap_layout

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_QUERY_BYTES = 8 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_STRING_PARAM = 1024
MAX_TREEMAP_DATAPATHS = 5
MAX_RIVER_DATAPATHS = 16
TREEMAP_SIZE_RANGE = (50, 4000)
CACHE_BYTES = 64 * 1024 * 1024
MAX_CONCURRENT_COMPUTATIONS = 4
BUSY_WAIT_SECONDS = 20.0
JSON_TYPE = "application/json"
PNG_TYPE = "image/png"
STATIC_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".map": JSON_TYPE,
                ".json": JSON_TYPE, ".svg": "image/svg+xml", ".png": PNG_TYPE, ".woff2": "font/woff2"}
STATIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


class HttpError(Exception):
    """An answer to a bad request: ``status`` and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def json_text(value: Any) -> str:
    """JSON with ``<``, ``>``, ``&`` escaped too, so no user string can read as markup;
    non-finite numbers (possible in a hand-edited logdir) become null."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(request: wrappers.Request, value: Any, status: int = 200, headers=None):
    return http_util.Respond(request, json_text(value), JSON_TYPE, code=status, headers=headers)


def error_response(request: wrappers.Request, status: int, message: str):
    return json_response(request, {"error": message}, status)


# ----------------------------------------------------------------- parameters
def _shown(value: str, limit: int = 60) -> str:
    """A user string for an error message (shortened; JSON escaping happens on output)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class Params:
    """Validated access to a request's query parameters; every failure is an HttpError(400)."""

    def __init__(self, args):
        self._args = args

    def string(self, name: str, default: Optional[str] = None) -> str:
        values = self._args.getlist(name)
        if not values:
            if default is not None:
                return default
            raise HttpError(400, f"missing parameter {name!r}: add ?{name}=... to the request")
        if len(values) > 1:
            raise HttpError(400, f"parameter {name!r} given {len(values)} times; give it once")
        value = values[0]
        if len(value) > MAX_STRING_PARAM:
            raise HttpError(400, f"parameter {name!r} is longer than {MAX_STRING_PARAM} characters")
        if "\x00" in value:
            raise HttpError(400, f"parameter {name!r} contains a NUL character")
        return value

    def integer(self, name: str, default: Optional[int] = None, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
        raw = self.string(name, None if default is None else str(default))
        text = raw.strip()
        if not (text.lstrip("-").isdigit() and text.lstrip("-").isascii() and len(text) <= 20):
            raise HttpError(400, f"parameter {name!r} must be an integer, got {_shown(raw)}")
        value = int(text)
        if not lo <= value <= hi:
            raise HttpError(400, f"parameter {name!r} must be between {lo} and {hi}, got {value}")
        return value

    def integers(self, name: str, default: Optional[Sequence[int]], min_count: int, max_count: int) -> Optional[List[int]]:
        """A comma-separated list of distinct non-negative integers (or ``default``)."""
        if not self._args.getlist(name):
            return None if default is None else list(default)
        raw = self.string(name)
        parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
        if not all(p.isdigit() and p.isascii() and len(p) <= 9 for p in parts):
            raise HttpError(400, f"parameter {name!r} must be comma-separated example indices like 0,1,2, got {_shown(raw)}")
        values = [int(p) for p in parts]
        if len(set(values)) != len(values):
            raise HttpError(400, f"parameter {name!r} repeats an index ({_shown(raw)}); give each example once")
        if not min_count <= len(values) <= max_count:
            raise HttpError(400, f"parameter {name!r} needs {min_count} to {max_count} indices, got {len(values)}")
        return values

    def method(self) -> str:
        value = self.string("method")
        if value not in METHODS:
            raise HttpError(400, f"parameter 'method' must be one of {', '.join(METHODS)}, got {_shown(value)}")
        return value


# ----------------------------------------------------------------- caching
class ByteLRU:
    """Thread-safe LRU of computed answers (str or bytes), bounded by their total size."""

    def __init__(self, max_bytes: int):
        self._items: "collections.OrderedDict[tuple, Tuple[Any, int]]" = collections.OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: tuple, value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self._max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self._max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]


def _size(value: Any) -> int:
    if isinstance(value, tuple):
        return sum(_size(v) for v in value)
    return len(value) if isinstance(value, (str, bytes)) else 64


# ----------------------------------------------------------------- the plugin
ContributionHandler = Callable[[Dict[str, Any], Callable[[str, str, str, int], "run_reader.LoadedAnalysis"]], Dict[str, Any]]


class AEVisPlugin(base_plugin.TBPlugin):
    """The "AEVis" dashboard tab and its data routes (``http_api.md``)."""

    plugin_name = metadata.PLUGIN_NAME

    #: Extension point for ``POST contribution``: ``handler(payload, load) -> dict`` where
    #: ``payload`` is the request's JSON object and ``load(run, analysis, method, step)``
    #: returns a ``run_reader.LoadedAnalysis`` (raising HttpError 404 when unknown). The
    #: handler raises HttpError (4xx / 429 / 503), ValueError (-> 400) or LookupError
    #: (-> 404) for requests it refuses. When None, the plugin uses
    #: ``tensorboard_plugin_aevis.contribution_service.handle_contribution`` if that module
    #: exists, else answers 501.
    contribution_handler: Optional[ContributionHandler] = None

    def __init__(self, context: base_plugin.TBContext):
        self._data_provider = context.data_provider
        self._logdir = context.logdir
        self._cache = ByteLRU(CACHE_BYTES)
        self._computing = threading.BoundedSemaphore(MAX_CONCURRENT_COMPUTATIONS)

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
        try:
            return compute()
        except HttpError as e:
            return error_response(request, e.status, e.message)
        except run_reader.AnalysisReadError as e:  # a part read on first use is damaged
            return error_response(request, 404, str(e))
        except Exception:  # a bug, not bad input: log it, never show the traceback
            logger.exception("AEVis route %s failed", request.path)
            return error_response(request, 500, "internal error in the AEVis plugin; see the TensorBoard log")

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, or ``compute()`` under the concurrency bound."""
        found = self._cache.get(key)
        if found is not None:
            return found
        if not self._computing.acquire(timeout=BUSY_WAIT_SECONDS):
            raise HttpError(503, "the AEVis plugin is busy computing other answers; retry in a few seconds")
        try:
            value = compute()
        finally:
            self._computing.release()
        self._cache.put(key, value, _size(value))
        return value

    def _load(self, request: wrappers.Request, run: str, name: str, method: str, step: int) -> "run_reader.LoadedAnalysis":
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        try:
            return run_reader.load_analysis(self._data_provider, ctx, eid, run, name, method, step, logdir=self._logdir)
        except run_reader.AnalysisNotFoundError:
            raise HttpError(404, f"no analysis {name!r} with method {method!r} at step {step} in run {run!r}; "
                                 "see the 'runs' route for what exists") from None
        except run_reader.AnalysisReadError as e:
            raise HttpError(404, str(e)) from None

    def _analysis_key(self, request: wrappers.Request, params: Params) -> Tuple[str, str, str, str, int]:
        """(experiment id, run, analysis, method, step) of a request about one analysis."""
        return (plugin_util.experiment_id(request.environ), params.string("run"), params.string("analysis"),
                params.method(), params.integer("step", lo=0))

    def _loaded(self, request: wrappers.Request, key: Tuple[str, str, str, str, int]) -> "run_reader.LoadedAnalysis":
        return self._load(request, *key[1:])

    # ------------------------------------------------------------ routes
    def _runs(self, request: wrappers.Request, params: Params):
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        index = run_reader.index_runs(self._data_provider, ctx, eid)
        runs = [
            {"run": run, "analyses": [{"name": k.name, "method": k.method, "steps": list(k.steps)} for k in keys]}
            for run, keys in sorted(index.analyses.items())
        ]
        return json_response(request, {"runs": runs, "warnings": index.warnings})

    def _analysis(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)

        def compute() -> str:
            loaded = self._loaded(request, key)
            a, m = loaded.analysis, loaded.manifest
            kept = m.get("kept_fraction") or a.kept_fraction().tolist()
            examples = []
            for i, e in enumerate(a.examples):
                record = {"index": i, **dataclasses.asdict(e), "label_preserved": e.label_preserved,
                          "kept_fraction": kept[i]}
                examples.append(record)
            return json_text({
                "run": key[1], "analysis": key[2], "method": key[3], "step": key[4],
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
            })

        return http_util.Respond(request, self._cached(("analysis",) + key, compute), JSON_TYPE)

    def _image(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        example = params.integer("example", lo=0)
        loaded = self._loaded(request, key)
        if example >= len(loaded.image_pngs):
            raise HttpError(404, f"example {example} does not exist: this analysis has {len(loaded.image_pngs)} examples (0..{len(loaded.image_pngs) - 1})")
        return http_util.Respond(request, loaded.image_pngs[example], PNG_TYPE)

    def _graph(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)

        def compute() -> str:
            loaded = self._loaded(request, key)
            if loaded.graph is None:
                raise HttpError(404, "no model graph was logged for this analysis: pass model=... to add_analysis")
            return json_text(loaded.graph)

        return http_util.Respond(request, self._cached(("graph",) + key, compute), JSON_TYPE)

    def _river(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        chosen = params.integers("examples", None, 2, MAX_RIVER_DATAPATHS)
        normalization = params.string("normalization", "l2")
        if normalization not in datapath_metrics.NORMALIZATIONS:
            raise HttpError(400, f"normalization {_shown(normalization)!r} is unknown; use one of {', '.join(datapath_metrics.NORMALIZATIONS)}")

        def compute() -> str:
            loaded = self._loaded(request, key)
            a = loaded.analysis
            examples = _check_examples(chosen if chosen is not None else list(range(min(a.num_examples, MAX_RIVER_DATAPATHS))), a.num_examples)
            if len(examples) < 2:
                raise HttpError(404, "the river needs two or more examples; this analysis has one")
            return json_text(river_answer(loaded, examples, normalization))

        return http_util.Respond(request, self._cached(("river",) + key + (tuple(chosen or ()), normalization), compute), JSON_TYPE)

    def _treemap(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        layer_name = params.string("layer")
        chosen = params.integers("examples", None, 1, MAX_TREEMAP_DATAPATHS)
        diff = params.integers("diff", None, 2, 2)
        width = params.integer("width", 600, *TREEMAP_SIZE_RANGE)
        height = params.integer("height", 400, *TREEMAP_SIZE_RANGE)

        def compute() -> str:
            loaded = self._loaded(request, key)
            a = loaded.analysis
            layer = _layer_index(a, layer_name)
            examples = _check_examples(chosen if chosen is not None else default_treemap_examples(a), a.num_examples)
            pair = diff if diff is not None else (examples[:2] if len(examples) >= 2 else None)
            if pair is not None:
                _check_examples(pair, a.num_examples)
            return json_text(treemap_answer(a, layer, examples, pair, width, height))

        cache_key = ("treemap",) + key + (layer_name, tuple(chosen or ()), tuple(diff or ()), width, height)
        body = self._cached(cache_key, compute)
        return http_util.Respond(request, body, JSON_TYPE)

    def _neuron(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)

        def compute() -> str:
            loaded = self._loaded(request, key)
            a = loaded.analysis
            layer = _layer_index(a, layer_name)
            _check_channel(a, layer, channel)
            analysis_query = {"run": key[1], "analysis": key[2], "method": key[3], "step": key[4]}
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
                    "activation_map": f"activation_map?{urllib.parse.urlencode({**query, 'example': i})}" if has_map else None,
                })
            features = [
                {"rank": rank, "activation": box["activation"], "reference_image": box["image"], "box": box["box"],
                 "url": f"learned_feature?{urllib.parse.urlencode({**query, 'rank': rank})}",
                 "reference_url": f"reference_image?{urllib.parse.urlencode({**analysis_query, 'index': box['image']})}"}
                for rank, box in enumerate(_feature_boxes(loaded, layer, channel))
            ]
            return json_text({"layer": layer_name, "layer_index": layer, "channel": channel,
                              "examples": examples, "learned_features": features})

        return http_util.Respond(request, self._cached(("neuron",) + key + (layer_name, channel), compute), JSON_TYPE)

    def _activation_map(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)
        example = params.integer("example", lo=0)

        def compute() -> Tuple[bytes, str]:
            loaded = self._loaded(request, key)
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

        png, value_range = self._cached(("activation_map",) + key + (layer_name, channel, example), compute)
        return http_util.Respond(request, png, PNG_TYPE, headers=[("X-AEVis-Range", value_range)])

    def _learned_feature(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        layer_name = params.string("layer")
        channel = params.integer("channel", lo=0)
        rank = params.integer("rank", lo=0)

        def compute() -> bytes:
            loaded = self._loaded(request, key)
            a = loaded.analysis
            layer = _layer_index(a, layer_name)
            _check_channel(a, layer, channel)
            boxes = _feature_boxes(loaded, layer, channel)
            if rank >= len(boxes):
                raise HttpError(404, f"channel {channel} of layer {layer_name!r} has {len(boxes)} learned features (ranks 0..{len(boxes) - 1}); got rank {rank}")
            return _crop_png(loaded, boxes[rank])

        return http_util.Respond(request, self._cached(("learned_feature",) + key + (layer_name, channel, rank), compute), PNG_TYPE)

    def _reference_image(self, request: wrappers.Request, params: Params):
        key = self._analysis_key(request, params)
        index = params.integer("index", lo=0)
        loaded = self._loaded(request, key)
        count = len(loaded.reference_image_pngs)
        if index >= count:
            raise HttpError(404, f"reference image {index} was not logged: this analysis has {count} reference images"
                                 + (f" (0..{count - 1})" if count else "; log them with add_analysis(..., reference_images=...)"))
        return http_util.Respond(request, loaded.reference_image_pngs[index], PNG_TYPE)

    def _contribution(self, request: wrappers.Request):
        handler = self.contribution_handler or _service_handler()
        if handler is None:
            raise HttpError(501, "contribution analysis is not available in this installation "
                                 "(tensorboard_plugin_aevis.contribution_service is missing)")
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

        try:
            answer = handler(payload, load)
        except HttpError:
            raise
        except LookupError as e:
            raise HttpError(404, str(e)) from None
        except (ValueError, TypeError) as e:
            raise HttpError(400, str(e)) from None
        return json_response(request, answer)

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
        return http_util.Respond(request, content, STATIC_TYPES[ext])


# ----------------------------------------------------------------- answers
def _service_handler() -> Optional[ContributionHandler]:
    """``contribution_service.handle_contribution`` when that module is installed."""
    try:
        module = importlib.import_module("tensorboard_plugin_aevis.contribution_service")
    except ModuleNotFoundError as e:
        if e.name == "tensorboard_plugin_aevis.contribution_service":
            return None
        raise
    return getattr(module, "handle_contribution", None)


def _layer_index(analysis, name: str) -> int:
    for i, layer in enumerate(analysis.layers):
        if layer.name == name:
            return i
    shown = ", ".join(l.name for l in analysis.layers[:6])
    raise HttpError(404, f"unknown layer {_shown(name)}; this analysis gates {len(analysis.layers)} layers: {shown}"
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
    binary = analysis.binary()[layer]
    tm = treemap_layout.build_treemap(binary[examples], width, height)
    names = [analysis.examples[e].name for e in examples]
    activation_diff = None
    if diff is not None and analysis.max_activations is not None:
        maxima = analysis.max_activations[layer]
        activation_diff = maxima[diff[0]] - maxima[diff[1]]

    def rect(r) -> Dict[str, float]:
        return {"x": round(r.x, 3), "y": round(r.y, 3), "dx": round(r.dx, 3), "dy": round(r.dy, 3)}

    cells = [{"channel": c.channel, "members": [examples[m] for m in c.members], **rect(c.rect),
              "activation_diff": None if activation_diff is None else float(activation_diff[c.channel]),
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
    """PNG of the receptive-field crop ``feature["box"]`` of reference image ``feature["image"]``."""
    from summary_writers.codec import encode_png

    index = feature["image"]
    if not 0 <= index < len(loaded.reference_image_pngs):
        raise HttpError(404, f"the learned feature refers to reference image {index}, which was not logged; re-log the analysis with reference_images")
    image = loaded.reference_image(index)
    y0, x0, y1, x1 = feature["box"]
    h, w = image.shape[1:]
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if y1 <= y0 or x1 <= x0:
        raise HttpError(404, "the learned feature's box lies outside its reference image; re-log the analysis")
    return encode_png(image[:, y0:y1, x0:x1])


def _png_grey(pixels: np.ndarray) -> bytes:
    """(h, w) uint8 -> grey-scale PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
