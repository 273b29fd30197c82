"""Hostile input: every AEVis route fuzzed with malformed parameters (hypothesis, thousands
of requests through TensorBoard's real WSGI app): never a 500, never a traceback, never
a file from outside the data provider, every user string JSON-escaped."""

import json
import os
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from werkzeug.test import Client

from run_fixtures import tensorboard_app, write_corrupt_run, write_small_run
from tensorboard_plugin_aevis import aevis_plugin

ROOT = "/data/plugin/aevis/"
SECRET = "AEVIS-SECRET-7f3a9c"
ALLOWED = {200, 400, 404, 405, 413, 501}
GET_ROUTES = ["runs", "analysis", "image", "graph", "river", "treemap", "neuron", "activation_map", "learned_feature",
              "reference_image", "static/index.js"]
PARAMS = ["run", "analysis", "method", "step", "example", "examples", "diff", "layer", "channel", "rank", "index", "width", "height"]
REQUESTS = {"count": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    (base / "secret.txt").write_text(SECRET)  # outside the logdir and the static dir: never served
    static = base / "static"  # the dashboard files, next to the secret: "static/../secret.txt" must fail
    static.mkdir()
    (static / "index.js").write_text("export function render() {}\n")
    logdir = base / "logdir"
    logdir.mkdir()
    small = write_small_run(str(logdir), run="small", name="a<b>&'\"", steps=(0,), methods=("constrained",))
    write_corrupt_run(str(logdir), run="corrupt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aevis_plugin, "STATIC_DIR", str(static))
        app, close = tensorboard_app(str(logdir))
        yield Client(app), small
        close()


hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", " ", "../../etc/passwd", "..%2F..%2Fsecret.txt", "../secret.txt", "/etc/passwd", "small/../../secret.txt",
        "<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>", "%00", "\x00", "\ud7ff\u202e", "NaN", "inf",
        "-1", "1e9", "0x10", "9" * 40, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", "0,,1", ",", "0,0", "1.5", "٣",
    ]),
    st.integers(-(2**70), 2**70).map(str),
    st.lists(st.integers(-3, 20), max_size=8).map(lambda xs: ",".join(map(str, xs))),
)


def valid_values(small):
    analysis = small.analyses[("constrained", 0)]
    return {
        "run": st.sampled_from(["small", "corrupt", "."]), "analysis": st.just(small.name),
        "method": st.sampled_from(["constrained", "dgr"]), "step": st.sampled_from(["0", "1"]),
        "example": st.integers(0, 3).map(str), "examples": st.sampled_from(["0,1,2", "0,1", "2", "1,2"]),
        "diff": st.sampled_from(["0,1", "2,0"]), "layer": st.sampled_from([l.name for l in analysis.layers]),
        "channel": st.integers(0, 20).map(str), "rank": st.integers(0, 6).map(str), "index": st.integers(0, 5).map(str),
        "width": st.integers(40, 900).map(str), "height": st.integers(40, 900).map(str),
    }


def queries(small):
    """Query strings: each parameter valid, hostile, repeated or missing."""
    valid = valid_values(small)
    choice = {name: st.one_of(valid[name].map(lambda v: [v]), hostile_text.map(lambda v: [v]),
                              st.lists(st.one_of(valid[name], hostile_text), min_size=2, max_size=3), st.just([]))
              for name in PARAMS}
    return st.fixed_dictionaries(choice).map(lambda d: urllib.parse.urlencode([(k, v) for k, vs in d.items() for v in vs]))


def check(response):
    """The invariants every answer keeps."""
    REQUESTS["count"] += 1
    body = response.get_data()
    text = body.decode("utf-8", errors="replace")
    assert response.status_code in ALLOWED, (response.status_code, text[:300])
    assert "Traceback" not in text and 'File "' not in text
    assert SECRET not in text
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.mimetype in ("application/json", "image/png", "text/javascript"), response.mimetype
    if response.mimetype == "application/json":
        value = json.loads(text)
        assert "<" not in text and ">" not in text and "&" not in text  # user strings cannot read as markup
        if response.status_code != 200:
            assert isinstance(value, dict) and isinstance(value["error"], str) and value["error"]


@pytest.mark.parametrize("route", GET_ROUTES)
def test_get_routes_survive_hostile_parameters(served, route):
    client, small = served

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(queries(small))
    def fuzz(query):
        check(client.get(f"{ROOT}{route}?{query}"))

    fuzz()


TRAVERSALS = [
    "static/../secret.txt", "static/..%2Fsecret.txt", "static/%2e%2e%2fsecret.txt", "static/..\\secret.txt",
    "static/%2E%2E/secret.txt", "static//secret.txt", "static/./../secret.txt", "static/..", "static/%00index.js",
    "static/index.js%00.png", "static/..%5csecret.txt", "static/....//secret.txt", "../secret.txt", "..%2F..%2Fsecret.txt",
]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(path=st.one_of(st.text(max_size=30), st.sampled_from(TRAVERSALS),
                      st.tuples(st.sampled_from(TRAVERSALS), st.text(max_size=8)).map("".join)),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
def test_unknown_paths_and_methods(served, path, method):
    client, _ = served
    response = client.open(ROOT + urllib.parse.quote(path, safe="/%.\\"), method=method)
    REQUESTS["count"] += 1
    text = response.get_data(as_text=True)
    assert response.status_code < 500 and "Traceback" not in text and SECRET not in text


def test_static_files_are_served_and_nothing_beside_them(served):
    """The control for the traversal fuzzing: the static dir's file is served, its neighbour is not."""
    client, _ = served
    assert client.get(ROOT + "static/index.js").get_data(as_text=True).startswith("export function")
    for path in TRAVERSALS:
        response = client.get(ROOT + path)
        assert response.status_code == 404 and SECRET not in response.get_data(as_text=True), path


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(PARAMS + ["area", "mode"]), inner, max_size=6)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.one_of(json_values.map(json.dumps), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_contribution_survives_hostile_bodies(served, body, content_type):
    client, _ = served
    check(client.post(ROOT + "contribution", data=body.encode("utf-8", "replace"), content_type=content_type))


def test_fuzzing_made_thousands_of_requests_quickly(served):
    """Runs last in this module: the whole hostile campaign above."""
    assert REQUESTS["count"] >= 3000, REQUESTS["count"]


def test_good_run_still_served_next_to_corrupt_run(served):
    client, small = served
    response = client.get(ROOT + "runs")
    check(response)
    assert [r["run"] for r in json.loads(response.get_data(as_text=True))["runs"]] == ["small"]
    response = client.get(ROOT + "analysis?" + urllib.parse.urlencode({"run": "small", "analysis": small.name, "method": "constrained", "step": 0}))
    check(response)
    assert response.status_code == 200
