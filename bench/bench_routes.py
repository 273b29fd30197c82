"""p95 latency of every AEVis route on a resnet50 run (random weights), cold and cached.

Writes one run (a source / adversarial / target triplet of random 224 px images,
datapaths by the real extraction with few steps, logged by the real writer with the
model and 4 reference images; and a five-datapath analysis for the n-path river and
the k = 5 treemap), serves it through TensorBoard's WSGI app with the
plugin, and times each route:

- cold: plugin answer cache and run-reader cache emptied before every request (the
  data provider has the run loaded, as in a running TensorBoard);
- cached: the same request repeated.

Goals on this CPU: cached p95 <= 50 ms, cold p95 <= 300 ms. Prints a table.

    .venv/bin/python bench/bench_routes.py [--repeats 20] [--data-server python|rust] [--logdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.parse

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

GOAL_CACHED_MS, GOAL_COLD_MS = 50.0, 300.0


def write_resnet50_run(logdir: str, steps: int) -> dict:
    """Log one resnet50 triplet analysis into ``<logdir>/resnet50``; returns request ids."""
    import torch

    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths
    from tensorboard_plugin_aevis.models import load_model

    torch.manual_seed(0)
    model = load_model("resnet50")  # torchvision architecture, random weights (nothing downloaded)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((3, 3, 224, 224), dtype=np.float32))
    references = rng.random((4, 3, 224, 224), dtype=np.float32)
    analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], steps=steps)
    add_analysis(os.path.join(logdir, "resnet50"), "triplet", analysis, 0, model=model, reference_images=references)
    binary = analysis.binary()
    layer = max(range(len(analysis.layers)), key=lambda l: binary[l].any(axis=0).sum())
    channel = int(np.flatnonzero(binary[layer].any(axis=0))[0])
    # five datapaths (source, adversarial, three targets): the n-path river and a k = 5 treemap
    five_images = torch.from_numpy(rng.random((5, 3, 224, 224), dtype=np.float32))
    five = extract_datapaths(model, five_images, ["source", "adversarial", "target", "target", "target"], steps=steps)
    add_analysis(os.path.join(logdir, "resnet50"), "five", five, 0, model=model)
    five_binary = five.binary()
    five_layer = max(range(len(five.layers)), key=lambda l: five_binary[l].any(axis=0).sum())
    return {"ids": {"run": "resnet50", "analysis": "triplet", "method": analysis.method, "step": 0},
            "layer": analysis.layers[layer].name, "channel": channel, "layers": [l.name for l in analysis.layers],
            "five": {"ids": {"run": "resnet50", "analysis": "five", "method": five.method, "step": 0},
                     "layer": five.layers[five_layer].name}}


def requests_for(run: dict) -> dict:
    ids, layer, channel = run["ids"], run["layer"], run["channel"]
    return {
        "runs": {},
        "analysis": ids,
        "image": {**ids, "example": 1},
        "graph": ids,
        "river": ids,
        "treemap": {**ids, "layer": layer, "examples": "0,1,2"},
        "neuron": {**ids, "layer": layer, "channel": channel},
        "activation_map": {**ids, "layer": layer, "channel": channel, "example": 0},
        "learned_feature": {**ids, "layer": layer, "channel": channel, "rank": 0},
        "reference_image": {**ids, "index": 0},
        **({} if "five" not in run else {  # logdirs written before the five-path analysis lack it
            "river (5 paths)": run["five"]["ids"],
            "treemap (k = 5)": {**run["five"]["ids"], "layer": run["five"]["layer"], "examples": "0,1,2,3,4"},
        }),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="extraction steps (the latency does not depend on them)")
    parser.add_argument("--data-server", choices=("python", "rust"), default="python")
    parser.add_argument("--logdir", help="reuse a logdir written by an earlier run of this script")
    args = parser.parse_args(argv)

    from werkzeug.test import Client

    from run_fixtures import tensorboard_app
    from tensorboard_plugin_aevis import aevis_plugin, run_reader
    from tensorboard_plugin_aevis.bounded_cache import ByteLRU

    logdir = args.logdir or tempfile.mkdtemp(prefix="aevis-bench-routes-")
    marker = os.path.join(logdir, "bench_routes.json")
    if os.path.exists(marker):
        import json
        with open(marker) as f:
            run = json.load(f)
    else:
        start = time.perf_counter()
        run = write_resnet50_run(logdir, args.steps)
        import json
        with open(marker, "w") as f:
            json.dump(run, f)
        print(f"wrote the resnet50 run in {time.perf_counter() - start:.1f} s into {logdir}")

    app, close = tensorboard_app(logdir, data_server=args.data_server)
    client = Client(app)
    plugin_cache = {"instance": None}

    def get(route: str, params: dict):
        url = f"/data/plugin/aevis/{route}" + ("?" + urllib.parse.urlencode(params) if params else "")
        t = time.perf_counter()
        response = client.get(url)
        body = response.get_data()
        elapsed = (time.perf_counter() - t) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{route}: HTTP {response.status_code}: {body[:300]!r}")
        return elapsed, len(body)

    def empty_caches() -> None:  # the analysis read again, answers computed again (the run index kept)
        for plugin in plugin_cache["instance"] or ():
            plugin._store._loaded = ByteLRU(run_reader.MAX_LOADED_BYTES)
            plugin._cache = ByteLRU(aevis_plugin.CACHE_BYTES)

    # the plugin instance lives inside the TensorBoard app: find it once
    import gc
    plugin_cache["instance"] = [o for o in gc.get_objects() if isinstance(o, aevis_plugin.AEVisPlugin)]

    print(f"data server: {args.data_server}; {args.repeats} requests per cell; ms")
    print(f"{'route':<16} {'cold p50':>9} {'cold p95':>9} {'cached p50':>11} {'cached p95':>11} {'bytes':>9}  goals ({GOAL_COLD_MS:.0f} / {GOAL_CACHED_MS:.0f})")
    failures = 0
    for row, params in requests_for(run).items():
        route = row.split(" ")[0]
        cold, cached = [], []
        for _ in range(args.repeats):
            empty_caches()
            cold.append(get(route, params)[0])
        for _ in range(args.repeats):
            elapsed, size = get(route, params)
            cached.append(elapsed)
        c50, c95, w50, w95 = (np.percentile(cold, 50), np.percentile(cold, 95), np.percentile(cached, 50), np.percentile(cached, 95))
        ok = c95 <= GOAL_COLD_MS and w95 <= GOAL_CACHED_MS
        failures += not ok
        print(f"{row:<16} {c50:9.1f} {c95:9.1f} {w50:11.1f} {w95:11.1f} {size:9d}  {'ok' if ok else 'MISSED'}")
    close()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
