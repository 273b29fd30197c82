"""Time to first river paint of the AEVis dashboard on a ResNet-101 run, in headless Chromium.

Writes a ResNet-101 analysis (random weights, small images: the dashboard's cost depends
on the number of layers, not on the weights) with the real engine and writer, serves it
with a real ``tensorboard`` process, then opens ``#aevis`` in Debian's Chromium (driven
by Playwright) several times. Every load reports, in ms from the top page's navigation
start (one clock: the iframe's marks are shifted by the difference of time origins):

- TensorBoard's shell: ``tb_script_loaded`` (its 1.9 MB ``index.js`` downloaded),
  ``tb_dom_ready`` (DOMContentLoaded: that script evaluated), ``tb_plugins_listed``
  (``/data/plugins_listing`` answered), ``iframe_nav_start`` (TensorBoard creates the
  plugin iframe);
- the dashboard: ``bundle_loaded`` (our ``static/index.js`` downloaded), ``start``
  (evaluated, ``render()`` called), ``runs`` (the run list answered), ``data`` (the
  ``analysis``, ``graph`` and ``river`` answers, requested in parallel, are in),
  ``drawn`` (the river's paths are in the DOM), ``painted`` (the frame that paints
  them is done);
- ``routes``: start and end of each of our requests, to show what runs in parallel.

Totals: ``full_page_s`` (top navigation start to the painted river: what a user who
opens TensorBoard on the AEVis tab waits), ``dashboard_s`` (the plugin iframe's
navigation start to the painted river: the part this plugin controls) and ``wall_s``
(``page.goto`` to the river seen by Playwright). One extra load runs under Chromium's
sampling profiler and splits main-thread time by script (TensorBoard's bundle, ours,
native work such as parsing, style and layout, garbage collection, idle).

The first load hits TensorBoard with cold caches; later loads are summarised as medians.
The same loads of TensorBoard *without* AEVis (its first-party plugins only, same logdir,
same browser) give TensorBoard's own shell time, the floor under any plugin's first paint.
The last lines say where the time to the painted river goes: TensorBoard's script
evaluated, the plugins listing answered, the plugin iframe started, the dashboard's first
data in, the river painted (each at its time and + the ms since the previous milestone).
Goal: first river paint at most 1.5 s. Usage:
``.venv/bin/python bench/bench_first_paint.py [--repeats 5] [--logdir DIR]``.
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
import urllib.parse
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
RUN, ANALYSIS = "resnet101", "resnet101-random"
GOAL_S = 1.5


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


def wait_for(url: str, proc: subprocess.Popen, path: str, ready, what: str, timeout: float = 120) -> None:
    """Poll ``url + path`` until ``ready(its JSON)`` is true; SystemExit when ``proc`` exits or after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + path, timeout=30) as r:
                if ready(json.loads(r.read())):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} was not ready ({path}) within {timeout} s")


def wait_for_runs(url: str, proc: subprocess.Popen) -> None:
    wait_for(url, proc, "/data/plugin/aevis/runs", lambda answer: bool(answer.get("runs")), "tensorboard")


def without_aevis(listing: dict) -> bool:
    if "aevis" in listing:
        raise SystemExit("the TensorBoard started without AEVis lists AEVis")
    return True


MARKS = ("aevis-start", "aevis-runs", "aevis-data", "aevis-river-drawn", "aevis-river-painted")
ROUTES = ("runs", "analysis", "graph", "river")

TIMELINE_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    origin: performance.timeOrigin,
    dom_ready: nav ? nav.domContentLoadedEventEnd : null,
    marks: Object.fromEntries(performance.getEntriesByType('mark').map(m => [m.name, m.startTime])),
    resources: performance.getEntriesByType('resource').map(r => ({url: r.name, start: r.startTime, end: r.responseEnd})),
  };
}"""

PAINTED_JS = "() => performance.getEntriesByName('aevis-river-painted').length > 0"


def open_dashboard(page, url: str):
    """Navigate to the AEVis tab and wait for the painted river; returns (seconds, frame)."""
    start = time.perf_counter()
    page.goto(url + "/#aevis")
    page.wait_for_selector('iframe[src*="plugin_entry.html?name=aevis"]', timeout=120_000)
    frame = page.query_selector('iframe[src*="plugin_entry.html?name=aevis"]').content_frame()
    frame.wait_for_selector("path.river-path", timeout=120_000)
    wall = time.perf_counter() - start
    frame.wait_for_function(PAINTED_JS, timeout=60_000)
    return wall, frame


def _ms(value) -> float | None:
    return None if value is None else round(value, 1)


def timeline(page, frame) -> dict:
    """The load's phases in ms from the top page's navigation start (see the module docstring)."""
    top, inner = page.evaluate(TIMELINE_JS), frame.evaluate(TIMELINE_JS)
    shift = inner["origin"] - top["origin"]
    missing = [m for m in MARKS if m not in inner["marks"]]
    if missing:
        raise SystemExit(f"the dashboard made no {', '.join(missing)} mark: rebuild the bundle (cd frontend && npm run build)")

    def top_resource(fragment: str) -> dict | None:
        return next((r for r in top["resources"] if fragment in r["url"]), None)

    tb_script = next((r for r in top["resources"] if "/index.js" in r["url"] and "/data/plugin/" not in r["url"]), None)
    listing = top_resource("/data/plugins_listing")
    bundle = next((r for r in inner["resources"] if r["url"].split("?")[0].endswith("/data/plugin/aevis/static/index.js")), None)
    routes = {}
    for r in inner["resources"]:
        route = r["url"].split("?")[0].rsplit("/data/plugin/aevis/", 1)[-1]
        if route in ROUTES and route not in routes:
            routes[route] = [_ms(r["start"] + shift), _ms(r["end"] + shift)]
    phases = {
        "tb_script_loaded": _ms(tb_script and tb_script["end"]),
        "tb_dom_ready": _ms(top["dom_ready"]),
        "tb_plugins_listed": _ms(listing and listing["end"]),
        "iframe_nav_start": _ms(shift),
        "bundle_loaded": _ms(bundle and bundle["end"] + shift),
        "start": _ms(inner["marks"]["aevis-start"] + shift),
        "runs": _ms(inner["marks"]["aevis-runs"] + shift),
        "data": _ms(inner["marks"]["aevis-data"] + shift),
        "drawn": _ms(inner["marks"]["aevis-river-drawn"] + shift),
        "painted": _ms(inner["marks"]["aevis-river-painted"] + shift),
    }
    painted = inner["marks"]["aevis-river-painted"]
    return {"full_page_s": round((painted + shift) / 1000, 3), "dashboard_s": round(painted / 1000, 3),
            "phases_ms": phases, "routes_ms": routes}


def measure(browser, url: str) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        wall, frame = open_dashboard(page, url)
        result = {"wall_s": round(wall, 3), **timeline(page, frame)}
        result["paths"] = len(frame.query_selector_all("path.river-path"))
        result["graph_nodes_drawn"] = len(frame.query_selector_all("g.graph-node"))
        return result
    finally:
        context.close()


SHELL_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const listing = performance.getEntriesByType('resource').find(r => r.name.includes('/data/plugins_listing'));
  return {dom_ready: nav ? nav.domContentLoadedEventEnd : null, listed: listing ? listing.responseEnd : null};
}"""


def start_tensorboard(logdir: str, port: int, log, with_aevis: bool = True) -> subprocess.Popen:
    """A ``tensorboard`` process on ``port``; without AEVis it loads TensorBoard's first-party plugins only."""
    if with_aevis:
        command = [os.path.join(os.path.dirname(sys.executable), "tensorboard")]
    else:
        command = [sys.executable, "-c", "import sys; from tensorboard import default, program; "
                   "tb = program.TensorBoard(plugins=default.get_static_plugins()); tb.configure(argv=sys.argv); tb.main()"]
    return subprocess.Popen(command + ["--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)


def measure_shell_alone(browser, url: str) -> dict:
    """One load of TensorBoard without AEVis: ms to its script evaluated and its plugins listing answered."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function("() => performance.getEntriesByType('resource').some(r => r.name.includes('/data/plugins_listing') && r.responseEnd > 0)",
                               timeout=120_000)
        timing = page.evaluate(SHELL_JS)
        return {"tb_dom_ready": _ms(timing["dom_ready"]), "tb_plugins_listed": _ms(timing["listed"])}
    finally:
        context.close()


def script_category(url: str) -> str:
    if "/data/plugin/aevis/" in url:
        return "aevis_bundle"
    if url.split("?")[0].endswith("/index.js"):
        return "tensorboard_bundle"
    return "other_script" if url else "native"


def profile(browser, url: str) -> dict:
    """One load under the sampling profiler: main-thread ms by category up to the painted river."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        cdp = context.new_cdp_session(page)
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 250})
        cdp.send("Profiler.start")
        open_dashboard(page, url)
        prof = cdp.send("Profiler.stop")["profile"]
    finally:
        context.close()
    special = {"(idle)": "idle", "(program)": "native", "(garbage collector)": "gc", "(root)": "native"}
    category = {}
    for node in prof["nodes"]:
        name, script = node["callFrame"]["functionName"], node["callFrame"]["url"]
        category[node["id"]] = special.get(name) or script_category(script)
    totals: dict = {}
    deltas = prof["timeDeltas"][1:] + [0]  # the time after each sample, until the next one
    for sample, delta in zip(prof["samples"], deltas):
        key = category[sample]
        totals[key] = totals.get(key, 0) + delta / 1000
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def median_phases(loads: list) -> dict:
    keys = loads[0]["phases_ms"].keys()
    return {k: _ms(statistics.median(l["phases_ms"][k] for l in loads if l["phases_ms"][k] is not None))
            for k in keys if any(l["phases_ms"][k] is not None for l in loads)}


WHERE = [("tb_dom_ready", "TensorBoard's script evaluated"), ("tb_plugins_listed", "plugins listing answered"),
         ("iframe_nav_start", "plugin iframe started"), ("data", "dashboard's first data in"),
         ("painted", "river painted")]


def where_the_time_goes(phases: dict) -> str:
    """One line: each milestone of ``WHERE`` at its time (ms from top navigation) and the ms since the previous."""
    parts, before = [], 0.0
    for key, label in WHERE:
        at = phases.get(key)
        if at is None:
            parts.append(f"{label}: not seen")
            continue
        parts.append(f"{label} at {at:.0f} ms (+{at - before:.0f})")
        before = at
    return "; ".join(parts)


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
    with open(os.path.join(logdir, "tensorboard-bench.log"), "wb") as log:
        proc = start_tensorboard(logdir, port, log)
        alone_port = free_port()
        alone_url = f"http://127.0.0.1:{alone_port}"
        alone_proc = start_tensorboard(logdir, alone_port, log, with_aevis=False)
        try:
            wait_for_runs(url, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                wait_for(alone_url, alone_proc, "/data/plugins_listing", without_aevis, "tensorboard (without AEVis)")
                loads, alone = [], []
                for _ in range(max(1, args.repeats)):  # interleaved: both see the same machine load
                    loads.append(measure(browser, url))
                    alone.append(measure_shell_alone(browser, alone_url))
                main_thread = profile(browser, url)
                browser.close()
            if layers is None:  # asked after the loads: the first load must find TensorBoard's caches cold
                query = urllib.parse.urlencode({"run": RUN, "analysis": ANALYSIS, "method": "constrained", "step": 0})
                with urllib.request.urlopen(f"{url}/data/plugin/aevis/analysis?{query}", timeout=120) as r:
                    layers = len(json.loads(r.read())["layers"])
        finally:
            for process in (proc, alone_proc):
                process.terminate()
                process.wait(timeout=30)
    warm = loads[1:] or loads
    full = statistics.median(l["full_page_s"] for l in warm)
    dashboard = statistics.median(l["dashboard_s"] for l in warm)
    result = {
        "run": RUN, "gated_layers": layers, "image_size": args.size, "goal_s": GOAL_S,
        "warm_median_full_page_s": full,
        "warm_median_dashboard_s": dashboard,
        "warm_median_wall_s": statistics.median(l["wall_s"] for l in warm),
        "warm_median_phases_ms": median_phases(warm),
        "profiled_load_main_thread_ms": main_thread,
        "tensorboard_without_aevis_warm_median_ms": {k: _ms(statistics.median(a[k] for a in (alone[1:] or alone)))
                                                     for k in ("tb_dom_ready", "tb_plugins_listed")},
        "cold": loads[0],
        "loads": loads,
    }
    print(json.dumps(result, indent=2))
    shell = result["warm_median_phases_ms"]["iframe_nav_start"] / 1000
    print(f"first river paint (median of {len(warm)} warm loads): full page {full:.3f} s "
          f"(goal <= {GOAL_S} s: {'met' if full <= GOAL_S else 'NOT met'}); TensorBoard's shell until the plugin iframe "
          f"starts {shell:.3f} s; plugin iframe navigation start to river paint {dashboard:.3f} s "
          f"({'within' if dashboard <= GOAL_S else 'over'} the goal on its own). Cold first load: full page "
          f"{loads[0]['full_page_s']:.3f} s, dashboard {loads[0]['dashboard_s']:.3f} s.")
    print(f"where the time goes (warm median): {where_the_time_goes(result['warm_median_phases_ms'])}")
    print(f"where the time goes (cold load): {where_the_time_goes(loads[0]['phases_ms'])}")
    floor = result["tensorboard_without_aevis_warm_median_ms"]
    print(f"TensorBoard without AEVis (warm median of {len(alone[1:] or alone)} loads): its script evaluated at "
          f"{floor['tb_dom_ready']:.0f} ms, its plugins listing answered at {floor['tb_plugins_listed']:.0f} ms; with AEVis: "
          f"{result['warm_median_phases_ms']['tb_dom_ready']:.0f} / {result['warm_median_phases_ms']['tb_plugins_listed']:.0f} ms")


if __name__ == "__main__":
    main()
