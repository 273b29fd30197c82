"""``POST contribution`` as the dashboard sends it, through a real ``tensorboard --logdir`` (issue #15).

For each run (the demo's EfficientNet-Lite0 run, made with ``aevis demo --logdir DIR``,
and a resnet50 run of 224 px images, written here once with random weights: the
latency does not depend on them), on a freshly started ``tensorboard`` (default flags,
loopback only):

- ``first_s``: the first request after the server answers (SGD; torch import, artifact
  read, forward pass and fit included; the analysis itself already opened, as in the
  dashboard, where the request follows the ``analysis`` answer); when a map is all zero in
  the area (400, e.g. on random weights) the next one is tried: ``first_s`` is the time to
  the first answer, ``first_attempts`` the requests it took, ``first_request_s`` the
  first request's own time (whatever its answer: it pays for the import and the read);
- ``quadratic_s`` / ``sgd_after_quadratic_s``: the dashboard's default ("preview") on other
  feature maps of the same target layer: a quadratic request, then the SGD request of the
  same map (which starts from the quadratic answer the server kept); ``later_sgd_s``: SGD
  requests alone on further maps (each computed, none cached);
- ``ranked``: entries in each answer's ranking (default top 10); ``threads``: the torch
  threads each answer was computed on (the cores no other task held);
- ``rank_correlation``: Spearman correlation of the two modes' scores over every map,
  per feature map, and whether they agree on the top map;
- ``sgd_steps_run``: the Adam steps each later SGD request ran after its quadratic start;
  ``sgd_objective`` / ``quadratic_objective``: each answer's
  loss (Eq. 7/8: the fidelity measured through the network plus the penalties), lower is
  a better fit.

The analysis: the run's first with a saved model and three examples. The request: every
example of the analysis, target layer and channel, a 4x4 area at the
centre of the target map (in the map's own grid), the earlier layer just before the
target (``--target-layer`` names it; default: the demo's ``model._blocks.13`` and resnet50's
``model.layer3.2``). Prints one JSON object.

    .venv/bin/python bench/bench_contribution_route.py [--demo-run /tmp/b18/runs/demo] [--resnet50-logdir DIR] [--maps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_load import ROOT, Server  # noqa: E402

DEFAULT_TARGETS = ("model._blocks.13", "model.layer3.2")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def objective(answer: dict) -> float:
    """The loss of an answer's gates: its measured fidelity plus lambda * sum_i mean_k z_ik plus
    gamma * sum_{i != j} ||z_i - z_j|| (the engine's smoothing of the norm, 1e-8 under the root, left out)."""
    import numpy as np

    gates, params = np.asarray(answer["gates"], dtype=float), answer["params"]
    pairs = np.sqrt(((gates[:, None, :] - gates[None, :, :]) ** 2).sum(-1)).sum()
    return float(sum(answer["fidelity"]) + params["lambda"] * gates.mean(axis=1).sum() + params["gamma"] * pairs)


def run_bench(logdir: str, target_layer: str, maps: int) -> dict:
    server = Server(logdir)
    try:
        return _timed_requests(server, target_layer, maps)
    except BaseException:
        server.close()  # never leave a tensorboard behind
        raise


def _timed_requests(server: Server, target_layer: str, maps: int) -> dict:
    run = server.wait_for_runs()["runs"][0]
    candidates = []
    for entry in run["analyses"]:  # the first with a model and three examples (a triplet, the dashboard's default view)
        if entry.get("steps_with_model"):
            ids = {"run": run["run"], "analysis": entry["name"], "method": entry["method"], "step": entry["steps_with_model"][0]}
            candidates.append((ids, json.loads(server.request("GET", ROOT + "analysis?" + urllib.parse.urlencode(ids))[1])))
    ids, analysis = next(((i, a) for i, a in candidates if len(a["examples"]) == 3), candidates[0])
    names = [l["name"] for l in analysis["layers"]]
    target = target_layer if target_layer in names else names[(2 * len(names)) // 3]
    index = names.index(target)
    layer = analysis["layers"][index]
    h, w = layer["height"], layer["width"]
    y0, x0 = max(0, h // 2 - 2), max(0, w // 2 - 2)
    base = {**ids, "target": "feature_map", "target_layer": target, "earlier_layer": names[index - 1],
            "area": [y0, x0, min(h, y0 + 4), min(w, x0 + 4)], "area_grid": [h, w],
            "examples": list(range(len(analysis["examples"])))}

    threads = []

    def post(channel: int, mode: str) -> tuple:
        status, body, seconds = server.request("POST", ROOT + "contribution", dict(base, channel=channel, mode=mode))
        answer = json.loads(body)
        if status != 200:
            return seconds, None, answer.get("error")
        threads.append(answer.get("threads"))
        return seconds, answer, None

    # feature maps in the most datapaths first (the dashboard's user brushes a map of the treemap)
    query = urllib.parse.urlencode({**ids, "layer": target, "examples": ",".join(map(str, base["examples"][:5]))})
    cells = json.loads(server.request("GET", ROOT + "treemap?" + query)[1])["cells"]
    channels = [c["channel"] for c in sorted(cells, key=lambda c: (-len(c["members"]), c["channel"]))]
    first_s, first, error, attempts, first_request_s = 0.0, None, None, 0, None
    while first is None and attempts < min(5, len(channels)):  # a map all zero in the area (random weights) answers 400
        seconds, first, error = post(channels[0], "sgd")
        first_s, attempts = first_s + seconds, attempts + 1
        first_request_s = seconds if first_request_s is None else first_request_s
        if first is None:
            channels = channels[1:]
    result = {"run": run["run"], "analysis": ids, "target_layer": target, "earlier_layer": base["earlier_layer"],
              "area": base["area"], "examples": base["examples"], "first_s": round(first_s, 3), "first_attempts": attempts,
              "first_request_s": None if first_request_s is None else round(first_request_s, 3)}
    if first is None:
        result["first_error"] = error
    later, quad, refined, ranked, correlations, same_top, errors, steps, losses = [], [], [], [], [], [], [], [], ([], [])
    rest = iter(channels[1:])
    for channel in rest:  # the dashboard's default ("preview"): quadratic, then SGD on the same map
        if len(quad) >= maps:
            break
        s_quad, q, e1 = post(channel, "quadratic")
        s_sgd, sgd, e2 = post(channel, "sgd")
        if sgd is None or q is None:
            errors.append(e1 or e2)
            continue
        quad.append(round(s_quad, 3))
        refined.append(round(s_sgd, 3))
        ranked += [len(sgd["ranking"]), len(q["ranking"])]
        correlations.append(round(spearman(sgd["scores"], q["scores"]), 3))
        same_top.append(sgd["ranking"][0]["channel"] == q["ranking"][0]["channel"])
        steps.append(sgd["params"].get("steps_run"))
        losses[0].append(round(objective(sgd), 4))
        losses[1].append(round(objective(q), 4))
    for channel in rest:  # SGD alone on maps not asked before
        if len(later) >= maps:
            break
        s_sgd, sgd, e1 = post(channel, "sgd")
        if sgd is None:
            errors.append(e1)
            continue
        later.append(round(s_sgd, 3))
        ranked.append(len(sgd["ranking"]))
    result.update(later_sgd_s=later, quadratic_s=quad, sgd_after_quadratic_s=refined, ranked=ranked, rank_correlation=correlations,
                  same_top_map=same_top, sgd_steps_run=steps, sgd_objective=losses[0], quadratic_objective=losses[1], threads=threads,
                  errors=sorted(set(errors))[:3], **server.close())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-run", default="/tmp/b18/runs/demo")
    parser.add_argument("--resnet50-logdir", help="a logdir written by an earlier run (default: written now into a temporary one)")
    parser.add_argument("--maps", type=int, default=3, help="later feature maps timed per mode")
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count()}
    if not os.path.isdir(args.demo_run):
        raise SystemExit(f"no run at {args.demo_run}: make one with 'aevis demo --logdir {args.demo_run}'")
    demo_logdir = tempfile.mkdtemp(prefix="aevis-bench-contribution-")
    shutil.copytree(args.demo_run, os.path.join(demo_logdir, "demo"))
    results["demo"] = run_bench(demo_logdir, DEFAULT_TARGETS[0], args.maps)
    if not args.skip_resnet50:
        logdir = args.resnet50_logdir or tempfile.mkdtemp(prefix="aevis-bench-contribution-r50-")
        if not os.path.isdir(os.path.join(logdir, "resnet50")):
            from bench_routes import write_resnet50_run

            started = time.perf_counter()
            write_resnet50_run(logdir, steps=5)
            results["resnet50_written_s"] = round(time.perf_counter() - started, 1)
        results["resnet50"] = run_bench(logdir, DEFAULT_TARGETS[1], args.maps)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
