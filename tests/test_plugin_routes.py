"""Routes of the AEVis plugin against runs written by the real writer, through TensorBoard's
own WSGI application and data providers; answers checked against the written Analysis."""

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image
from werkzeug.test import Client

from tensorboard_plugin_aevis import aevis_plugin
from run_fixtures import tensorboard_app, write_corrupt_run, write_small_run

ROOT = "/data/plugin/aevis/"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("runs"))
    small = write_small_run(path, run="small", name="cat->dog <b>&", steps=(0, 5), methods=("constrained", "dgr"))
    four = write_small_run(path, run="four", name="four", roles=("source", "adversarial", "target", "target"), seed=1)
    write_corrupt_run(path, run="corrupt")
    return path, small, four


@pytest.fixture(scope="module")
def client(logdir):
    app, close = tensorboard_app(logdir[0], data_server="python")
    yield Client(app)
    close()


def get(client, route, **params):
    return client.get(ROOT + route + ("?" + urllib.parse.urlencode(params) if params else ""))


def get_json(client, route, status=200, **params):
    response = get(client, route, **params)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    return json.loads(response.get_data(as_text=True))


def ids(small, method="constrained", step=0):
    return {"run": "small", "analysis": small.name, "method": method, "step": step}


def png(response) -> np.ndarray:
    assert response.status_code == 200 and response.mimetype == "image/png", response.get_data()[:200]
    return np.asarray(Image.open(io.BytesIO(response.get_data())))


# ----------------------------------------------------------------------- listing
def test_tab_is_listed_and_active(client):
    listing = json.loads(client.get("/data/plugins_listing").get_data(as_text=True))
    assert listing["aevis"]["enabled"] is True
    assert listing["aevis"]["tab_name"] == "AEVis"
    assert listing["aevis"]["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/aevis/static/index.js"}


def test_runs_lists_every_analysis_and_skips_the_corrupt_run(client, logdir):
    _, small, four = logdir
    answer = get_json(client, "runs")
    runs = {r["run"]: r["analyses"] for r in answer["runs"]}
    assert set(runs) == {"small", "four"}
    assert sorted((a["name"], a["method"], tuple(a["steps"])) for a in runs["small"]) == [
        (small.name, "constrained", (0, 5)), (small.name, "dgr", (0, 5))]
    assert runs["four"] == [{"name": "four", "method": "constrained", "steps": [0], "steps_with_model": [0]}]
    assert all(a["steps_with_model"] == [0, 5] for a in runs["small"])  # logged with the model at both steps


def test_analysis_manifest_matches_the_written_analysis(client, logdir):
    _, small, _ = logdir
    written = small.analyses[("dgr", 5)]
    answer = get_json(client, "analysis", **ids(small, "dgr", 5))
    assert [e["name"] for e in answer["examples"]] == [e.name for e in written.examples]
    assert [e["role"] for e in answer["examples"]] == ["source", "adversarial", "target"]
    assert [e["label"] for e in answer["examples"]] == [e.label for e in written.examples]
    np.testing.assert_allclose([e["kept_fraction"] for e in answer["examples"]], written.kept_fraction())
    assert [l["name"] for l in answer["layers"]] == [l.name for l in written.layers]
    assert answer["threshold"] == written.threshold and answer["method"] == "dgr"
    assert set(answer["distances"]) == {"0,1", "0,2", "1,2"}
    assert answer["has_model"] and answer["has_graph"] and answer["has_activation_maps"] and answer["has_learned_features"]
    # the user's analysis name comes back JSON-escaped, never as raw markup
    raw = get(client, "analysis", **ids(small, "dgr", 5)).get_data(as_text=True)
    assert "<b>" not in raw and "\\u003cb\\u003e" in raw and answer["analysis"] == small.name


def test_image_is_the_example_png(client, logdir):
    _, small, _ = logdir
    written = small.analyses[("constrained", 0)]
    pixels = png(get(client, "image", **ids(small), example=1))
    np.testing.assert_allclose(pixels.transpose(2, 0, 1) / 255.0, written.images[1], atol=1 / 255 + 1e-6)


def test_graph_marks_every_gated_layer(client, logdir):
    _, small, _ = logdir
    graph = get_json(client, "graph", **ids(small))
    gated = sorted(n["gated_layer"] for n in graph["nodes"] if n.get("gated_layer") is not None)
    assert gated == list(range(len(small.analyses[("constrained", 0)].layers)))
    node_ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in node_ids and e["target"] in node_ids for e in graph["edges"])


# ----------------------------------------------------------------------- river
def test_river_three_paths_rule_layout_keeps_d2_d3(client, logdir):
    _, small, _ = logdir
    answer = get_json(client, "river", **ids(small), examples="0,1,2")
    assert answer["layout"] == "rule"
    y = {p["role"]: np.array(p["y"]) for p in answer["paths"]}
    d = {k: np.array(v) for k, v in answer["distances"].items()}  # 0 source, 1 adversarial, 2 target
    np.testing.assert_allclose(y["target"] - y["source"], d["0,2"] * answer["scale"], atol=1e-5)
    total = d["0,1"] + d["1,2"]
    ok = total > 0
    np.testing.assert_allclose((y["adversarial"] - y["source"])[ok] * total[ok], (y["target"] - y["source"])[ok] * d["0,1"][ok], atol=1e-5)
    assert len(answer["layers"]) == len(y["source"])


def test_river_four_paths_least_squares_keeps_the_order(client, logdir):
    _, _, four = logdir
    answer = get_json(client, "river", run="four", analysis="four", method="constrained", step=0)
    assert answer["layout"] == "least_squares"
    assert answer["order"][0] == 0 and answer["order"][1] == 1  # source, adversarial, then the targets
    y = {p["example"]: np.array(p["y"]) for p in answer["paths"]}
    for upper, lower in zip(answer["order"], answer["order"][1:]):
        assert (y[upper] <= y[lower] + 1e-9).all()
    # the fitted screen distances, best scaled, are no worse than an even spacing in that order
    pairs = [tuple(map(int, k.split(","))) for k in answer["distances"]]
    D = np.array([answer["distances"][f"{i},{j}"] for i, j in pairs])  # (pairs, L)
    even = {e: float(rank) for rank, e in enumerate(answer["order"])}

    def residual(screen):
        s, d = screen.ravel(), D.ravel()
        a = max(float(s @ d) / float(s @ s), 0.0) if s @ s > 0 else 0.0
        return float(((a * s - d) ** 2).sum())

    fitted = np.array([np.abs(y[i] - y[j]) for i, j in pairs])
    spaced = np.array([np.full(D.shape[1], abs(even[i] - even[j])) for i, j in pairs])
    assert residual(fitted) <= residual(spaced) + 1e-9


# ----------------------------------------------------------------------- treemap
def test_treemap_cells_are_the_union_of_the_datapaths_with_their_activation_diff(client, logdir):
    _, small, _ = logdir
    written = small.analyses[("constrained", 5)]
    for layer_index, layer in enumerate(written.layers):
        answer = get_json(client, "treemap", **ids(small, step=5), layer=layer.name, examples="0,1,2", diff="1,0", width=300, height=200)
        binary = written.gates[layer_index] > written.threshold  # independent of Analysis.binary()
        union = np.flatnonzero(binary.any(axis=0))
        assert sorted(c["channel"] for c in answer["cells"]) == union.tolist()
        diff = written.max_activations[layer_index][1] - written.max_activations[layer_index][0]
        for cell in answer["cells"]:
            assert cell["members"] == np.flatnonzero(binary[:, cell["channel"]]).tolist()
            assert cell["activation_diff"] == pytest.approx(float(diff[cell["channel"]]), rel=1e-6, abs=1e-6)
            assert cell["contribution"] is None
        if union.size:
            assert sum(c["dx"] * c["dy"] for c in answer["cells"]) == pytest.approx(300 * 200, rel=1e-3)
            assert sum(s["dx"] * s["dy"] for s in answer["sets"]) == pytest.approx(300 * 200, rel=1e-3)


def test_treemap_defaults_and_single_datapath(client, logdir):
    _, small, _ = logdir
    layer = small.analyses[("constrained", 0)].layers[-1].name
    answer = get_json(client, "treemap", **ids(small), layer=layer)
    assert (answer["width"], answer["height"], answer["examples"], answer["diff"]) == (600, 400, [0, 1, 2], [0, 1])
    single = get_json(client, "treemap", **ids(small), layer=layer, examples="2")
    assert single["diff"] is None and all(c["activation_diff"] is None for c in single["cells"])


def test_treemap_cells_carry_the_stability_of_each_member(client, logdir, tmp_path):
    """Each cell's ``stability`` lists, per member datapath, the fraction of the K starts that
    selected the map, as logged by the fixture (in any order of ``examples``); null for one start."""
    from run_fixtures import write_run_with_stability_and_an_empty_layer

    written = write_run_with_stability_and_an_empty_layer(str(tmp_path))
    analysis = written.analyses[("constrained", 0)]
    app, close = tensorboard_app(str(tmp_path), data_server="python")
    try:
        stable = Client(app)
        seen = 0
        for layer_index, layer in enumerate(analysis.layers):
            answer = get_json(stable, "treemap", run=written.run, analysis=written.name, method="constrained", step=0,
                              layer=layer.name, examples="2,0,1")
            for cell in answer["cells"]:
                expected = [float(analysis.stability[layer_index][m, cell["channel"]]) for m in cell["members"]]
                assert cell["stability"] == pytest.approx(expected, abs=5e-5)
                assert all(0 < v <= 1 for v in cell["stability"])  # a member's map was selected by some start
                seen += 1
        assert seen > 0
        assert any(v < 1 for s in analysis.stability for v in s[s > 0])  # the fixture has maps not every start selects
    finally:
        close()
    _, small, _ = logdir
    one_start = get_json(client, "treemap", **ids(small), layer=small.analyses[("constrained", 0)].layers[-1].name)
    assert one_start["cells"] and all(c["stability"] is None for c in one_start["cells"])


# ----------------------------------------------------------------------- neuron level
def first_logged_channel(written):
    """(layer index, channel) of the first feature map in some datapath."""
    for layer_index, gates in enumerate(written.gates):
        in_some = np.flatnonzero((gates > written.threshold).any(axis=0))
        if in_some.size:
            return layer_index, int(in_some[0])
    raise AssertionError("no datapath keeps any feature map")


def test_neuron_activation_map_and_learned_feature(client, logdir):
    _, small, _ = logdir
    written = small.analyses[("constrained", 0)]
    layer_index, channel = first_logged_channel(written)
    layer = written.layers[layer_index].name
    answer = get_json(client, "neuron", **ids(small), layer=layer, channel=channel)
    assert answer["layer_index"] == layer_index
    for e in answer["examples"]:
        gate = float(written.gates[layer_index][e["example"], channel])
        assert e["gate"] == pytest.approx(gate) and e["in_datapath"] == (gate > written.threshold)
        assert e["max_activation"] == pytest.approx(float(written.max_activations[layer_index][e["example"], channel]))
        response = client.get(ROOT + e["activation_map"])
        pixels = png(response)
        full = written.activation_maps[layer_index][e["example"], channel]
        lo, hi = (float(v) for v in response.headers["X-AEVis-Range"].split(","))
        assert pixels.shape == full.shape  # maps of at most 24 x 24 are logged unpooled
        assert (lo, hi) == pytest.approx((full.min(), full.max()), abs=1e-5)
        if hi > lo:
            np.testing.assert_allclose(lo + pixels / 255.0 * (hi - lo), full, atol=(hi - lo) / 255 + 1e-5)
    assert answer["learned_features"], "learned features were logged with reference images"
    for feature in answer["learned_features"]:  # boxes inside the image and boxes clipped to all of it
        crop = png(client.get(ROOT + feature["url"]))
        y0, x0, y1, x1 = feature["box"]
        reference = small.reference_images[feature["reference_image"]]
        y0, x0 = max(0, y0), max(0, x0)
        np.testing.assert_allclose(crop.transpose(2, 0, 1) / 255.0, reference[:, y0:y1, x0:x1], atol=1 / 255 + 1e-6)
        # The whole reference image the box is drawn on, and the crop is its box.
        whole = png(client.get(ROOT + feature["reference_url"]))
        np.testing.assert_allclose(whole.transpose(2, 0, 1) / 255.0, reference, atol=1 / 255 + 1e-6)
        np.testing.assert_array_equal(whole[y0:y1, x0:x1], crop)


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("route, params, status, message", [
    ("analysis", {"analysis": "a", "method": "constrained", "step": 0}, 400, "missing parameter 'run'"),
    ("analysis", {"run": "small", "analysis": "a", "method": "xyz", "step": 0}, 400, "must be one of"),
    ("analysis", {"run": "small", "analysis": "a", "method": "dgr", "step": "1.5"}, 400, "must be an integer"),
    ("analysis", {"run": "../../etc", "analysis": "passwd", "method": "dgr", "step": 0}, 404, "no analysis"),
    ("analysis", {"run": "corrupt", "analysis": "a", "method": "dgr", "step": 0}, 404, "no analysis"),
    ("river", {"examples": "0,0"}, 400, "repeats an index"),
    ("river", {"examples": "0,9"}, 404, "example 9 does not exist"),
    ("treemap", {"layer": "nope"}, 404, "unknown layer"),
    ("treemap", {"layer": "LAYER", "width": 10}, 400, "between 50 and 4000"),
    ("treemap", {"layer": "LAYER", "examples": "0,1,2,3,4,5"}, 400, "1 to 5 indices"),
    ("neuron", {"layer": "LAYER", "channel": 999}, 404, "channel 999 does not exist"),
    ("image", {"example": 3}, 404, "example 3 does not exist"),
    ("learned_feature", {"layer": "LAYER", "channel": 0, "rank": 99}, 404, "learned features"),
    ("reference_image", {"index": 999}, 404, "reference image 999 was not logged"),
])
def test_bad_requests_get_a_clear_json_error(client, logdir, route, params, status, message):
    _, small, _ = logdir
    layer = small.analyses[("constrained", 0)].layers[0].name
    full = {**ids(small), **params} if "run" not in params and "analysis" not in params else dict(params)
    full = {k: (layer if v == "LAYER" else v) for k, v in full.items()}
    answer = get_json(client, route, status=status, **full)
    assert message in answer["error"]


def test_wrong_method_and_oversized_query(client):
    assert client.post(ROOT + "runs").status_code == 405
    assert client.get(ROOT + "contribution").status_code == 405
    response = client.get(ROOT + "analysis?run=" + "x" * 10_000)
    assert response.status_code == 413 and "query string" in json.loads(response.get_data(as_text=True))["error"]


def test_contribution_extension_point(client, logdir, monkeypatch):
    _, small, _ = logdir
    body = json.dumps({**ids(small), "layer": "x"})
    seen = {}

    def handler(payload, load):
        loaded = load(payload["run"], payload["analysis"], payload["method"], payload["step"])
        seen["examples"] = loaded.analysis.num_examples
        if payload["layer"] != "x":
            raise aevis_plugin.HttpError(400, "layer must be 'x'")
        return {"ranked": [[3, 0.5]]}

    monkeypatch.setattr(aevis_plugin.AEVisPlugin, "contribution_handler", staticmethod(handler))
    response = client.post(ROOT + "contribution", data=body, content_type="application/json")
    assert response.status_code == 200 and json.loads(response.get_data(as_text=True)) == {"ranked": [[3, 0.5]]}
    assert seen["examples"] == 3
    bad = client.post(ROOT + "contribution", data=json.dumps({**ids(small), "layer": "y"}), content_type="application/json")
    assert bad.status_code == 400 and "layer must be" in bad.get_data(as_text=True)
    missing = client.post(ROOT + "contribution", data=json.dumps({**ids(small), "run": "nope", "layer": "x"}), content_type="application/json")
    assert missing.status_code == 404
    assert client.post(ROOT + "contribution", data="{not json", content_type="application/json").status_code == 400
    assert client.post(ROOT + "contribution", data="[1]", content_type="application/json").status_code == 400
    assert client.post(ROOT + "contribution", data=body, content_type="text/plain").status_code == 400


def test_static_bundle_is_served_or_explained(client, tmp_path, monkeypatch):
    monkeypatch.setattr(aevis_plugin, "STATIC_DIR", str(tmp_path))
    missing = client.get(ROOT + "static/index.js")
    assert missing.status_code == 404 and "npm run build" in json.loads(missing.get_data(as_text=True))["error"]
    (tmp_path / "index.js").write_text("export function render() {}\n")
    served = client.get(ROOT + "static/index.js")
    assert served.status_code == 200 and served.mimetype == "text/javascript"
    assert served.get_data(as_text=True) == "export function render() {}\n"
    for bad in ("static/..%2F..%2Fsetup.py", "static/.hidden.js", "static/index.py", "static/%2e%2e%2findex.js"):
        assert client.get(ROOT + bad).status_code == 404


def test_static_bundle_is_revalidated_by_etag(client, tmp_path, monkeypatch):
    monkeypatch.setattr(aevis_plugin, "STATIC_DIR", str(tmp_path))
    (tmp_path / "index.js").write_text("export function render() {}\n")
    first = client.get(ROOT + "static/index.js")
    etag = first.headers["ETag"]
    assert "no-cache" in first.headers["Cache-Control"]  # the browser asks again on every load
    again = client.get(ROOT + "static/index.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b"" and again.headers["ETag"] == etag
    (tmp_path / "index.js").write_text("export function render() { /* upgraded */ }\n")  # a new version behind the same name
    upgraded = client.get(ROOT + "static/index.js", headers={"If-None-Match": etag})
    assert upgraded.status_code == 200 and "upgraded" in upgraded.get_data(as_text=True)
    assert upgraded.headers["ETag"] != etag


def test_answers_are_cached(client, logdir):
    _, small, _ = logdir
    layer = small.analyses[("constrained", 0)].layers[2].name
    params = dict(**ids(small), layer=layer, examples="0,1")
    first = get(client, "treemap", **params).get_data()
    start = time.perf_counter()
    second = get(client, "treemap", **params).get_data()
    assert first == second and time.perf_counter() - start < 0.5


# ----------------------------------------------------------------------- the real data server
def test_rust_data_server_serves_the_same_answers(logdir, client):
    path, small, _ = logdir
    app, close = tensorboard_app(path, data_server="rust")
    try:
        rust = Client(app)
        runs = get_json(rust, "runs")
        assert {r["run"] for r in runs["runs"]} == {"small", "four"}
        layer = small.analyses[("constrained", 0)].layers[1].name
        for route, extra in (("analysis", {}), ("river", {}), ("treemap", {"layer": layer})):
            assert get_json(rust, route, **ids(small), **extra) == get_json(client, route, **ids(small), **extra)
    finally:
        close()


@pytest.mark.slow
def test_plain_tensorboard_command_lists_the_tab(logdir):
    path = logdir[0]
    tb = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    process = subprocess.Popen([tb, "--logdir", path, "--port", "0", "--host", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, "tensorboard did not print its URL"
        listing = json.loads(urllib.request.urlopen(url + "data/plugins_listing", timeout=30).read())
        assert listing["aevis"]["tab_name"] == "AEVis"
        for _ in range(60):  # the data server loads asynchronously
            runs = json.loads(urllib.request.urlopen(url + "data/plugin/aevis/runs", timeout=30).read())
            if {r["run"] for r in runs["runs"]} == {"small", "four"}:
                break
            time.sleep(0.5)
        assert {r["run"] for r in runs["runs"]} == {"small", "four"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_steps_with_model_follow_the_first_and_latest_policy(tmp_path):
    """Three steps with new weights each, default ``save_model``: the writer keeps the first and
    the latest artifacts, and ``runs`` lists exactly those steps as allowing contribution."""
    import torch

    from run_fixtures import TinyCNN
    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    path = str(tmp_path / "train")
    for step in (0, 10, 20):
        model = TinyCNN(step).eval()  # new weights at every step
        analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], steps=4)
        add_analysis(path, "trace", analysis, step, model=model)
    models = os.listdir(os.path.join(path, "plugins", "aevis", "models"))
    assert len(models) == 2
    app, close = tensorboard_app(str(tmp_path), data_server="python")
    try:
        client = Client(app)
        entry = get_json(client, "runs")["runs"][0]["analyses"][0]
        assert entry["steps"] == [0, 10, 20] and entry["steps_with_model"] == [0, 20]
        middle = get_json(client, "analysis", run="train", analysis="trace", method="constrained", step=10)
        assert middle["has_model"] is False and not any("re-log" in w for w in middle["warnings"])
        assert get_json(client, "analysis", run="train", analysis="trace", method="constrained", step=20)["has_model"] is True
    finally:
        close()


def test_neuron_route_serves_the_stability_of_k_starts(tmp_path):
    """An analysis extracted from K starts: the neuron route gives each example's fraction of starts
    that selected the map, read back from the logged arrays (null for a one-start analysis)."""
    import torch

    from run_fixtures import TinyCNN
    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    model = TinyCNN(0).eval()
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], steps=6, starts=3, seed=2)
    add_analysis(str(tmp_path / "k"), "starts", analysis, 0, model=None)
    app, close = tensorboard_app(str(tmp_path), data_server="python")
    try:
        client = Client(app)
        layer = analysis.layers[1]
        for channel in range(layer.channels):
            answer = get_json(client, "neuron", run="k", analysis="starts", method="constrained", step=0,
                              layer=layer.name, channel=channel)
            served = [e["stability"] for e in answer["examples"]]
            np.testing.assert_allclose(served, analysis.stability[1][:, channel], atol=0)
    finally:
        close()


def test_analyses_are_read_ahead_from_start_up_once_the_server_is_idle(tmp_path, monkeypatch):
    """Without any request, the latest step of each listed analysis is read in the
    background after WARM_AFTER_IDLE_S of quiet; the first request then reads nothing."""
    import threading

    from tensorboard_plugin_aevis import run_reader

    name = "read ahead at start-up"
    write_small_run(str(tmp_path), run="ahead", name=name, steps=(0, 5))
    monkeypatch.setattr(aevis_plugin, "WARM_AFTER_IDLE_S", 0.2)
    reads = []
    real_read = run_reader._read_analysis

    def spy(data_provider, ctx, experiment_id, run, analysis, method, step, *rest):
        if analysis == name:  # other tests' plugins may read ahead meanwhile
            reads.append((step, threading.current_thread().name, time.monotonic()))
        return real_read(data_provider, ctx, experiment_id, run, analysis, method, step, *rest)

    monkeypatch.setattr(run_reader, "_read_analysis", spy)
    started = time.monotonic()
    app, close = tensorboard_app(str(tmp_path), data_server="python")
    try:
        deadline = time.monotonic() + 30
        while not reads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(step, thread) for step, thread, _ in reads] == [(5, "aevis-read-ahead")]
        assert reads[0][2] - started >= aevis_plugin.WARM_AFTER_IDLE_S
        get_json(Client(app), "analysis", run="ahead", analysis=name, method="constrained", step=5)
        assert len(reads) == 1  # the request found it read
        get_json(Client(app), "analysis", run="ahead", analysis=name, method="constrained", step=0)
        assert [step for step, _, _ in reads] == [5, 0]  # an earlier step is read when asked for
    finally:
        close()


def test_the_model_is_read_in_the_background_only_once_no_request_runs(tmp_path, monkeypatch):
    """Opening an analysis schedules its model read; it waits while any request is running and
    starts only after WARM_AFTER_IDLE_S of quiet (reading a model costs the server seconds of CPU)."""
    import threading

    from tensorboard_plugin_aevis import contribution_service

    name = "warmed in idle time"  # only this test's plugin reads it (other plugins' warm threads may run meanwhile)
    write_small_run(str(tmp_path), run="idle", name=name)
    monkeypatch.setattr(aevis_plugin, "WARM_AFTER_IDLE_S", 0.2)
    warmed = []

    class Service:
        def warm(self, loaded):
            if loaded.name == name:
                warmed.append(time.monotonic())

    monkeypatch.setattr(contribution_service, "default_service", lambda: Service())
    running, release = threading.Event(), threading.Event()
    real_runs_impl = aevis_plugin.runs_impl

    def slow_runs_impl(index):
        running.set()
        release.wait(30)
        return real_runs_impl(index)

    monkeypatch.setattr(aevis_plugin, "runs_impl", slow_runs_impl)
    app, close = tensorboard_app(str(tmp_path), data_server="python")
    analysis = {"run": "idle", "analysis": name, "method": "constrained", "step": 0}
    try:
        client = Client(app)
        get_json(client, "analysis", **analysis)
        slow = threading.Thread(target=lambda: get_json(Client(app), "runs"))
        slow.start()
        assert running.wait(30)
        time.sleep(5 * aevis_plugin.WARM_AFTER_IDLE_S)
        assert warmed == []  # a request is still running
        released = time.monotonic()
        release.set()
        slow.join(30)
        deadline = time.monotonic() + 30
        while not warmed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(warmed) == 1 and warmed[0] - released >= aevis_plugin.WARM_AFTER_IDLE_S
        get_json(client, "analysis", **analysis)  # opened again: its model is not read again
        time.sleep(5 * aevis_plugin.WARM_AFTER_IDLE_S)
        assert len(warmed) == 1
    finally:
        release.set()
        close()
