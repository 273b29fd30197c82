"""Summary-writer ops: log a datapath analysis (or its parts) for the AEVis dashboard.

``writer`` is a ``torch.utils.tensorboard.SummaryWriter`` or a logdir path (see
:mod:`summary_writers.sink`); ``step`` is the training step (log the same analysis
name at many steps to watch datapaths form over training). The run format (tags,
encodings) is described in :mod:`summary_writers.payloads` and docs/architecture.md.

:func:`add_analysis` validates and serialises everything first, writes the bulky
parts, moves the model artifact into place, writes the manifest last and flushes:
a bad analysis raises before anything is written, and a writer killed half-way
leaves no manifest, so the half-written analysis is simply not listed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from tensorboard_plugin_aevis import model_artifact
from tensorboard_plugin_aevis.analysis import Analysis
from tensorboard_plugin_aevis.models import model_device

from summary_writers import payloads
from summary_writers.sink import EventSink, SummaryRecord


def _check_name_and_step(name: str, step: int) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"analysis name must be a non-empty string, got {name!r}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")


def _as_image_array(images: Any, what: str) -> np.ndarray:
    """(M, C, H, W) float32 in [0, 1] from a tensor / array; a clear error otherwise."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"{what} have shape {array.shape}; expected (M, 3, H, W) or (M, 1, H, W) with M >= 1")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{what} must be finite and in [0, 1] (pixel space, before normalisation)")
    return array


def ungated_activations(model: nn.Module, analysis: Analysis) -> List[np.ndarray]:
    """Per gated layer the ungated feature maps (N, C_l, H_l, W_l) of the analysis images."""
    from tensorboard_plugin_aevis.gating import GateHooks

    layers = [layer.name for layer in analysis.layers]
    images = torch.from_numpy(np.asarray(analysis.images, dtype=np.float32)).to(model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), GateHooks(model, layers, record=True) as hooks:
            model(images)
            maps = [a.float().cpu().numpy() for a in hooks.activations]
    finally:
        model.train(was_training)
    for layer, a in zip(analysis.layers, maps):
        want = (analysis.num_examples, layer.channels, layer.height, layer.width)
        if a.shape != want:
            raise ValueError(f"the model's layer {layer.name!r} outputs {a.shape}, the analysis says {want}: pass the model the analysis was extracted from")
    return maps


def _maps_and_maxima(analysis: Analysis, model: Optional[nn.Module]):
    """(max_activations or None, datapath maps per layer or None) from the analysis or the model."""
    full_maps = analysis.activation_maps
    if full_maps is None and model is not None:
        full_maps = ungated_activations(model, analysis)
    maxima = analysis.max_activations
    if maxima is None and full_maps is not None:
        maxima = [m.max(axis=(2, 3)) for m in full_maps]
    if full_maps is None:
        return maxima, None
    channels = payloads.datapath_channels(analysis)
    return maxima, [np.asarray(m)[:, c] for m, c in zip(full_maps, channels)]


def _write(writer, records: Sequence[SummaryRecord], step: int) -> None:
    with EventSink(writer) as sink:
        for record in records:
            sink.write(record, step)


# ------------------------------------------------------------------ finer ops
def add_arrays(writer, name: str, analysis: Analysis, step: int, model: Optional[nn.Module] = None,
               max_map_size: int = payloads.DEFAULT_MAX_MAP_SIZE) -> None:
    """Log the gates, max activations, datapath activation maps and example images (PNG).

    Activation maps come from ``analysis.activation_maps`` or, when absent, from an
    ungated forward pass of ``model``; without either, only gates and images are logged.
    """
    _check_name_and_step(name, step)
    analysis.validate()
    maxima, maps = _maps_and_maxima(analysis, model)
    _write(writer, [payloads.arrays_record(name, analysis, step, maxima, maps, max_map_size)], step)


def add_model_graph(writer, name: str, model: nn.Module, example_input: torch.Tensor,
                    gated_layers: Sequence[str], step: int = 0) -> None:
    """Log the layer DAG (``model_graph.build_model_graph``) of the analysis ``name``."""
    from tensorboard_plugin_aevis.model_graph import build_model_graph

    _check_name_and_step(name, step)
    graph = build_model_graph(model, example_input, list(gated_layers))
    _write(writer, [payloads.graph_record(name, graph, step)], step)


def add_reference_images(writer, name: str, images: Any, step: int = 0) -> None:
    """Log the reference images (M, C, H, W) in [0, 1] the learned features of ``name`` crop."""
    _check_name_and_step(name, step)
    _write(writer, [payloads.reference_images_record(name, _as_image_array(images, "reference images"), step)], step)


def add_learned_features(writer, name: str, method: str, step: int, boxes: Any) -> None:
    """Log learned-feature boxes (``learned_features.learned_features`` output:
    ``{layer: {channel: [(image, activation, (y0, x0, y1, x1)), ...]}}``) as per-layer arrays."""
    _check_name_and_step(name, step)
    _write(writer, [payloads.learned_features_record(name, method, step, boxes)], step)


def add_manifest(writer, name: str, analysis: Analysis, step: int, extras: Optional[Dict[str, Any]] = None) -> None:
    """Log the manifest: ``Analysis.to_json()``, distances, diff curve, diverging / merging.

    The dashboard lists an analysis once its manifest exists, so log it after the parts.
    """
    _check_name_and_step(name, step)
    analysis.validate()
    with EventSink(writer) as sink:
        sequence = sink.state.manifests_logged + 1
        record = payloads.manifest_record(name, analysis, step, dict(extras or {}), sink.state.writer_id, sequence)
        sink.write(record, step)
        sink.flush()
        sink.state.manifests_logged = sequence


# ------------------------------------------------------------------ model policy
FIRST_AND_LATEST = "first-and-latest"
SAVE_MODEL_POLICIES = (FIRST_AND_LATEST, "all", "none")


def model_policy(save_model: Union[bool, str]) -> str:
    """The policy named by ``save_model``: True -> ``"first-and-latest"``, False -> ``"none"``."""
    if save_model is True:
        return FIRST_AND_LATEST
    if save_model is False or save_model is None:
        return "none"
    if save_model not in SAVE_MODEL_POLICIES:
        raise ValueError(f"save_model={save_model!r}: use one of {SAVE_MODEL_POLICIES}, True (= {FIRST_AND_LATEST!r}) or False")
    return save_model


def _prune_models(logdir: str, state, fingerprint: str) -> None:
    """``first-and-latest``: remember ``fingerprint`` as the latest artifact; remove the previous
    latest unless it is the first."""
    if state.first_model is None:
        state.first_model = fingerprint
    previous, state.latest_model = state.latest_model, fingerprint
    if previous is not None and previous not in (fingerprint, state.first_model):
        shutil.rmtree(model_artifact.artifact_dir(logdir, previous), ignore_errors=True)


# ------------------------------------------------------------------ one call
def add_analysis(
    writer,
    name: str,
    analysis: Analysis,
    step: int,
    model: Optional[nn.Module] = None,
    reference_images: Any = None,
    save_model: Union[bool, str] = FIRST_AND_LATEST,
    *,
    max_map_size: int = payloads.DEFAULT_MAX_MAP_SIZE,
    top_k: int = 3,
) -> None:
    """Log a whole analysis at ``step`` under ``name``.

    Logs the examples (images as PNG, roles, labels, predictions), the gates, the max
    activation of every feature map, uint8 activation maps of every feature map in any
    datapath (pooled to at most ``max_map_size`` per side), the distances / diff curve
    / diverging-merging points, and, when ``model`` (images in [0, 1] -> logits) is
    given: the layer DAG (once per name and writer), the learned features over
    ``reference_images`` ((M, C, H, W) in [0, 1], stored once per name and writer) and the
    model artifact in ``<run>/plugins/aevis/models/<fingerprint of the weights>/`` (exported
    once per distinct weights), which contribution analysis needs, kept by ``save_model``:

    - ``"first-and-latest"`` (default; ``True`` means the same): the run keeps the artifacts
      of the first and of the latest weights this writer logged; logging new weights removes
      the previous latest one (unless it is the first), so a training loop stores at most two.
      The manifest of a step whose artifact was removed still says ``has_model`` (event files
      are append-only); the reader treats a missing artifact under this policy as no model.
    - ``"all"``: every distinct weights keep their artifact (grows with training).
    - ``"none"`` (or ``False``): no artifact (weights you cannot share).

    Raises:
        ValueError / TypeError: a bad name, step, analysis, model, images or ``save_model``.
    """
    _check_name_and_step(name, step)
    policy = model_policy(save_model)
    if not isinstance(analysis, Analysis):
        raise TypeError(f"analysis must be a tensorboard_plugin_aevis.analysis.Analysis, got {type(analysis).__name__}")
    analysis.validate()
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (images in [0, 1] -> logits), got {type(model).__name__}")
    if reference_images is not None and model is None:
        raise ValueError("reference_images need the model to compute learned features: pass model=... as well")
    references = None if reference_images is None else _as_image_array(reference_images, "reference images")

    # Serialise everything that can fail on bad input before touching the run.
    maxima, maps = _maps_and_maxima(analysis, model)
    records = [payloads.arrays_record(name, analysis, step, maxima, maps, max_map_size)]
    extras: Dict[str, Any] = {"has_model": False, "model_artifact": None, "model_policy": policy, "max_map_size": max_map_size}
    example_input = torch.from_numpy(np.asarray(analysis.images[:1], dtype=np.float32))
    gated = [layer.name for layer in analysis.layers]
    if references is not None:
        from tensorboard_plugin_aevis.learned_features import learned_features

        channels = [c.tolist() for c in payloads.datapath_channels(analysis)]
        boxes = learned_features(model, gated, channels, torch.from_numpy(references), top_k)
        records.append(payloads.learned_features_record(name, analysis.method, step, boxes))

    with EventSink(writer) as sink:
        state = sink.state
        if model is not None and name not in state.graphs_logged:
            from tensorboard_plugin_aevis.model_graph import build_model_graph

            records.append(payloads.graph_record(name, build_model_graph(model, example_input.to(model_device(model)), gated), step))
        if references is not None and name not in state.reference_images_logged:
            records.append(payloads.reference_images_record(name, references, step))
        fingerprint = model_artifact.model_fingerprint(model, example_input) if model is not None and policy != "none" else None
        if fingerprint is not None:
            extras.update(has_model=True, model_artifact=fingerprint)
        sequence = state.manifests_logged + 1
        manifest = payloads.manifest_record(name, analysis, step, extras, state.writer_id, sequence)
        staged = None
        try:
            final = None if fingerprint is None else model_artifact.artifact_dir(sink.logdir, fingerprint)
            if final is not None and not os.path.isdir(final):  # new weights: export them once
                staged = os.path.join(os.path.dirname(final), f".pending-{uuid.uuid4().hex}")
                model_artifact.save_model_artifact(model, example_input, staged, step=step, gated_layers=gated)
            # Everything is computed: now write. Parts first, the manifest last.
            for record in records:
                sink.write(record, step)
            if staged is not None:
                _replace_dir(staged, final)
                staged = None
            sink.write(manifest, step)
            sink.flush()
            state.manifests_logged = sequence
            if fingerprint is not None and policy == FIRST_AND_LATEST:
                _prune_models(sink.logdir, state, fingerprint)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        if model is not None:
            state.graphs_logged.add(name)
        if references is not None:
            state.reference_images_logged.add(name)


def _replace_dir(source: str, target: str) -> None:
    """Move directory ``source`` to ``target``, replacing an existing one."""
    old = None
    if os.path.exists(target):
        old = f"{target}.old-{uuid.uuid4().hex}"
        os.rename(target, old)
    os.rename(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
