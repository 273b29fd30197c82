"""Load and fault benchmark of the AEVis routes on a real ``tensorboard --logdir`` (issue #18).

On a copy of a logged run (default: the demo's; make it with
``aevis demo --logdir /tmp/b18/runs/demo``), each phase on a freshly started
``tensorboard --logdir <copy> --host 127.0.0.1 --port <free>`` (otherwise default flags:
the Rust data server), loopback traffic only, every loop bounded:

- ``startup``: seconds from starting the process until ``/data/plugins_listing`` answers,
  with every installed plugin and with all but AEVis (its entry point not loaded),
  ``--startup-repeats`` times each, alternating; medians;
- ``load``: ``--clients`` threads x ``--requests`` GETs, each a random route (runs,
  analysis, image, graph, river, treemap, neuron, activation_map, learned_feature,
  reference_image) with random valid parameters; the first pass on the fresh server is
  ``cold``, the same clients sending the same requests again ``warm``; latency p50 / p95 /
  p99 / max, 5xx count, also per route; before them ``floor``: the same clients each
  sending as many ``GET /data/logdir`` (TensorBoard's own core route, which only answers
  its logdir): the latency any route pays on this machine under this load (the plugin
  reads the analyses ahead meanwhile, as it does whenever the server is idle after
  start-up); ``warm_over_floor``: warm p50 and p99 over the floor's; ``cold_at_once``:
  the same requests on another fresh server, sent the moment ``runs`` lists the run (no
  idle second: every first read happens inside the load);
- ``contribution``: 2 and then 10 simultaneous ``POST contribution`` (SGD, every example,
  a 4x4 area, as the dashboard sends it) each on a fresh server: status counts (only 200
  and 429 allowed) and seconds;
- ``faults``: one server over copies of the run whose model artifact is damaged
  (``program.json`` / ``weights.pt`` a directory, a symbolic-link loop, truncated,
  oversized, unreadable when not root): every ``POST contribution`` must answer 4xx JSON;
- peak RSS of TensorBoard's Python process and of it plus its data server (sampled
  every 20 ms in every phase).

Prints one JSON object; exit status 1 when a 5xx, a 409 among the simultaneous requests,
or a fault answered other than 4xx was seen.

    .venv/bin/python bench/bench_load.py [--run /tmp/b18/runs/demo] [--clients 50] [--requests 40]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

ROOT = "/data/plugin/aevis/"
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0
LAUNCH = """
import sys
from importlib import metadata
from tensorboard import default, program
dynamic = [e for e in metadata.entry_points(group="tensorboard_plugins")
           if sys.argv[1] == "with" or not e.value.startswith("tensorboard_plugin_aevis")]
plugins = default.get_static_plugins() + [e.load() for e in dynamic]
if sys.argv[2] == "cold":
    from tensorboard_plugin_aevis.aevis_plugin import AEVisPlugin
    AEVisPlugin.warm_models = False
tb = program.TensorBoard(plugins=plugins)
tb.configure(argv=[None] + sys.argv[3:])
sys.exit(tb.main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler:
    """Peak RSS (bytes) of a process and of it plus its children, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak_main, self.peak_tree = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _children(self) -> List[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            main = self._rss(self.pid)
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, main + sum(self._rss(c) for c in self._children()))

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": round(self.peak_main / 2**20, 1), "peak_rss_with_data_server_mb": round(self.peak_tree / 2**20, 1)}


class Server:
    """A ``tensorboard`` process on a free loopback port; ``with_plugins=False``: without AEVis.
    ``Server.running`` holds those not closed yet (closed by :func:`main` on any failure)."""

    running: List["Server"] = []

    def __init__(self, logdir: str, with_plugins: bool = True, warm_models: bool = True):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "with" if with_plugins else "without", "warm" if warm_models else "cold", "--logdir", logdir,
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.rss = RssSampler(self.process.pid)
        Server.running.append(self)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(self.base + "/data/plugins_listing", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise SystemExit(f"tensorboard did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        self.startup_s = time.perf_counter() - started

    def wait_for_runs(self) -> dict:
        """The ``runs`` answer once the data server has loaded an analysis (bounded wait)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body, _ = self.request("GET", ROOT + "runs")
            if status == 200 and json.loads(body)["runs"]:
                return json.loads(body)
            time.sleep(0.2)
        raise SystemExit("the run was not loaded in time")

    def request(self, method: str, path: str, body: Optional[dict] = None) -> Tuple[int, bytes, float]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            status, payload = 599, str(e).encode()  # no answer at all counts as a server error
        return status, payload, time.perf_counter() - started

    def close(self) -> Dict[str, float]:
        if self in Server.running:
            Server.running.remove(self)
        rss = self.rss.stop()
        try:
            os.killpg(self.process.pid, 15)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        return rss


def percentiles(seconds: List[float]) -> Dict[str, float]:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 1), "requests": len(ordered)}


def discover(server: Server) -> Tuple[Dict[str, List[str]], dict]:
    """Valid GET paths per route, and a contribution request as the dashboard sends it."""
    runs = server.wait_for_runs()["runs"]
    routes: Dict[str, List[str]] = {r: [] for r in ("runs", "analysis", "image", "graph", "river", "treemap", "neuron",
                                                      "activation_map", "learned_feature", "reference_image")}
    routes["runs"].append(ROOT + "runs")
    contribution = None
    for run in runs:
        for entry in run["analyses"]:
            for step in entry["steps"]:
                ids = {"run": run["run"], "analysis": entry["name"], "method": entry["method"], "step": step}
                q = lambda **extra: urllib.parse.urlencode({**ids, **extra})  # noqa: E731
                status, body, _ = server.request("GET", ROOT + "analysis?" + q())
                analysis = json.loads(body)
                routes["analysis"].append(ROOT + "analysis?" + q())
                routes["graph"].append(ROOT + "graph?" + q())
                routes["river"].append(ROOT + "river?" + q())
                n = len(analysis["examples"])
                routes["image"] += [ROOT + "image?" + q(example=i) for i in range(n)]
                layers = analysis["layers"]
                routes["treemap"] += [ROOT + "treemap?" + q(layer=l["name"]) for l in layers]
                rng = random.Random(0)
                for l in layers:
                    for channel in rng.sample(range(l["channels"]), min(4, l["channels"])):
                        path = ROOT + "neuron?" + q(layer=l["name"], channel=channel)
                        routes["neuron"].append(path)
                        neuron = json.loads(server.request("GET", path)[1])
                        routes["activation_map"] += [ROOT + e["activation_map"] for e in neuron["examples"] if e["activation_map"]]
                        routes["learned_feature"] += [ROOT + f["url"] for f in neuron["learned_features"]]
                        routes["reference_image"] += [ROOT + f["reference_url"] for f in neuron["learned_features"]]
                if contribution is None and analysis["has_model"] and len(layers) >= 2:
                    target = layers[-2]
                    h, w = target["height"], target["width"]
                    y0, x0 = max(0, h // 2 - 2), max(0, w // 2 - 2)
                    contribution = {**ids, "target": "feature_map", "target_layer": target["name"], "channel": 0,
                                    "earlier_layer": layers[-3]["name"], "area": [y0, x0, min(h, y0 + 4), min(w, x0 + 4)],
                                    "examples": list(range(n)), "mode": "sgd"}
    return {r: sorted(set(p)) for r, p in routes.items() if p}, contribution


FLOOR_PATH = "/data/logdir"


def load_phase(server: Server, routes: Dict[str, List[str]], clients: int, requests: int, seed: int) -> List[Tuple[str, int, float]]:
    """(route, status, seconds) of ``clients`` threads each sending ``requests`` GETs, one after the other."""
    def client(k: int) -> List[Tuple[str, int, float]]:
        rng = random.Random(seed * 1000 + k)
        out = []
        for _ in range(requests):
            route = rng.choice(sorted(routes))
            status, _, seconds = server.request("GET", rng.choice(routes[route]))
            out.append((route, status, seconds))
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [r for rows in pool.map(client, range(clients)) for r in rows]


def summary(rows: List[Tuple[str, int, float]]) -> dict:
    statuses: Dict[str, int] = {}
    for _, status, _ in rows:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    by_route: Dict[str, List[float]] = {}
    for route, _, seconds in rows:
        by_route.setdefault(route, []).append(seconds)
    per_route = {r: {q: v for q, v in percentiles(s).items() if q in ("p50_ms", "p99_ms", "requests")} for r, s in sorted(by_route.items())}
    return {**percentiles([s for _, _, s in rows]), "statuses": statuses, "5xx": sum(1 for _, s, _ in rows if s >= 500),
            "per_route": per_route}


def simultaneous_posts(logdir: str, payload: dict, count: int) -> dict:
    server = Server(logdir)
    server.wait_for_runs()
    barrier = threading.Barrier(count)

    def post(_):
        barrier.wait()
        status, body, seconds = server.request("POST", ROOT + "contribution", payload)
        return status, seconds, (json.loads(body).get("error", "")[:200] if status != 200 else "")

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(post, range(count)))
    rss = server.close()
    statuses: Dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"statuses": statuses, "seconds_200": sorted(round(s, 2) for st, s, _ in answers if st == 200),
            "errors": sorted({e for st, _, e in answers if st not in (200, 429)}), **rss,
            "ok": all(st in (200, 429) for st, _, _ in answers)}


def damage(run_dir: str, kind: str) -> None:
    models = os.path.join(run_dir, "plugins", "aevis", "models")
    artifact = os.path.join(models, os.listdir(models)[0])
    program, weights = os.path.join(artifact, "program.json"), os.path.join(artifact, "weights.pt")
    if kind == "program_is_directory":
        os.remove(program)
        os.mkdir(program)
    elif kind == "weights_is_directory":
        os.remove(weights)
        os.mkdir(weights)
    elif kind == "program_symlink_loop":
        os.remove(program)
        os.symlink(program, program)
    elif kind == "weights_truncated":
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
    elif kind == "program_truncated":
        with open(program, "r+b") as f:
            f.truncate(os.path.getsize(program) // 2)
    elif kind == "weights_oversized":  # a sparse file over the size limit (no disk used)
        with open(weights, "r+b") as f:
            f.truncate((2 << 30) + 1)
    elif kind == "weights_unreadable":
        os.chmod(weights, 0)


def fault_phase(source: str, root: str, payload: dict) -> dict:
    kinds = ["program_is_directory", "weights_is_directory", "program_symlink_loop", "weights_truncated",
             "program_truncated", "weights_oversized"] + ([] if os.geteuid() == 0 else ["weights_unreadable"])
    logdir = os.path.join(root, "faults")
    for kind in kinds:
        shutil.copytree(source, os.path.join(logdir, kind), symlinks=True)
        damage(os.path.join(logdir, kind), kind)
    server = Server(logdir)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:  # every copy listed
        status, body, _ = server.request("GET", ROOT + "runs")
        if status == 200 and len(json.loads(body)["runs"]) == len(kinds):
            break
        time.sleep(0.2)
    answers = {}
    for kind in kinds:
        status, body, _ = server.request("POST", ROOT + "contribution", dict(payload, run=kind))
        try:
            error = json.loads(body).get("error", "")
        except ValueError:
            error = body[:200].decode(errors="replace")
        answers[kind] = {"status": status, "error": error[:240]}
    server.close()
    return {"answers": answers, "ok": all(400 <= a["status"] < 500 for a in answers.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="/tmp/b18/runs/demo", help="a logged run directory to copy (default: the demo's)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="GETs per client and pass")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["startup", "load", "contribution", "faults"])
    parser.add_argument("--no-warm-models", action="store_true",
                        help="serve with AEVisPlugin.warm_models off (no model read in the background when an analysis opens)")
    args = parser.parse_args()
    if not os.path.isdir(args.run):
        raise SystemExit(f"no run at {args.run}: make one with 'aevis demo --logdir {args.run}'")
    root = tempfile.mkdtemp(prefix="aevis-bench-load-")
    logdir = os.path.join(root, "runs")
    shutil.copytree(args.run, os.path.join(logdir, os.path.basename(os.path.normpath(args.run))), symlinks=True)
    result: dict = {"run": args.run, "cpu_count": os.cpu_count(), "clients": args.clients, "requests_per_client": args.requests,
                    "warm_models": not args.no_warm_models}
    ok = True
    try:
        if "startup" not in args.skip:
            times = {"with_aevis": [], "without_aevis": []}
            for _ in range(args.startup_repeats):
                for key, flag in (("with_aevis", True), ("without_aevis", False)):
                    server = Server(logdir, with_plugins=flag)
                    times[key].append(server.startup_s)
                    server.close()
            result["startup_s"] = {k: {"median": round(sorted(v)[len(v) // 2], 2), "all": [round(x, 2) for x in v]} for k, v in times.items()}

        server = Server(logdir)
        routes, payload = discover(server)
        server.close()
        result["routes"] = {r: len(p) for r, p in routes.items()}

        if "load" not in args.skip:
            server = Server(logdir, warm_models=not args.no_warm_models)
            floor = load_phase(server, {"floor": [FLOOR_PATH]}, args.clients, args.requests, args.seed)  # no AEVis request yet
            cold = load_phase(server, routes, args.clients, args.requests, args.seed)
            warm = load_phase(server, routes, args.clients, args.requests, args.seed)  # the same requests again
            load = {"cold": summary(cold), "warm": summary(warm), "floor": summary(floor)}
            load["warm_over_floor"] = {q: round(load["warm"][q] / max(load["floor"][q], 1e-3), 2) for q in ("p50_ms", "p99_ms")}
            result["load"] = {**load, **server.close()}
            server = Server(logdir, warm_models=not args.no_warm_models)
            server.wait_for_runs()  # the run is listed: the clients start at once, no idle time to read ahead
            result["load"]["cold_at_once"] = summary(load_phase(server, routes, args.clients, args.requests, args.seed))
            server.close()
            ok &= all(result["load"][phase]["5xx"] == 0 for phase in ("cold", "warm", "cold_at_once"))

        if payload is None:
            result["contribution"] = "skipped: no analysis with a saved model in the run"
        elif "contribution" not in args.skip:
            result["contribution"] = {str(n): simultaneous_posts(logdir, payload, n) for n in (2, 10)}
            ok &= all(v["ok"] for v in result["contribution"].values())
        if payload is not None and "faults" not in args.skip:
            result["faults"] = fault_phase(os.path.join(logdir, os.listdir(logdir)[0]), root, payload)
            ok &= result["faults"]["ok"]
    finally:
        for server in list(Server.running):
            server.close()
        shutil.rmtree(root, ignore_errors=True)
    result["ok"] = bool(ok)
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
