"""The backend side of contribution analysis: one request in, ``(status, JSON body)`` out.

:class:`ContributionService` validates the request parameters, reads the analysis
(its example images) through a ``load(run, analysis, method, step)`` callable (the
plugin's, or :func:`provider_loader` over a DataProvider, both :mod:`run_reader`),
loads the model artifact the writer saved (:func:`model_artifact.load_model_artifact`:
weights with ``weights_only=True``, a checked ``torch.export`` program; nothing from
the logdir is executed) and runs :mod:`contribution` with bounded work:

- at most ``max_concurrent`` jobs at a time; a request beyond that is answered 429
  at once (it does not queue);
- every job has a deadline of ``timeout_s`` seconds (model loading included),
  checked between optimiser steps: past it the job stops and is answered 503;
- results are cached (LRU, ``cache_size`` entries) keyed by the normalised request
  and the artifact's modification time; a cached answer has ``"cached": true``.

Loaded models are pooled per artifact: a job borrows an instance no other job is using
(or loads one), so two jobs never put hooks on the same module. Each instance keeps
a few :class:`contribution.ContributionSession` s (per examples, earlier and target
layer): the next request on the same layers (another channel, area or mode) skips
the forward pass up to the earlier layer.

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
``examples``       example indices (the datapaths analysed together), default all
``mode``           ``sgd`` (default) or ``quadratic``
``lambda``, ``gamma``, ``steps``  optional engine parameters
``top``            length of the ranked list (default 20)
=================  ====================================================================
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from tensorboard_plugin_aevis import contribution, model_artifact, run_reader

MAX_STEPS = 500
MAX_AREA_GRID = 4096


class RequestError(ValueError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------- parameters
def _present(params: Dict[str, Any], name: str) -> bool:
    """False for a missing parameter, null, an empty string or an empty list (all mean: the default)."""
    value = params.get(name)
    return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)


def _string(params: Dict[str, Any], name: str, default: Optional[str] = None) -> str:
    if not _present(params, name):
        if default is None:
            raise RequestError(400, f"missing parameter {name!r}")
        return default
    value = params[name]
    if not isinstance(value, str):
        raise RequestError(400, f"parameter {name!r} must be a string, got {type(value).__name__}")
    return value


def _integer(params: Dict[str, Any], name: str, lo: int, hi: int, default: Optional[int] = None) -> int:
    if not _present(params, name):
        if default is None:
            raise RequestError(400, f"missing parameter {name!r}")
        return default
    value = params[name]
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if number is None:
        raise RequestError(400, f"parameter {name!r} must be an integer, got {str(value)[:40]!r}")
    if not lo <= number <= hi:
        raise RequestError(400, f"parameter {name!r} must be between {lo} and {hi}, got {number}")
    return number


def _number(params: Dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and lo <= number <= hi):
        raise RequestError(400, f"parameter {name!r} must be a number between {lo} and {hi}, got {str(value)[:40]!r}")
    return number


def _int_list(params: Dict[str, Any], name: str, count: Optional[int] = None) -> Optional[List[int]]:
    if not _present(params, name):
        return None
    value = params[name]
    items = value.split(",") if isinstance(value, str) else value
    numbers: Optional[List[int]] = None
    if isinstance(items, (list, tuple)) and items:
        parsed = [_integer({name: v}, name, -(2**31), 2**31) if not isinstance(v, bool) else None for v in items]
        numbers = None if None in parsed else parsed
    if numbers is None or (count is not None and len(numbers) != count):
        want = f"{count} integers" if count else "a list of integers"
        raise RequestError(400, f"parameter {name!r} must be {want} (a JSON list or comma-separated), got {str(value)[:60]!r}")
    return numbers


def _area(params: Dict[str, Any], height: int, width: int) -> Tuple[Any, Tuple]:
    """(area for the engine, hashable key): a rectangle or a boolean mask in the target map's grid."""
    rect = _int_list(params, "area", count=4)
    mask_value = params.get("area_mask") if _present(params, "area_mask") else None
    if rect is not None and mask_value is not None:
        raise RequestError(400, "give either 'area' (a rectangle) or 'area_mask' (a neuron mask), not both")
    grid = _int_list(params, "area_grid", count=2) or [height, width]
    if not all(1 <= g <= MAX_AREA_GRID for g in grid):
        raise RequestError(400, f"'area_grid' must be two sizes between 1 and {MAX_AREA_GRID}, got {grid}")
    gh, gw = grid
    if rect is not None:
        y0, x0, y1, x1 = rect
        if not (0 <= y0 < y1 <= gh and 0 <= x0 < x1 <= gw):
            raise RequestError(
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
        raise RequestError(400, "'area_mask' must be a 2-D list of 0/1 values") from None
    if mask.ndim != 2 or tuple(mask.shape) != (gh, gw):
        raise RequestError(400, f"'area_mask' has shape {tuple(mask.shape)}; expected {gh}x{gw} (the 'area_grid', default the target map)")
    selected = mask > 0
    if not selected.any():
        raise RequestError(400, "'area_mask' selects no neuron; select at least one")
    rows = (np.arange(height) * gh) // height  # nearest-lower cell of the given grid for every target neuron
    cols = (np.arange(width) * gw) // width
    resampled = selected[np.ix_(rows, cols)]
    if not resampled.any():
        raise RequestError(400, "'area_mask' selects no neuron once mapped onto the target map; select a larger area")
    return resampled, ("mask", resampled.shape, np.packbits(resampled).tobytes())


# ------------------------------------------------------------------- model pool
class _Worker:
    """One loaded model artifact and the sessions prepared on it; one job at a time uses it."""

    def __init__(self, model: torch.nn.Module, max_sessions: int):
        self.model, self._max_sessions = model, max_sessions
        self.sessions: "collections.OrderedDict[Tuple, contribution.ContributionSession]" = collections.OrderedDict()

    def session(self, key: Tuple, images: torch.Tensor, earlier_layer: str, target_layer: Optional[str], deadline: float):
        """The prepared session for ``key`` (examples, earlier layer, target layer), made on first use."""
        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        session = contribution.ContributionSession(self.model, images, earlier_layer, target_layer, deadline=deadline)
        self.sessions[key] = session
        while len(self.sessions) > self._max_sessions:
            self.sessions.popitem(last=False)
        return session


class _WorkerPool:
    """Free workers per artifact (path, mtime); :meth:`borrow` prefers one holding the wanted session."""

    def __init__(self, max_artifacts: int = 4, per_artifact: int = 2, sessions_per_model: int = 4):
        self._free: "collections.OrderedDict[Tuple[str, float], List[_Worker]]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._max_artifacts, self._per_artifact, self._sessions = max_artifacts, per_artifact, sessions_per_model

    def borrow(self, artifact: Tuple[str, float], session_key: Tuple) -> _Worker:
        with self._lock:
            free = self._free.get(artifact)
            if free:
                self._free.move_to_end(artifact)
                ready = [i for i, w in enumerate(free) if session_key in w.sessions]
                return free.pop(ready[-1] if ready else -1)
        return _Worker(model_artifact.load_model_artifact(artifact[0]), self._sessions)

    def give_back(self, artifact: Tuple[str, float], worker: _Worker) -> None:
        with self._lock:
            free = self._free.setdefault(artifact, [])
            self._free.move_to_end(artifact)
            if len(free) < self._per_artifact:
                free.append(worker)
            while len(self._free) > self._max_artifacts:
                self._free.popitem(last=False)


# ----------------------------------------------------------------------- service
Loader = Callable[[str, str, str, int], run_reader.LoadedAnalysis]


def provider_loader(data_provider, logdir: Optional[str], ctx=None, experiment_id: str = "") -> Loader:
    """``load(run, analysis, method, step)`` over a DataProvider; ``logdir`` locates model artifacts."""

    def load(run: str, name: str, method: str, step: int) -> run_reader.LoadedAnalysis:
        try:
            return run_reader.load_analysis(data_provider, ctx, experiment_id, run, name, method, step, logdir=logdir)
        except run_reader.AnalysisNotFoundError as exc:
            raise RequestError(404, str(exc)) from exc
        except run_reader.AnalysisReadError as exc:
            raise RequestError(409, str(exc)) from exc

    return load


class ContributionService:
    """Answers contribution requests; ``handle(params, load) -> (status, body)``.

    ``load(run, analysis, method, step)`` returns a ``run_reader.LoadedAnalysis``; an
    exception it raises that carries an HTTP ``status`` (4xx, like the plugin's
    HttpError or :class:`RequestError`) is answered with that status. ``handle`` never
    raises for bad input.
    """

    def __init__(self, max_concurrent: int = 2, timeout_s: float = 30.0, cache_size: int = 64):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.max_concurrent, self.timeout_s = max_concurrent, float(timeout_s)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._cache: "collections.OrderedDict[Tuple, Dict[str, Any]]" = collections.OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._workers = _WorkerPool(per_artifact=max_concurrent)

    def handle(self, params: Dict[str, Any], load: Loader) -> Tuple[int, Dict[str, Any]]:
        """Validate, compute (or take from the cache) and answer one request."""
        if not isinstance(params, dict):
            return 400, {"error": "the request body must be a JSON object of parameters"}
        if not self._slots.acquire(blocking=False):
            return 429, {"error": f"{self.max_concurrent} contribution analyses are already running; retry in a few seconds"}
        try:
            return 200, self._answer(params, load, time.monotonic() + self.timeout_s)
        except RequestError as exc:
            return exc.status, {"error": str(exc)}
        except contribution.ContributionTimeout:
            return 503, {"error": f"the contribution analysis took longer than {self.timeout_s:g} s and was stopped; "
                                  "use mode 'quadratic', a smaller area, fewer examples or fewer steps"}
        except RuntimeError as exc:  # the model itself failed (e.g. an input size it cannot take)
            return 500, {"error": f"the saved model failed while computing contributions: {str(exc).splitlines()[0][:300]}"}
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ work
    def _answer(self, params: Dict[str, Any], load: Loader, deadline: float) -> Dict[str, Any]:
        run, name = _string(params, "run"), _string(params, "analysis")
        method, step = _string(params, "method"), _integer(params, "step", 0, 2**63 - 1)
        target = _string(params, "target", "feature_map")
        if target not in ("feature_map", "prediction"):
            raise RequestError(400, f"parameter 'target' must be 'feature_map' or 'prediction', got {target[:40]!r}")
        mode = _string(params, "mode", "sgd")
        if mode not in contribution.MODES:
            raise RequestError(400, f"parameter 'mode' must be one of {', '.join(contribution.MODES)}, got {mode[:40]!r}")
        earlier_layer = _string(params, "earlier_layer")
        lambda_ = _number(params, "lambda", contribution.DEFAULT_LAMBDA, 0.0, 1e6)
        gamma = _number(params, "gamma", contribution.DEFAULT_GAMMA, 0.0, 1e6)
        steps = _integer(params, "steps", 1, MAX_STEPS, contribution.DEFAULT_STEPS)
        top = _integer(params, "top", 1, 100_000, 20)

        loaded = self._load_analysis(load, run, name, method, step)
        analysis = loaded.analysis
        examples = _int_list(params, "examples") or list(range(analysis.num_examples))
        bad = [i for i in examples if not 0 <= i < analysis.num_examples]
        if bad or len(set(examples)) != len(examples):
            raise RequestError(404 if bad else 400, f"examples {examples} must be distinct indices in 0..{analysis.num_examples - 1}")
        artifact_key = self._artifact_key(loaded, run, name)

        layers = {l.name: l for l in analysis.layers}
        target_layer, channel, area, area_key = None, None, None, ("prediction",)
        if target == "feature_map":
            target_layer = _string(params, "target_layer")
            channel = _integer(params, "channel", 0, 2**31)
            record = layers.get(target_layer)
            if record is not None:
                if channel >= record.channels:
                    raise RequestError(404, f"channel {channel} does not exist in layer {target_layer!r}: it has {record.channels} feature maps")
                area, area_key = _area(params, record.height, record.width)
            elif _present(params, "area") or _present(params, "area_mask"):
                raise RequestError(400, f"an area needs a gated target layer (one of the analysis' layers) so its grid is known; {target_layer!r} is not one")

        key = (run, name, method, step, artifact_key, target_layer, channel, area_key, earlier_layer, tuple(examples), mode, lambda_, gamma, steps)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return dict(self._cache[key], cached=True, ranking=self._cache[key]["ranking"][:top])

        images = torch.from_numpy(np.ascontiguousarray(analysis.images[examples], dtype=np.float32))
        session_key = (tuple(examples), earlier_layer, target_layer)
        try:
            worker = self._workers.borrow(artifact_key, session_key)
        except model_artifact.ModelArtifactError as exc:
            raise RequestError(409, str(exc)) from exc
        try:
            known = {n for n, _ in worker.model.named_modules()}
            for what, path in (("earlier layer", earlier_layer), ("target layer", target_layer)):
                if path is not None and path not in known:
                    gated = ", ".join(list(layers)[:8])
                    raise RequestError(404, f"unknown {what} {path!r}: the saved model has no module with that path (the analysis gates: {gated})")
            options = dict(mode=mode, lambda_=lambda_, gamma=gamma, steps=steps, deadline=deadline)
            try:
                session = worker.session(session_key, images, earlier_layer, target_layer, deadline)
                if target == "prediction":
                    result = session.prediction(**options)
                else:
                    result = session.feature_map(channel, area, **options)
            except (ValueError, TypeError) as exc:
                raise RequestError(400, str(exc)) from exc
        finally:
            self._workers.give_back(artifact_key, worker)
        body = result.to_json()
        body.update(run=run, analysis=name, method=method, step=step, target=target, examples=examples,
                    example_names=[analysis.examples[i].name for i in examples], warnings=list(loaded.warnings))
        with self._cache_lock:
            self._cache[key] = body
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return dict(body, cached=False, ranking=body["ranking"][:top])

    @staticmethod
    def _load_analysis(load: Loader, run: str, name: str, method: str, step: int) -> run_reader.LoadedAnalysis:
        try:
            return load(run, name, method, step)
        except RequestError:
            raise
        except Exception as exc:  # the loader's own HTTP-style refusals (e.g. the plugin's HttpError 404)
            status = getattr(exc, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                raise RequestError(status, str(exc)) from exc
            raise

    def _artifact_key(self, loaded: run_reader.LoadedAnalysis, run: str, name: str) -> Tuple[str, float]:
        path = loaded.model_artifact
        if path is None:
            detail = "; ".join(w for w in loaded.warnings if "model" in w)
            raise RequestError(
                409, f"analysis {name!r} in run {run!r} has no saved model, so contributions cannot be computed"
                f"{': ' + detail if detail else ''}; log it with add_analysis(..., model=model, save_model=True)"
            )
        try:
            mtime = os.path.getmtime(os.path.join(path, model_artifact.META_FILE))
        except OSError:
            raise RequestError(409, f"the model artifact of analysis {name!r} at {path} disappeared; re-log the analysis") from None
        return path, mtime


_default_service: Optional[ContributionService] = None
_default_lock = threading.Lock()


def handle_contribution(payload: Dict[str, Any], load: Loader) -> Dict[str, Any]:
    """The plugin's ``POST contribution`` handler: the answer body, or the plugin's HttpError."""
    from tensorboard_plugin_aevis.aevis_plugin import HttpError

    global _default_service
    with _default_lock:
        if _default_service is None:
            _default_service = ContributionService()
    status, body = _default_service.handle(payload, load)
    if status != 200:
        raise HttpError(status, body["error"])
    return body
