"""Bad states are shown plainly: no runs, runs without AEVis data, backend errors
(the JSON error message, as text), and a model too large to show expanded."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest

from conftest import dashboard, screenshot, start_tensorboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_empty_logdir_says_no_runs(logdir, page):
    tb = start_tensorboard(logdir, expect_runs=0)
    try:
        frame = dashboard(page, tb)
        frame.wait_for_selector(".message.info")
        text = frame.locator(".message.info").inner_text()
        assert "No runs with AEVis data" in text and "add_analysis" in text
        assert frame.locator("path.river-path").count() == 0
    finally:
        tb.close()


def test_runs_without_aevis_data_are_named(logdir, page):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(os.path.join(logdir, "scalars_only")) as w:
        w.add_scalar("loss", 1.0, 0)
    tb = start_tensorboard(logdir, expect_runs=0)
    try:
        # TensorBoard itself lists the run once it has loaded it.
        import time
        deadline = time.time() + 60
        while time.time() < deadline and b"scalars_only" not in tb.get("/data/runs")[1]:
            time.sleep(0.5)
        frame = dashboard(page, tb)
        frame.wait_for_selector(".message.info")
        text = frame.locator(".message.info").inner_text()
        assert "none contains an AEVis analysis" in text and "scalars_only" in text
        screenshot(page, "bad-state-no-aevis-data.png")
    finally:
        tb.close()


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    from run_fixtures import write_small_run

    logdir = str(tmp_path_factory.mktemp("aevis-bad-states"))
    written = write_small_run(logdir, run="small", name="cat->dog")
    tb = start_tensorboard(logdir, expect_runs=1)
    yield tb, written
    tb.close()


def open_with_state(page, tb, state):
    return dashboard(page, tb, "&" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote))


def test_unknown_run_in_link_is_reported(served_run, page):
    tb, written = served_run
    frame = open_with_state(page, tb, {"aevis.run": "gone"})
    frame.wait_for_selector("path.river-path")
    warning = frame.locator(".message.warning").inner_text()
    assert 'Run "gone" has no AEVis data' in warning
    assert frame.eval_on_selector('select[name="run"]', "s => s.value") == written.run


def test_backend_error_message_is_shown_as_text(served_run, page):
    tb, written = served_run
    manifest = tb.aevis("analysis", run=written.run, analysis=written.name, method="constrained", step=0)
    layer = manifest["layers"][0]
    bad_channel = layer["channels"] + 7
    status, body, _ = tb.get("/data/plugin/aevis/neuron", {
        "run": written.run, "analysis": written.name, "method": "constrained", "step": 0,
        "layer": layer["name"], "channel": bad_channel})
    assert status == 404
    expected = json.loads(body)["error"]
    frame = open_with_state(page, tb, {"aevis.layer": layer["name"], "aevis.channel": str(bad_channel)})
    frame.wait_for_selector(".neuron .message.error")
    shown = frame.locator(".neuron .message.error").inner_text()
    assert expected in shown and "404" in shown


def test_markup_in_user_strings_is_not_interpreted(served_run, page):
    tb, _ = served_run
    payload = "<img src=x onerror=window.__aevis_pwned=1>"
    frame = open_with_state(page, tb, {"aevis.layer": payload})
    frame.wait_for_selector(".treemap .message.error")
    assert payload in frame.locator(".treemap .message.error").inner_text()
    assert frame.locator(".treemap img").count() == 0
    assert frame.evaluate("window.__aevis_pwned") is None


def deep_cnn():
    """A real deep residual model, random weights: 4 stages x 6 residual blocks (> 80 graph
    nodes, a skip connection per block), (B,3,H,W) -> (B,5)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.body(x))

    class DeepCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.stages = nn.Sequential(*[nn.Sequential(*[Residual(8) for _ in range(6)]) for _ in range(4)])
            self.head = nn.Linear(8, 5)
            self.class_names = [f"class{i}" for i in range(5)]

        def forward(self, x):
            return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))

    return DeepCNN().eval()


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """The deep residual model's analysis (3 datapaths), served by tensorboard; yields (tb, analysis)."""
    import numpy as np
    import torch

    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    logdir = str(tmp_path_factory.mktemp("aevis-deep"))
    model = deep_cnn()
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], method="constrained", steps=3)
    add_analysis(os.path.join(logdir, "deep"), "deep", analysis, 0, model=model, save_model=False)
    tb = start_tensorboard(logdir, expect_runs=1)
    yield tb, analysis
    tb.close()


DEEP = {"run": "deep", "analysis": "deep", "method": "constrained", "step": 0}


def test_large_model_starts_collapsed(deep_run, page):
    tb, analysis = deep_run
    graph = tb.aevis("graph", **DEEP)
    assert len(graph["nodes"]) > 80
    frame = dashboard(page, tb)
    frame.wait_for_selector("path.river-path")
    assert "Large model" in frame.locator(".message.info").inner_text()
    drawn = frame.locator("g.graph-node").count()
    assert drawn <= 80 and frame.locator("g.graph-node.group").count() >= 1
    assert frame.locator("path.river-path").count() == 3
    # Every gated layer still has a place on the river.
    assert frame.locator("rect.layer-hit").count() == len(analysis.layers)
    # Pan and zoom: the wheel zooms about the cursor; the mini-map moves the view.
    def transform():
        return frame.get_attribute("g.viewport", "transform")

    def scale(t):
        return float(t.split("scale(")[1].rstrip(")"))

    # Fit shows the whole river; zoomed in, the graph is wider than the view and the mini-map appears.
    before = transform()
    view = frame.locator("svg.network-svg").bounding_box()
    page.mouse.move(view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    page.mouse.wheel(0, -600)
    frame.wait_for_function("t => document.querySelector('g.viewport').getAttribute('transform') !== t", arg=before)
    assert scale(transform()) > scale(before)
    frame.wait_for_selector("svg.minimap rect.minimap-view[width]")
    frame.wait_for_function("() => getComputedStyle(document.querySelector('svg.minimap')).display !== 'none'")
    zoomed = transform()
    mini = frame.locator("svg.minimap").bounding_box()
    page.mouse.click(mini["x"] + mini["width"] - 3, mini["y"] + mini["height"] / 2)
    assert transform() != zoomed and scale(transform()) == scale(zoomed)
    screenshot(page, "large-model-collapsed.png")


def visible_id(graph, node_id, expanded):
    """The drawn node standing for ``node_id``: its outermost collapsed group, else itself."""
    parents = {g["id"]: g["parent"] for g in graph["groups"]}
    group = next(n["group"] for n in graph["nodes"] if n["id"] == node_id)
    chain = []
    while group is not None:
        chain.insert(0, group)
        group = parents[group]
    return next((g for g in chain if g not in expanded), node_id)


def test_skip_connections_are_drawn(deep_run, page):
    tb, _ = deep_run
    graph = tb.aevis("graph", **DEEP)
    incoming = {}
    for e in graph["edges"]:
        incoming.setdefault(e["target"], []).append(e["source"])
    # A residual add inside the second block of the first stage: two inputs, one the skip.
    add = next(n for n in graph["nodes"] if n["group"] == "stages.0.1" and len(incoming.get(n["id"], [])) == 2)
    expanded = ["stages", "stages.0", "stages.0.1"]
    frame = dashboard(page, tb, "&" + urllib.parse.urlencode({"aevis.expanded": ",".join(expanded)}, quote_via=urllib.parse.quote))
    frame.wait_for_selector("path.river-path")
    assert frame.locator(f'g.graph-node[data-id="{add["id"]}"]').count() == 1
    sources = {visible_id(graph, s, expanded) for s in incoming[add["id"]]}
    # One input comes from the block's body (collapsed: the body group), the other skips it.
    assert len(sources) == 2 and "stages.0.1.body" in sources
    for source in sources:
        edge = frame.locator(f'path.graph-edge[data-source="{source}"][data-target="{add["id"]}"]')
        assert edge.count() == 1, f"no edge drawn from {source} to {add['id']}"
        assert edge.get_attribute("d").startswith("M")
    skip = next(s for s in sources if s != "stages.0.1.body")
    assert not skip.startswith("stages.0.1")  # it comes from outside the block: the skip connection
