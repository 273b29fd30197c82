"""The backend side of contribution analysis: one request in, ``(status, JSON body)`` out.

:class:`ContributionService` validates the request parameters, reads the analysis
(its example images) through a ``load(run, analysis, method, step)`` callable (the
plugin's, or :func:`provider_loader` over a DataProvider, both :mod:`run_reader`),
loads the model artifact the writer saved (:func:`model_artifact.load_model_artifact`:
weights with ``weights_only=True``, a checked ``torch.export`` program; nothing from
the logdir is executed) and runs :mod:`contribution` with bounded work:

- at most ``max_concurrent`` jobs at a time; a request beyond that is answered 429
  at once (it does not queue);
- every job has a deadline of ``timeout_s`` seconds from when its model is ready (the
  one read of an artifact, which other requests may be waiting for, is not counted),
  checked between optimiser steps: past it the job stops and is answered 503;
- results are cached (LRU, ``cache_size`` entries) keyed by the normalised request
  and the artifact's modification time; a cached answer has ``"cached": true``;
- a job runs torch on the cores no other task holds when it starts
  (:func:`cpu_share.torch_threads`; ``"threads"`` in the answer).

Models are read once per artifact (path and modification time) and server: simultaneous
requests for one artifact wait for its one read (``model_artifact`` serialises torch's
deserializer process-wide). A job borrows an instance no other job is using, a module
made from the read program (``model_artifact.module_from_program``: its own submodules,
the program's weight tensors), so two jobs never put hooks on the same module. Each instance keeps a few :class:`contribution.ContributionSession` s (per
examples, earlier and target layer): the next request on the same layers (another
channel, area or mode) skips the forward pass up to the earlier layer. What the pool
keeps is bounded: ``max_artifacts`` models (each with at most ``max_concurrent``
instances sharing its weights) and ``sessions_per_model`` sessions per instance.

:func:`handle_contribution` is the plugin's ``POST contribution`` extension point
(``aevis_plugin.AEVisPlugin.contribution_handler``): one process-wide service.

Request parameters (a dict, e.g. the JSON body of ``POST contribution``):

=================  ====================================================================
``run``            run name                                                  (required)
``analysis``       analysis name                                             (required)
``method``         ``constrained`` or ``dgr``                                (required)
``step``           integer step                                              (required)
``target``         ``feature_map`` (default, Eq. 7/8) or ``prediction``
``target_layer``   module path of the target map (e.g. a gated layer's name)
``channel``        feature map index in ``target_layer``
``area``           optional ``[y0, x0, y1, x1]`` or ``"y0,x0,y1,x1"``, half-open
``area_mask``      optional 2-D list of 0/1 (a neuron mask); exclusive with ``area``
``area_grid``      optional ``[h, w]``: the grid ``area`` / ``area_mask`` is given in
                   (e.g. the shown activation-map image); default the target map's own
``earlier_layer``  module path of the earlier layer (the prediction case: the layer)
``examples``       example indices (the datapaths analysed together; one alone is
                   allowed), default all
``mode``           ``sgd`` (default) or ``quadratic``
``lambda``, ``gamma``, ``steps``  optional engine parameters
``top``            length of the ranked list (default 10)
=================  ====================================================================
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tensorboard_plugin_aevis import cpu_share, model_artifact, run_reader
from tensorboard_plugin_aevis.bounded_cache import ByteLRU
from tensorboard_plugin_aevis.http_common import BodyParams, HttpError

logger = logging.getLogger(__name__)
# One contribution job computes at a time: torch.fx tracing (contribution.lca_graph) patches
# nn.Module.__call__ process-wide, so another thread's forward pass would run through the tracer.
_COMPUTE_LOCK = threading.Lock()

MAX_STEPS = 500
MAX_AREA_GRID = 4096
DEFAULT_TOP = 10
SCORE_MEANING = (
    "A map's score is its fitted gate averaged over the chosen examples (paper Eq. 7/8): the share of that "
    "earlier feature map needed to keep the target, from 0 (not needed) to 1 (fully needed); maps tied at 0 or 1 "
    "are ordered by how much the fit's loss would change if their gate moved, so the order is meaningful."
)


def _area(params: BodyParams, height: int, width: int) -> Tuple[Any, Tuple]:
    """(area for the engine, hashable key): a rectangle or a boolean mask in the target map's grid."""
    rect = params.integers("area", count=4)
    mask_value = params.raw("area_mask") if params.present("area_mask") else None
    if rect is not None and mask_value is not None:
        raise HttpError(400, "give either 'area' (a rectangle) or 'area_mask' (a neuron mask), not both")
    grid = params.integers("area_grid", count=2) or [height, width]
    if not all(1 <= g <= MAX_AREA_GRID for g in grid):
        raise HttpError(400, f"'area_grid' must be two sizes between 1 and {MAX_AREA_GRID}, got {grid}")
    gh, gw = grid
    if rect is not None:
        y0, x0, y1, x1 = rect
        if not (0 <= y0 < y1 <= gh and 0 <= x0 < x1 <= gw):
            raise HttpError(
                400, f"area (y0={y0}, x0={x0}, y1={y1}, x1={x1}) is outside the {gh}x{gw} grid or empty; "
                f"need 0 <= y0 < y1 <= {gh} and 0 <= x0 < x1 <= {gw} (half-open, in the grid of 'area_grid')"
            )
        scaled = (y0 * height // gh, x0 * width // gw, -(-y1 * height // gh), -(-x1 * width // gw))
        return scaled, ("rect",) + scaled
    if mask_value is None:
        return None, ("whole",)
    try:
        mask = np.asarray(mask_value, dtype=np.float64)
    except (TypeError, ValueError):
        raise HttpError(400, "'area_mask' must be a 2-D list of 0/1 values") from None
    if mask.ndim != 2 or tuple(mask.shape) != (gh, gw):
        raise HttpError(400, f"'area_mask' has shape {tuple(mask.shape)}; expected {gh}x{gw} (the 'area_grid', default the target map)")
    selected = mask > 0
    if not selected.any():
        raise HttpError(400, "'area_mask' selects no neuron; select at least one")
    rows = (np.arange(height) * gh) // height  # nearest-lower cell of the given grid for every target neuron
    cols = (np.arange(width) * gw) // width
    resampled = selected[np.ix_(rows, cols)]
    if not resampled.any():
        raise HttpError(400, "'area_mask' selects no neuron once mapped onto the target map; select a larger area")
    return resampled, ("mask", resampled.shape, np.packbits(resampled).tobytes())


# ------------------------------------------------------------------- model pool
class _Worker:
    """One instance of a loaded model and the sessions prepared on it; one job at a time uses it."""

    def __init__(self, model, max_sessions: int):
        self.model, self._max_sessions = model, max_sessions
        self.sessions: "collections.OrderedDict[Tuple, Any]" = collections.OrderedDict()

    def session(self, key: Tuple, images, earlier_layer: str, target_layer: Optional[str], deadline: float):
        """The prepared session for ``key`` (examples, earlier layer, target layer), made on first use."""
        from tensorboard_plugin_aevis import contribution

        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        session = contribution.ContributionSession(self.model, images, earlier_layer, target_layer, deadline=deadline)
        self.sessions[key] = session
        while len(self.sessions) > self._max_sessions:
            self.sessions.popitem(last=False)
        return session


class _LoadedArtifact:
    """One artifact read once (its program) and its free instances (modules made from the program)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.program: Optional[model_artifact.ArtifactProgram] = None
        self.free: List[_Worker] = []


class _WorkerPool:
    """Loaded artifacts keyed by (path, mtime); :meth:`borrow` prefers a free instance holding the wanted session."""

    def __init__(self, max_artifacts: int = 4, per_artifact: int = 2, sessions_per_model: int = 4):
        self._artifacts: "collections.OrderedDict[Tuple[str, float], _LoadedArtifact]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._max_artifacts, self._per_artifact, self._sessions = max_artifacts, per_artifact, sessions_per_model

    def _entry(self, artifact: Tuple[str, float]) -> _LoadedArtifact:
        with self._lock:
            entry = self._artifacts.get(artifact)
            if entry is None:
                entry = self._artifacts[artifact] = _LoadedArtifact()
            self._artifacts.move_to_end(artifact)
            while len(self._artifacts) > self._max_artifacts:
                self._artifacts.popitem(last=False)
            return entry

    def load(self, artifact: Tuple[str, float]) -> "model_artifact.ArtifactProgram":
        """The artifact's program, read on first use (simultaneous callers share one read)."""
        entry = self._entry(artifact)
        with entry.lock:
            if entry.program is None:
                entry.program = model_artifact.read_program(artifact[0])
            return entry.program

    def prepare(self, artifact: Tuple[str, float]) -> None:
        """Read the artifact and make one instance ahead (kept free) unless one is free already."""
        entry, program = self._entry(artifact), self.load(artifact)
        with self._lock:
            if entry.free:
                return
        worker = _Worker(model_artifact.module_from_program(program), self._sessions)
        self.give_back(artifact, worker)

    def borrow(self, artifact: Tuple[str, float], session_key: Tuple) -> _Worker:
        entry = self._entry(artifact)
        with self._lock:
            if entry.free:
                ready = [i for i, w in enumerate(entry.free) if session_key in w.sessions]
                return entry.free.pop(ready[-1] if ready else -1)
        return _Worker(model_artifact.module_from_program(self.load(artifact)), self._sessions)

    def give_back(self, artifact: Tuple[str, float], worker: _Worker) -> None:
        with self._lock:
            entry = self._artifacts.get(artifact)
            if entry is not None and len(entry.free) < self._per_artifact:
                entry.free.append(worker)


# ----------------------------------------------------------------------- service
Loader = Callable[[str, str, str, int], run_reader.LoadedAnalysis]


def provider_loader(data_provider, logdir: Optional[str], ctx=None, experiment_id: str = "") -> Loader:
    """``load(run, analysis, method, step)`` over a DataProvider; ``logdir`` locates model artifacts."""

    def load(run: str, name: str, method: str, step: int) -> run_reader.LoadedAnalysis:
        try:
            return run_reader.load_analysis(data_provider, ctx, experiment_id, run, name, method, step, logdir=logdir)
        except run_reader.AnalysisNotFoundError as exc:
            raise HttpError(404, str(exc)) from exc
        except run_reader.AnalysisReadError as exc:
            raise HttpError(409, str(exc)) from exc

    return load


class ContributionService:
    """Answers contribution requests; ``handle(params, load) -> (status, body)``.

    ``load(run, analysis, method, step)`` returns a ``run_reader.LoadedAnalysis`` or
    raises :class:`HttpError` (4xx). ``handle`` never raises for bad input.
    """

    def __init__(self, max_concurrent: int = 2, timeout_s: float = 30.0, cache_size: int = 64):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.max_concurrent, self.timeout_s = max_concurrent, float(timeout_s)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._cache = ByteLRU(cache_size)  # each answer counts 1: at most cache_size answers
        self._workers = _WorkerPool(per_artifact=max_concurrent)

    def handle(self, params: Dict[str, Any], load: Loader) -> Tuple[int, Dict[str, Any]]:
        """Validate, compute (or take from the cache) and answer one request."""
        from tensorboard_plugin_aevis import contribution

        if not isinstance(params, dict):
            return 400, {"error": "the request body must be a JSON object of parameters"}
        if not self._slots.acquire(blocking=False):
            return 429, {"error": f"{self.max_concurrent} contribution analyses are already running; retry in a few seconds"}
        try:
            return 200, self._answer(BodyParams(params), load)
        except HttpError as exc:
            return exc.status, {"error": exc.message}
        except contribution.ContributionTimeout:
            return 503, {"error": f"the contribution analysis took longer than {self.timeout_s:g} s and was stopped; "
                                  "use mode 'quadratic', a smaller area, fewer examples or fewer steps"}
        except RuntimeError as exc:  # the model itself failed (e.g. an input size it cannot take)
            return 422, {"error": f"the saved model failed while computing contributions: {str(exc).splitlines()[0][:300]}; "
                                  "pick other layers, or re-log the analysis with a model that runs on its images"}
        finally:
            self._slots.release()

    def warm(self, loaded: run_reader.LoadedAnalysis) -> None:
        """Read the model of ``loaded`` and make one instance of it now (in the background, when an
        analysis is opened), so the first contribution request waits for neither; failures are left
        for that request to report."""
        try:
            self._workers.prepare(_artifact_key(loaded, loaded.run, loaded.name))
        except Exception:  # noqa: BLE001 - whatever failed is answered to the request that needs the model
            logger.debug("reading the model of %r ahead failed", loaded.name, exc_info=True)

    # ------------------------------------------------------------------ work
    def _answer(self, params: BodyParams, load: Loader) -> Dict[str, Any]:
        from tensorboard_plugin_aevis import contribution

        run, name = params.string("run"), params.string("analysis")
        method, step = params.string("method"), params.integer("step", 0, 2**63 - 1)
        target = params.choice("target", ("feature_map", "prediction"), "feature_map")
        mode = params.choice("mode", contribution.MODES, "sgd")
        earlier_layer = params.string("earlier_layer")
        lambda_ = params.number("lambda", contribution.DEFAULT_LAMBDA, 0.0, 1e6)
        gamma = params.number("gamma", contribution.DEFAULT_GAMMA, 0.0, 1e6)
        steps = params.integer("steps", 1, MAX_STEPS, contribution.DEFAULT_STEPS)
        top = params.integer("top", 1, 100_000, DEFAULT_TOP)

        loaded = load(run, name, method, step)
        analysis = loaded.analysis
        examples = params.integers("examples") or list(range(analysis.num_examples))
        bad = [i for i in examples if not 0 <= i < analysis.num_examples]
        if bad or len(set(examples)) != len(examples):
            raise HttpError(404 if bad else 400, f"examples {examples} must be distinct indices in 0..{analysis.num_examples - 1}")
        artifact_key = _artifact_key(loaded, run, name)

        layers = {l.name: l for l in analysis.layers}
        target_layer, channel, area, area_key = None, None, None, ("prediction",)
        if target == "feature_map":
            target_layer = params.string("target_layer")
            channel = params.integer("channel", 0, 2**31)
            record = layers.get(target_layer)
            if record is not None:
                if channel >= record.channels:
                    raise HttpError(404, f"channel {channel} does not exist in layer {target_layer!r}: it has {record.channels} feature maps")
                area, area_key = _area(params, record.height, record.width)
            elif params.present("area") or params.present("area_mask"):
                raise HttpError(400, f"an area needs a gated target layer (one of the analysis' layers) so its grid is known; {target_layer!r} is not one")

        key = (run, name, method, step, artifact_key, target_layer, channel, area_key, earlier_layer, tuple(examples), mode, lambda_, gamma, steps)
        cached = self._cache.get(key)
        if cached is not None:
            return _ranked(cached, loaded, top, cached=True)

        images = _torch_images(analysis.images[examples])
        session_key = (tuple(examples), earlier_layer, target_layer)
        try:
            worker = self._workers.borrow(artifact_key, session_key)
        except model_artifact.ModelArtifactError as exc:
            raise HttpError(409, str(exc)) from exc
        try:
            # torch.fx tracing patches nn.Module.__call__ for every thread; torch's thread count is process-wide
            with _COMPUTE_LOCK, cpu_share.torch_threads() as threads:
                options = contribution.ContributionOptions(mode=mode, lambda_=lambda_, gamma=gamma, steps=steps,
                                                           deadline=time.monotonic() + self.timeout_s)
                result = self._compute(worker, layers, images, session_key, (target, channel, area), options)
        finally:
            self._workers.give_back(artifact_key, worker)
        body = result.to_json()
        body.update(run=run, analysis=name, method=method, step=step, target=target, examples=examples,
                    example_names=[analysis.examples[i].name for i in examples], warnings=list(loaded.warnings),
                    score_meaning=SCORE_MEANING, threads=threads)
        self._cache.put(key, body, 1)
        return _ranked(body, loaded, top, cached=False)

    def _compute(self, worker: _Worker, layers: Dict[str, Any], images, session_key: Tuple, query: Tuple, options) -> Any:
        """Run one job on ``worker``'s model: ``query`` is (target, channel, area), ``session_key``
        (examples, earlier layer, target layer), ``options`` a ContributionOptions whose deadline
        starts when the job gets the model. Returns the ContributionResult; raises HttpError 400/404."""
        target, channel, area = query
        _, earlier_layer, target_layer = session_key
        known = {n for n, _ in worker.model.named_modules()}
        for what, path in (("earlier layer", earlier_layer), ("target layer", target_layer)):
            if path is not None and path not in known:
                gated = ", ".join(list(layers)[:8])
                raise HttpError(404, f"unknown {what} {path!r}: the saved model has no module with that path (the analysis gates: {gated})")
        try:
            session = worker.session(session_key, images, earlier_layer, target_layer, options.deadline)
            if target == "prediction":
                return session.prediction(options)
            return session.feature_map(channel, area, options)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, str(exc)) from exc


def _torch_images(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def _ranked(body: Dict[str, Any], loaded: run_reader.LoadedAnalysis, top: int, cached: bool) -> Dict[str, Any]:
    """The answer with its ``ranking`` cut to ``top`` entries, each with its rank, the examples whose
    datapath holds it, and the URLs (relative to the data root) of its neuron view, an activation
    map and its best learned feature (null when the analysis has none for it)."""
    analysis = loaded.analysis
    layer = next((i for i, l in enumerate(analysis.layers) if l.name == body["earlier_layer"]), None)
    binary = analysis.binary()[layer] if layer is not None else None
    query = {"run": loaded.run, "analysis": loaded.name, "method": loaded.method, "step": loaded.step, "layer": body["earlier_layer"]}
    ranking = []
    for rank, entry in enumerate(body["ranking"][:top]):
        c = int(entry["channel"])
        channel_query = {**query, "channel": c}
        with_map = None
        if layer is not None and loaded.activation_maps is not None:
            try:
                with_map = next((e for e in body["examples"] if loaded.activation_maps.has_map(layer, c, e)), None)
            except run_reader.AnalysisReadError:  # damaged maps: the entry has none (the neuron view says why)
                with_map = None
        ranking.append({
            "channel": c, "score": entry["score"], "rank": rank,
            "in_datapaths": [] if binary is None or c >= binary.shape[1] else [int(i) for i in np.flatnonzero(binary[:, c])],
            "neuron": f"neuron?{urllib.parse.urlencode(channel_query)}" if layer is not None else None,
            "activation_map": None if with_map is None else f"activation_map?{urllib.parse.urlencode({**channel_query, 'example': with_map})}",
            "learned_feature": (f"learned_feature?{urllib.parse.urlencode({**channel_query, 'rank': 0})}"
                                if layer is not None and c < analysis.layers[layer].channels and loaded.feature_hits(body["earlier_layer"], c)
                                else None),
        })
    return dict(body, cached=cached, ranking=ranking)


def _artifact_key(loaded: run_reader.LoadedAnalysis, run: str, name: str) -> Tuple[str, float]:
    path = loaded.model_artifact
    if path is None:
        detail = "; ".join(w for w in loaded.warnings if "model" in w)
        raise HttpError(
            409, f"analysis {name!r} in run {run!r} has no saved model, so contributions cannot be computed"
            f"{': ' + detail if detail else ''}; log it with add_analysis(..., model=model, save_model=True)"
        )
    try:
        mtime = os.path.getmtime(os.path.join(path, model_artifact.META_FILE))
    except OSError:
        raise HttpError(409, f"the model artifact of analysis {name!r} at {path} disappeared or cannot be read; re-log the analysis") from None
    return path, mtime


_default_service: Optional[ContributionService] = None
_default_lock = threading.Lock()


def default_service() -> ContributionService:
    """The process-wide service the plugin's route uses."""
    global _default_service
    with _default_lock:
        if _default_service is None:
            _default_service = ContributionService()
        return _default_service


def handle_contribution(payload: Dict[str, Any], load: Loader) -> Dict[str, Any]:
    """The plugin's ``POST contribution`` handler: the answer body, or HttpError."""
    status, body = default_service().handle(payload, load)
    if status != 200:
        raise HttpError(status, body["error"])
    return body
