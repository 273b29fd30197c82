"""Real AEVis runs for tests, written with the real engine and writer, and a real
TensorBoard WSGI application serving them.

Stable helpers (the dashboard's browser tests reuse them):

- ``TinyCNN``: a 4-conv classifier for 3 x 24 x 24 images in [0, 1] (random weights,
  seeded, scaled so the prediction depends on the features and the extracted datapaths
  are non-empty), 5 classes named ``class0`` .. ``class4``.
- ``write_small_run(logdir, run="small", name="cat->dog", steps=(0,), methods=("constrained",),
  roles=("source", "adversarial", "target"), with_model=True, seed=0) -> SmallRun``: extracts
  the datapaths of ``len(roles)`` random images with :func:`extract_datapaths` (few
  steps) and logs them with ``summary_writers.add_analysis`` into ``<logdir>/<run>``
  at each step and method, with reference images for learned features. Returns the
  ``Analysis`` objects written (``SmallRun.analyses[(method, step)]``) for comparisons.
- ``write_run_with_stability_and_an_empty_layer(logdir, run="stable", ...) -> SmallRun``: a
  ``starts=3`` extraction (so ``stability`` is set) whose gated layer ``EMPTY_LAYER`` is made
  to keep no feature map (a constructed input: its gates and stability set to 0).
- ``write_corrupt_run(logdir, run="corrupt")``: a run directory whose event file is
  garbage after a valid header record, next to good runs.
- ``tensorboard_app(logdir, data_server="python") -> (wsgi_app, close)``: TensorBoard's own
  WSGI application (``TensorBoardWSGIApp``) with the AEVis plugin, reading ``logdir``
  through a real data provider: ``"python"`` (the event multiplexer) or ``"rust"``
  (the ``tensorboard_data_server`` subprocess, TensorBoard's default). Use with
  ``werkzeug.test.Client(wsgi_app)``; call ``close()`` when done.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import struct
import time
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from tensorboard_plugin_aevis.analysis import Analysis

CLASS_NAMES = [f"class{i}" for i in range(5)]
IMAGE_SIZE = 24


class TinyCNN(nn.Module):
    """(B, 3, 24, 24) in [0, 1] -> (B, 5) logits; four conv + ReLU blocks."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, len(CLASS_NAMES), bias=False)
        with torch.no_grad():  # sharpen the random net so its prediction depends on the features
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    module.weight.mul_(2.0)
            self.head.weight.mul_(30.0)
        self.class_names = list(CLASS_NAMES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclasses.dataclass
class SmallRun:
    """What :func:`write_small_run` logged: ``analyses[(method, step)]``, the run's
    directory, the analysis name and the reference images (M, 3, 24, 24)."""

    run: str
    path: str
    name: str
    analyses: Dict[Tuple[str, int], Analysis]
    reference_images: np.ndarray


def write_small_run(
    logdir: str,
    run: str = "small",
    name: str = "cat->dog",
    steps: Sequence[int] = (0,),
    methods: Sequence[str] = ("constrained",),
    roles: Sequence[str] = ("source", "adversarial", "target"),
    with_model: bool = True,
    seed: int = 0,
) -> SmallRun:
    """Extract and log a small analysis into ``<logdir>/<run>`` (see the module docstring)."""
    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    model = TinyCNN(seed).eval()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.random((len(roles), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    references = rng.random((4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    path = os.path.join(logdir, run)
    analyses: Dict[Tuple[str, int], Analysis] = {}
    for step in steps:
        for method in methods:
            analysis = extract_datapaths(model, images, list(roles), method=method, steps=8)
            add_analysis(path, name, analysis, step, model=model if with_model else None,
                         reference_images=references if with_model else None, save_model=with_model)
            analyses[(method, step)] = analysis
    return SmallRun(run, path, name, analyses, references)


def write_corrupt_run(logdir: str, run: str = "corrupt") -> str:
    """A run whose only event file holds one valid record then garbage; returns its path."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    path = os.path.join(logdir, run)
    os.makedirs(path, exist_ok=True)
    filename = os.path.join(path, f"events.out.tfevents.{int(time.time())}.corrupt")
    with open(filename, "wb") as f:
        writer = RecordWriter(f)
        writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        writer.flush()
        f.write(struct.pack("<Q", 1 << 40) + b"\xff" * 64)  # a record header claiming 1 TB, then junk
    return path


def tensorboard_flags(logdir: str, *extra_args: str) -> argparse.Namespace:
    """TensorBoard's own flags, parsed and checked as ``tensorboard --logdir LOGDIR ...`` does."""
    from tensorboard import program
    from tensorboard.plugins.core import core_plugin

    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader])
    tb.configure(argv=["tensorboard", "--logdir", logdir, *extra_args])
    return tb.flags


def tensorboard_app(logdir: str, data_server: str = "python", timeout: float = 30.0):
    """(TensorBoard WSGI app with the AEVis plugin over ``logdir``, close()); the logdir
    is fully loaded when this returns."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_ingester
    from tensorboard.context import RequestContext
    from tensorboard.data import server_ingester
    from tensorboard.util import grpc_util

    from tensorboard_plugin_aevis.aevis_plugin import AEVisPlugin

    flags = tensorboard_flags(logdir, "--reload_interval", "0")
    if data_server == "python":
        ingester = data_ingester.LocalDataIngester(flags)
        ingester.deprecated_multiplexer.AddRunsFromDirectory(logdir)
        ingester.deprecated_multiplexer.Reload()  # synchronous, unlike ingester.start()
    elif data_server == "rust":
        ingester = server_ingester.SubprocessServerDataIngester(
            server_ingester.get_server_binary(), logdir, reload_interval=0,
            channel_creds_type=grpc_util.ChannelCredsType.LOCAL)
        ingester.start()
        _wait_until_loaded(ingester.data_provider, RequestContext(), logdir, timeout)
    else:
        raise ValueError(f"data_server must be 'python' or 'rust', got {data_server!r}")
    app = application.TensorBoardWSGIApp(flags, [AEVisPlugin], ingester.data_provider)

    def close() -> None:
        handle = getattr(ingester, "_stdin_handle", None)
        if handle is not None:
            handle.close()  # the Rust data server exits when its stdin closes

    return app, close


def _wait_until_loaded(provider, ctx, logdir: str, timeout: float) -> None:
    """Poll the (asynchronously loading) data server until every run directory with an
    event file is listed and its AEVis data stops changing."""
    expected = {os.path.relpath(root, logdir).replace(os.sep, "/")
                for root, _, files in os.walk(logdir) if any(".tfevents." in f for f in files)}
    expected = {"." if e == "." else e for e in expected}
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        runs = {r.run_name for r in provider.list_runs(ctx, experiment_id="")}
        listing = (provider.list_tensors(ctx, experiment_id="", plugin_name="aevis"),
                   provider.list_blob_sequences(ctx, experiment_id="", plugin_name="aevis"))
        snapshot = repr(listing)
        if expected <= runs and snapshot == previous:
            return
        previous = snapshot
        time.sleep(0.3)
    raise TimeoutError(f"the data server did not load {sorted(expected)} within {timeout} s")


EMPTY_LAYER = 1  # the gated layer whose maps write_run_with_stability_and_an_empty_layer drops


def write_run_with_stability_and_an_empty_layer(
    logdir: str, run: str = "stable", name: str = "cat->dog (K=3)", seed: int = 0,
) -> SmallRun:
    """A run whose analysis has a stability score (a real extraction with ``starts=3``) and
    one gated layer, ``EMPTY_LAYER``, that keeps no feature map in any datapath.

    Constructed input: after the real extraction, that layer's gates are set to 0 (below
    every threshold) and its stability to 0 (no start kept any of its maps), so the
    dashboard's "keeps no map here" states are reachable on a tiny network; and in the
    last other layer whose datapaths keep at least two maps, the first kept map of the
    first example that keeps one gets stability 1/3 (one start of three kept it), the
    others 1, so a faded cell beside a full one exists whatever the starts did on this
    CPU. Logged at step 0, method ``"constrained"``, with the model and reference images.
    Returns the logged analysis (``analyses[("constrained", 0)]``).
    """
    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    model = TinyCNN(seed).eval()
    rng = np.random.default_rng(seed)
    roles = ("source", "adversarial", "target")
    images = torch.from_numpy(rng.random((len(roles), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    references = rng.random((4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    analysis = extract_datapaths(model, images, list(roles), method="constrained", steps=8, starts=3)
    analysis.gates[EMPTY_LAYER] = np.zeros_like(analysis.gates[EMPTY_LAYER])
    analysis.stability[EMPTY_LAYER] = np.zeros_like(analysis.stability[EMPTY_LAYER])
    binary = analysis.binary()
    layer = next(l for l in reversed(range(len(binary))) if l != EMPTY_LAYER and binary[l].any(axis=0).sum() >= 2)
    example = int(np.flatnonzero(binary[layer].any(axis=1))[0])
    faded = int(np.flatnonzero(binary[layer][example])[0])
    analysis.stability[layer] = np.where(binary[layer], 1.0, analysis.stability[layer]).astype(np.float32)
    analysis.stability[layer][example, faded] = 1.0 / 3.0
    analysis.validate()
    path = os.path.join(logdir, run)
    add_analysis(path, name, analysis, 0, model=model, reference_images=references, save_model=True)
    return SmallRun(run, path, name, {("constrained", 0): analysis}, references)
