"""On-disk size of one logged triplet analysis (resnet50, random weights, 224 px).

Extracts the datapaths of an (adversarial, source, target) triplet of random images
with a few optimisation steps (the size depends on the layers, the image size and how
many feature maps are in some datapath, not on how well the gates converged; few steps
leave most gates near their start, so most maps are logged: close to the worst case),
logs it with ``summary_writers.add_analysis`` and prints the run's size without and
with the model artifact. Goal: <= 10 MB without the artifact.

    .venv/bin/python bench/bench_run_size.py [--model resnet50] [--size 224] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from summary_writers import add_analysis
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.models import load_model


def directory_size(path: str, exclude: str = "") -> int:
    """Bytes of all files under ``path``, skipping those under ``exclude``."""
    total = 0
    for root, _, files in os.walk(path):
        if exclude and os.path.commonpath([root, exclude]) == exclude:
            continue
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="extraction steps per example")
    parser.add_argument("--max-map-size", type=int, default=28)
    parser.add_argument("--logdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model = load_model(args.model).eval()
    images = torch.rand(3, 3, args.size, args.size)
    start = time.perf_counter()
    analysis = extract_datapaths(model, images, ["adversarial", "source", "target"], steps=args.steps)
    extract_s = time.perf_counter() - start
    channels = sum(layer.channels for layer in analysis.layers)
    in_datapath = sum(int(b.any(axis=0).sum()) for b in analysis.binary())
    print(f"{args.model} {args.size}px: {len(analysis.layers)} gated layers, {channels} feature maps, "
          f"{in_datapath} in some datapath ({in_datapath / channels:.0%}); extraction {extract_s:.1f} s ({args.steps} steps)")

    logdir = args.logdir or tempfile.mkdtemp(prefix="aevis-size-")
    sizes = {}
    for save_model in (False, True):
        run = os.path.join(logdir, "with_model" if save_model else "without_model")
        start = time.perf_counter()
        add_analysis(run, "triplet", analysis, 0, model=model, save_model=save_model, max_map_size=args.max_map_size)
        log_s = time.perf_counter() - start
        artifact = os.path.join(run, "plugins", "aevis", "models")
        events = sizes[save_model] = directory_size(run, exclude=artifact)
        line = f"save_model={save_model}: event files {events / 1e6:.2f} MB"
        if save_model:
            line += f", model artifact {directory_size(artifact) / 1e6:.2f} MB, total {directory_size(run) / 1e6:.2f} MB"
        print(f"{line}; add_analysis {log_s:.1f} s")
    from tensorboard.backend.event_processing import data_ingester, data_provider, plugin_event_multiplexer
    from tensorboard.context import RequestContext

    from tensorboard_plugin_aevis import run_reader

    start = time.perf_counter()
    mux = plugin_event_multiplexer.EventMultiplexer(size_guidance=data_ingester.DEFAULT_SIZE_GUIDANCE)
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, logdir)
    ingest_s = time.perf_counter() - start
    timings = []
    for _ in range(2):  # the second load is answered from the reader's cache
        start = time.perf_counter()
        run_reader.load_analysis(provider, RequestContext(), "", "without_model", "triplet", analysis.method, 0)
        timings.append(time.perf_counter() - start)
    print(f"read back (python data provider): ingest {ingest_s:.2f} s, load_analysis {timings[0]:.2f} s, cached {timings[1] * 1e3:.1f} ms")
    print(f"goal: <= 10 MB without the artifact -> {'met' if sizes[False] <= 10e6 else 'NOT met'} "
          f"({sizes[False] / 1e6:.2f} MB); logdir {logdir}")


if __name__ == "__main__":
    main()
