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
Interleaved with the AEVis loads, in the same browser and on the same logdir:

- TensorBoard *without* AEVis (its first-party plugins only): TensorBoard's own shell
  (``tb_dom_ready``, ``tb_plugins_listed``);
- TensorBoard with a *null plugin* instead of AEVis (defined here: an es-module plugin whose
  ``render()`` adds one ``div``, no request of its own): the same totals and phases
  (``iframe_nav_start``, ``bundle_loaded``, ``start``, ``painted``), the first paint that any
  TensorBoard plugin can reach on this machine;
- with ``--baseline DIR``, AEVis served from another checkout (its ``tensorboard_plugin_aevis``
  on ``PYTHONPATH``, e.g. a ``git worktree`` of an older commit): old and new measured side
  by side.
The last lines say where the time to the painted river goes: TensorBoard's script
evaluated, the plugins listing answered, the plugin iframe started, the dashboard's first
data in, the river painted (each at its time and + the ms since the previous milestone).
Goal: first river paint at most 1.5 s. Usage:
``.venv/bin/python bench/bench_first_paint.py [--repeats 5] [--logdir DIR] [--baseline DIR]``.
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

NULL_PLUGIN = "nullpaint"
NULL_MARKS = ("null-start", "null-painted")
# The null plugin's whole dashboard: one div, and the marks at the same moments as AEVis's
# aevis-start (render() called) and aevis-river-painted (the frame after the DOM change).
NULL_INDEX_JS = b"""export function render() {
  performance.mark("null-start");
  const div = document.createElement("div");
  div.className = "null-painted";
  div.textContent = "null plugin";
  document.body.appendChild(div);
  requestAnimationFrame(() => setTimeout(() => performance.mark("null-painted"), 0));
}
"""


def null_plugin_class():
    """A TensorBoard plugin class that is active and serves ``NULL_INDEX_JS`` as its es module."""
    from tensorboard.backend import http_util
    from tensorboard.plugins import base_plugin
    from werkzeug import wrappers

    class NullPlugin(base_plugin.TBPlugin):
        plugin_name = NULL_PLUGIN

        def __init__(self, context):
            pass

        def get_plugin_apps(self):
            @wrappers.Request.application
            def index_js(request):
                return http_util.Respond(request, NULL_INDEX_JS, "text/javascript")

            return {"/index.js": index_js}

        def is_active(self):
            return True

        def frontend_metadata(self):
            return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Null")

    return NullPlugin

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


def open_dashboard(page, url: str, plugin: str = "aevis"):
    """Navigate to ``plugin``'s tab and wait for its painted first view; returns (seconds, frame)."""
    start = time.perf_counter()
    page.goto(f"{url}/#{plugin}")
    iframe = f'iframe[src*="plugin_entry.html?name={plugin}"]'
    page.wait_for_selector(iframe, timeout=120_000)
    frame = page.query_selector(iframe).content_frame()
    frame.wait_for_selector("div.null-painted" if plugin == NULL_PLUGIN else "path.river-path", timeout=120_000)
    wall = time.perf_counter() - start
    frame.wait_for_function(PAINTED_JS.replace("aevis-river-painted", "null-painted") if plugin == NULL_PLUGIN else PAINTED_JS,
                            timeout=60_000)
    return wall, frame


def _ms(value) -> float | None:
    return None if value is None else round(value, 1)


def timeline(page, frame, plugin: str = "aevis") -> dict:
    """The load's phases in ms from the top page's navigation start (see the module docstring)."""
    top, inner = page.evaluate(TIMELINE_JS), frame.evaluate(TIMELINE_JS)
    shift = inner["origin"] - top["origin"]
    if plugin == NULL_PLUGIN:  # the null plugin's marks under AEVis's names for its two phases
        inner["marks"] = {"aevis-start": inner["marks"].get("null-start"), "aevis-river-painted": inner["marks"].get("null-painted")}
    missing = [m for m in (MARKS[:1] + MARKS[-1:] if plugin == NULL_PLUGIN else MARKS) if inner["marks"].get(m) is None]
    if missing:
        raise SystemExit(f"the dashboard made no {', '.join(missing)} mark: rebuild the bundle (cd frontend && npm run build)")

    def top_resource(fragment: str) -> dict | None:
        return next((r for r in top["resources"] if fragment in r["url"]), None)

    def mark(name: str) -> float | None:
        at = inner["marks"].get(name)
        return None if at is None else _ms(at + shift)

    tb_script = next((r for r in top["resources"] if "/index.js" in r["url"] and "/data/plugin/" not in r["url"]), None)
    listing = top_resource("/data/plugins_listing")
    bundle_path = f"/data/plugin/{NULL_PLUGIN}/index.js" if plugin == NULL_PLUGIN else "/data/plugin/aevis/static/index.js"
    bundle = next((r for r in inner["resources"] if r["url"].split("?")[0].endswith(bundle_path)), None)
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
        "start": mark("aevis-start"),
        "runs": mark("aevis-runs"),
        "data": mark("aevis-data"),
        "drawn": mark("aevis-river-drawn"),
        "painted": mark("aevis-river-painted"),
    }
    painted = inner["marks"]["aevis-river-painted"]
    return {"full_page_s": round((painted + shift) / 1000, 3), "dashboard_s": round(painted / 1000, 3),
            "phases_ms": phases, "routes_ms": routes}


def measure(browser, url: str, plugin: str = "aevis") -> dict:
    """One load of ``plugin``'s tab in a fresh browser context (empty HTTP cache): wall time and timeline."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        wall, frame = open_dashboard(page, url, plugin)
        result = {"wall_s": round(wall, 3), **timeline(page, frame, plugin)}
        if plugin != NULL_PLUGIN:
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


def serve_tensorboard(plugins: str, argv: list) -> None:
    """Run TensorBoard in this process with its first-party plugins, plus the null plugin when
    ``plugins == "null"``; ``argv``: TensorBoard's command line (``--logdir`` ...)."""
    from tensorboard import default, program

    extra = [null_plugin_class()] if plugins == "null" else []
    tb = program.TensorBoard(plugins=default.get_static_plugins() + extra)
    tb.configure(argv=[sys.argv[0]] + argv)
    sys.exit(tb.main())


def start_tensorboard(logdir: str, port: int, log, plugins: str = "aevis", pythonpath: str | None = None) -> subprocess.Popen:
    """A ``tensorboard`` process on ``port``. ``plugins``: "aevis" (the installed entry points:
    AEVis, from ``pythonpath`` when given), "none" (TensorBoard's first-party plugins only) or
    "null" (those and the null plugin)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(pythonpath)] + [p for p in [env.get("PYTHONPATH")] if p])
    if plugins == "aevis":
        command = [os.path.join(os.path.dirname(sys.executable), "tensorboard")]
    else:
        command = [sys.executable, os.path.abspath(__file__), "--serve", plugins, "--"]
    return subprocess.Popen(command + ["--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


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


def summarise(loads: list) -> dict:
    """Warm medians (every load but the first) of a list of ``measure`` results, and the cold first load."""
    warm = loads[1:] or loads
    return {
        "warm_loads": len(warm),
        "warm_median_full_page_s": statistics.median(l["full_page_s"] for l in warm),
        "warm_median_dashboard_s": statistics.median(l["dashboard_s"] for l in warm),
        "warm_median_wall_s": statistics.median(l["wall_s"] for l in warm),
        "warm_median_phases_ms": median_phases(warm),
        "cold": loads[0],
    }


def load_average() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":  # a TensorBoard process of start_tensorboard
        serve_tensorboard(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="page loads to time (default 5)")
    parser.add_argument("--size", type=int, default=64, help="image size of the analysed images (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="extraction steps (default 3; weights are random anyway)")
    parser.add_argument("--logdir", help="reuse (or create) this logdir instead of a temporary one")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time AEVis served from this checkout (its tensorboard_plugin_aevis put first on PYTHONPATH)")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "tensorboard_plugin_aevis", "static", "index.js")):
        raise SystemExit(f"{args.baseline} holds no tensorboard_plugin_aevis/static/index.js")
    from playwright.sync_api import sync_playwright

    logdir = args.logdir or tempfile.mkdtemp(prefix="aevis-bench-")
    layers = None
    if not os.path.isdir(os.path.join(logdir, RUN)):
        t = time.perf_counter()
        layers = write_resnet101_run(logdir, args.size, args.steps)
        print(f"wrote {RUN} ({layers} gated layers) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    servers = {"aevis": ("aevis", None), "tensorboard_alone": ("none", None), "null_plugin": ("null", None)}
    if args.baseline:
        servers["aevis_baseline"] = ("aevis", args.baseline)
    urls, procs = {}, {}
    load_before = load_average()
    with open(os.path.join(logdir, "tensorboard-bench.log"), "wb") as log:
        try:
            for name, (plugins, pythonpath) in servers.items():
                port = free_port()
                urls[name] = f"http://127.0.0.1:{port}"
                procs[name] = start_tensorboard(logdir, port, log, plugins, pythonpath)
            for name in ("aevis", "aevis_baseline"):
                if name in procs:
                    wait_for_runs(urls[name], procs[name])
            wait_for(urls["tensorboard_alone"], procs["tensorboard_alone"], "/data/plugins_listing", without_aevis,
                     "tensorboard (without AEVis)")
            wait_for(urls["null_plugin"], procs["null_plugin"], "/data/plugins_listing",
                     lambda listing: NULL_PLUGIN in listing, "tensorboard (null plugin)")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                loads = {name: [] for name in servers}
                for _ in range(max(1, args.repeats)):  # interleaved: every server sees the same machine load
                    for name, (plugins, _path) in servers.items():
                        if plugins == "none":
                            loads[name].append(measure_shell_alone(browser, urls[name]))
                        else:
                            loads[name].append(measure(browser, urls[name], NULL_PLUGIN if plugins == "null" else "aevis"))
                main_thread = profile(browser, urls["aevis"])
                browser.close()
            if layers is None:  # asked after the loads: the first load must find TensorBoard's caches cold
                query = urllib.parse.urlencode({"run": RUN, "analysis": ANALYSIS, "method": "constrained", "step": 0})
                with urllib.request.urlopen(f"{urls['aevis']}/data/plugin/aevis/analysis?{query}", timeout=120) as r:
                    layers = len(json.loads(r.read())["layers"])
        finally:
            for process in procs.values():
                process.terminate()
                process.wait(timeout=30)
    alone = loads.pop("tensorboard_alone")
    summaries = {name: summarise(l) for name, l in loads.items()}
    aevis = summaries["aevis"]
    full, dashboard = aevis["warm_median_full_page_s"], aevis["warm_median_dashboard_s"]
    result = {
        "run": RUN, "gated_layers": layers, "image_size": args.size, "goal_s": GOAL_S,
        "load_average_before_after": [load_before, load_average()],
        **{k: v for k, v in aevis.items() if k != "cold"},
        "profiled_load_main_thread_ms": main_thread,
        "tensorboard_without_aevis_warm_median_ms": {k: _ms(statistics.median(a[k] for a in (alone[1:] or alone)))
                                                     for k in ("tb_dom_ready", "tb_plugins_listed")},
        "null_plugin": {k: v for k, v in summaries["null_plugin"].items() if k != "cold"},
        **({"aevis_baseline": {k: v for k, v in summaries["aevis_baseline"].items() if k != "cold"}}
           if "aevis_baseline" in summaries else {}),
        "cold": aevis["cold"],
        "loads": loads,
    }
    print(json.dumps(result, indent=2))
    shell = aevis["warm_median_phases_ms"]["iframe_nav_start"] / 1000
    print(f"load average before / after: {result['load_average_before_after'][0]} / {result['load_average_before_after'][1]}")
    print(f"first river paint (median of {aevis['warm_loads']} warm loads): full page {full:.3f} s "
          f"(goal <= {GOAL_S} s: {'met' if full <= GOAL_S else 'NOT met'}); TensorBoard's shell until the plugin iframe "
          f"starts {shell:.3f} s; plugin iframe navigation start to river paint {dashboard:.3f} s "
          f"({'within' if dashboard <= GOAL_S else 'over'} the goal on its own). Cold first load: full page "
          f"{aevis['cold']['full_page_s']:.3f} s, dashboard {aevis['cold']['dashboard_s']:.3f} s.")
    print(f"where the time goes (warm median): {where_the_time_goes(aevis['warm_median_phases_ms'])}")
    print(f"where the time goes (cold load): {where_the_time_goes(aevis['cold']['phases_ms'])}")
    floor = result["tensorboard_without_aevis_warm_median_ms"]
    print(f"TensorBoard without AEVis (warm median of {len(alone[1:] or alone)} loads): its script evaluated at "
          f"{floor['tb_dom_ready']:.0f} ms, its plugins listing answered at {floor['tb_plugins_listed']:.0f} ms; with AEVis: "
          f"{aevis['warm_median_phases_ms']['tb_dom_ready']:.0f} / {aevis['warm_median_phases_ms']['tb_plugins_listed']:.0f} ms")
    for name, label in (("null_plugin", "null plugin (one div, no request)"), ("aevis_baseline", f"AEVis from {args.baseline}")):
        if name not in summaries:
            continue
        other, phases = summaries[name], summaries[name]["warm_median_phases_ms"]
        print(f"{label}, side by side (warm median): full page {other['warm_median_full_page_s']:.3f} s (AEVis {full:.3f} s), "
              f"plugin iframe start {phases['iframe_nav_start']:.0f} ms (AEVis {aevis['warm_median_phases_ms']['iframe_nav_start']:.0f}), "
              f"bundle loaded {phases['bundle_loaded']:.0f} ms (AEVis {aevis['warm_median_phases_ms']['bundle_loaded']:.0f}), "
              f"render called {phases['start']:.0f} ms (AEVis {aevis['warm_median_phases_ms']['start']:.0f}), "
              f"iframe start to paint {other['warm_median_dashboard_s']:.3f} s (AEVis {dashboard:.3f} s)")


if __name__ == "__main__":
    main()
