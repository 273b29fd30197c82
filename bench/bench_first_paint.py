"""Time to first river paint of the AEVis dashboard on a ResNet-101 run, in headless Chromium.

Writes a ResNet-101 analysis (random weights, small images: the dashboard's cost depends
on the number of layers, not on the weights) with the real engine and writer, serves it
with a real ``tensorboard`` process, then opens ``#aevis`` in Debian's Chromium (driven
by Playwright) several times and reports:

- ``wall_s``: from ``page.goto`` to the river's paths in the DOM, seen by Playwright
  (TensorBoard's own page load included);
- ``in_page_s``: from the top page's navigation start to the dashboard's
  ``aevis-river-painted`` mark (set once the river's paths are in the DOM; the browser
  paints them in the next frame);
- ``dashboard_s``: from the start of the plugin iframe's navigation to that mark: the
  dashboard's own share (bundle load, ``runs``, then ``analysis`` + ``graph`` +
  ``river`` in parallel, layout, drawing), without TensorBoard's page shell.

The first load hits TensorBoard with cold caches; later loads are reported separately.
Goal: at most 1.5 s. Usage: ``.venv/bin/python bench/bench_first_paint.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
RUN, ANALYSIS = "resnet101", "resnet101-random"


def write_resnet101_run(logdir: str, size: int, steps: int) -> int:
    """Extract and log a 3-datapath ResNet-101 analysis; returns the number of gated layers."""
    import numpy as np
    import torch
    import torchvision

    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    torch.manual_seed(0)
    model = torchvision.models.resnet101(weights=None).eval()
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, size, size), dtype=np.float32))
    analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], method="constrained",
                                 steps=steps, class_names=[f"class{i}" for i in range(1000)])
    add_analysis(os.path.join(logdir, RUN), ANALYSIS, analysis, 0, model=model, save_model=False)
    return len(analysis.layers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_runs(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tensorboard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/data/plugin/aevis/runs", timeout=30) as r:
                if json.loads(r.read()).get("runs"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"tensorboard served no AEVis run within {timeout} s")


MEASURE_JS = """async () => {
  const mark = performance.getEntriesByName('aevis-river-painted')[0];
  return {mark_ms: mark ? mark.startTime : null, origin_ms: performance.timeOrigin};
}"""


def measure(browser, url: str) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url + "/#aevis")
        page.wait_for_selector('iframe[src*="plugin_entry.html?name=aevis"]', timeout=120_000)
        frame = page.query_selector('iframe[src*="plugin_entry.html?name=aevis"]').content_frame()
        frame.wait_for_selector("path.river-path", timeout=120_000)
        wall = time.perf_counter() - start
        inner = frame.evaluate(MEASURE_JS)
        top_origin = page.evaluate("performance.timeOrigin")
        if inner["mark_ms"] is None:
            raise SystemExit("the dashboard drew no river (no aevis-river-painted mark)")
        in_page = (inner["origin_ms"] + inner["mark_ms"] - top_origin) / 1000
        return {"wall_s": round(wall, 3), "in_page_s": round(in_page, 3),
                "dashboard_s": round(inner["mark_ms"] / 1000, 3),
                "paths": len(frame.query_selector_all("path.river-path")),
                "graph_nodes_drawn": len(frame.query_selector_all("g.graph-node"))}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="page loads to time (default 5)")
    parser.add_argument("--size", type=int, default=64, help="image size of the analysed images (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="extraction steps (default 3; weights are random anyway)")
    parser.add_argument("--logdir", help="reuse (or create) this logdir instead of a temporary one")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    logdir = args.logdir or tempfile.mkdtemp(prefix="aevis-bench-")
    layers = None
    if not os.path.isdir(os.path.join(logdir, RUN)):
        t = time.perf_counter()
        layers = write_resnet101_run(logdir, args.size, args.steps)
        print(f"wrote {RUN} ({layers} gated layers) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    with open(os.path.join(logdir, "tensorboard-bench.log"), "wb") as log:
        proc = subprocess.Popen([tensorboard, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_runs(url, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                loads = [measure(browser, url) for _ in range(max(1, args.repeats))]
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    warm = loads[1:] or loads
    result = {
        "run": RUN, "gated_layers": layers, "image_size": args.size, "goal_s": 1.5,
        "cold": loads[0],
        "warm_median_wall_s": statistics.median(l["wall_s"] for l in warm),
        "warm_median_in_page_s": statistics.median(l["in_page_s"] for l in warm),
        "warm_median_dashboard_s": statistics.median(l["dashboard_s"] for l in warm),
        "loads": loads,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
