"""The dashboard in real headless Chromium against a real TensorBoard serving runs
written by the real engine and writer (tests/run_fixtures.py)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from conftest import dashboard, screenshot, start_tensorboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """One small run (3 datapaths, both methods, two steps) served by tensorboard."""
    from run_fixtures import write_small_run

    logdir = str(tmp_path_factory.mktemp("aevis-browser"))
    written = write_small_run(logdir, run="small", name="cat->dog", steps=(0, 3), methods=("constrained", "dgr"))
    tb = start_tensorboard(logdir, expect_runs=1)
    yield tb, written
    tb.close()


def hex_to_rgb(colour: str) -> str:
    """'#1e88e5' -> 'rgb(30,136,229)' (how the browser reports a style colour, spaces removed)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r},{g},{b})"


def params(written, method="constrained", step=3):
    return {"run": written.run, "analysis": written.name, "method": method, "step": step}


def test_river_treemap_and_neuron_levels(served_run, page):
    tb, written = served_run
    frame = dashboard(page, tb)
    frame.wait_for_selector("path.river-path", timeout=60_000)

    # Network level: one river path per datapath, the datapaths the backend sent.
    river = tb.aevis("river", **params(written), examples="0,1,2")
    paths = frame.query_selector_all("path.river-path")
    assert len(paths) == len(river["paths"]) == 3
    assert sorted(int(p.get_attribute("data-example")) for p in paths) == sorted(p["example"] for p in river["paths"])
    assert all(p.get_attribute("d").startswith("M") for p in paths)
    # Constant width along each path (lower paths wider, so coinciding ones stay visible), one colour per role.
    assert len({float(p.get_attribute("stroke-width")) for p in paths}) == 3
    assert len({p.get_attribute("stroke") for p in paths}) == 3
    # The last step is the default and the step selector lists both steps.
    assert frame.eval_on_selector('select[name="step"]', "s => [...s.options].map(o => o.value)") == ["0", "3"]
    assert frame.eval_on_selector('select[name="method"]', "s => [...s.options].map(o => o.value)") == ["constrained", "dgr"]
    # Legend: one entry per datapath (its name and role, in its path's colour), then the marker keys.
    manifest = tb.aevis("analysis", **params(written))
    stroke = {int(p.get_attribute("data-example")): p.get_attribute("stroke") for p in paths}
    role_label = {"source": "source (normal)", "adversarial": "adversarial", "target": "target (normal)"}
    for p in river["paths"]:
        item = frame.locator(f'.legend .item[data-example="{p["example"]}"]')
        expected = p["name"] if p["role"] in p["name"] else f'{p["name"]} — {role_label[p["role"]]}'
        assert item.inner_text() == expected
        swatch = item.locator(".swatch").evaluate("s => s.style.background")
        assert swatch.replace(" ", "") == hex_to_rgb(stroke[p["example"]])
    # Diverging / merging markers: one per marker the backend sent, at its layer.
    drawn = sorted((m.get_attribute("class"), int(m.get_attribute("data-layer"))) for m in frame.query_selector_all("g.marker"))
    assert drawn == sorted((f'marker {m["kind"]}', m["layer"]) for m in river["markers"])
    screenshot(page, "dashboard-network.png")

    # Hover shows distances from the backend.
    first_layer = manifest["layers"][0]["name"]
    hit = frame.locator(f'rect.layer-hit[data-layer="{first_layer}"]')
    hit.hover()
    tooltip = frame.locator(".network .tooltip")
    tooltip.wait_for(state="visible")
    assert first_layer in tooltip.inner_text()

    # Layer level: switch to the method whose datapaths keep the most feature maps
    # (random weights), then click the layer with the most cells.
    best = max(
        ((method, l["name"], tb.aevis("treemap", **params(written, method), layer=l["name"], examples="0,1,2", diff="0,1"))
         for method in ("constrained", "dgr") for l in manifest["layers"]),
        key=lambda t: len(t[2]["cells"]),
    )
    method, layer, treemap = best
    assert treemap["cells"], "no datapath keeps any feature map: the treemap cannot be checked"
    if method != "constrained":
        frame.select_option('select[name="method"]', method)
        frame.wait_for_selector("path.river-path")
        assert "aevis.method=" + method in page.evaluate("location.hash")
    manifest = tb.aevis("analysis", **params(written, method))
    frame.locator(f'rect.layer-hit[data-layer="{layer}"]').click()
    frame.wait_for_selector("g.treemap-cell", timeout=60_000)
    # The same request the dashboard made (its own pixel size).
    size = frame.eval_on_selector("svg.treemap-svg", "s => [s.getAttribute('width'), s.getAttribute('height')]")
    treemap = tb.aevis("treemap", **params(written, method), layer=layer, examples="0,1,2", diff="0,1", width=size[0], height=size[1])
    assert frame.locator("g.treemap-cell").count() == len(treemap["cells"])
    drawn_channels = sorted(int(c) for c in frame.eval_on_selector_all("g.treemap-cell", "cs => cs.map(c => c.dataset.channel)"))
    assert drawn_channels == sorted(c["channel"] for c in treemap["cells"])
    assert frame.locator("rect.treemap-container").count() == len(treemap["containers"])
    assert frame.locator("rect.treemap-set").count() == sum(1 for s in treemap["sets"] if s["shared"])
    # Solid fills: one per cell with a non-zero activation difference, height in proportion.
    nonzero = [c for c in treemap["cells"] if c["activation_diff"]]
    assert frame.locator("rect.fill-activation").count() == len(nonzero)
    if nonzero:
        cell = max(nonzero, key=lambda c: abs(c["activation_diff"]))
        height = float(frame.get_attribute(f'g.treemap-cell[data-channel="{cell["channel"]}"] rect.fill-activation', "height"))
        expected = abs(cell["activation_diff"]) / treemap["max_abs_activation_diff"] * (cell["dy"] - 2)
        assert abs(height - expected) < 0.5
    assert "aevis.layer=" + urllib.parse.quote(layer, safe="") in page.evaluate("location.hash")
    # Hover on a cell shows its values: the backend's activation difference (3 significant digits).
    if nonzero:
        frame.locator(f'g.treemap-cell[data-channel="{cell["channel"]}"]').hover()
        tip = frame.locator(".treemap .tooltip")
        tip.wait_for(state="visible")
        lines = tip.inner_text().splitlines()
        assert lines[0] == f'feature map {cell["channel"]}'
        shown = float(next(l for l in lines if l.startswith("activation")).rsplit(": ", 1)[1])
        assert shown == pytest.approx(cell["activation_diff"], rel=5e-3)

    # Neuron level: clicking a feature map shows its activation map over each example.
    channel = max(treemap["cells"], key=lambda c: abs(c["activation_diff"] or 0))["channel"]
    frame.locator(f'g.treemap-cell[data-channel="{channel}"]').click()
    neuron = tb.aevis("neuron", **params(written, method), layer=layer, channel=channel)
    with_maps = [e for e in neuron["examples"] if e["activation_map"]]
    assert with_maps, "the backend sent no activation maps"
    frame.wait_for_function(
        "n => [...document.querySelectorAll('.activation-map canvas')].filter(c => c.width > 1).length === n",
        arg=len(with_maps), timeout=60_000,
    )
    shape = next(l for l in manifest["layers"] if l["name"] == layer)
    sizes = frame.eval_on_selector_all(".activation-map canvas", "cs => cs.map(c => [c.height, c.width])")
    assert all(s == [shape["height"], shape["width"]] for s in sizes)
    values = frame.locator(".neuron-example .values").all_inner_texts()
    assert len(values) == len(neuron["examples"])
    # Learned features: each crop beside its whole reference image, the receptive-field box drawn on it.
    features = neuron["learned_features"]
    assert features, "the run logged reference images, so the feature map has learned features"
    assert frame.locator("figure.learned-feature").count() == len(features)
    frame.wait_for_function("n => document.querySelectorAll('.rf-box:not([hidden])').length === n", arg=len(features), timeout=60_000)
    for f in features:
        figure = frame.locator(f'figure.learned-feature[data-rank="{f["rank"]}"]')
        image = figure.locator(".reference img")
        natural = image.evaluate("i => [i.naturalHeight, i.naturalWidth]")
        assert natural == list(written.reference_images[f["reference_image"]].shape[1:])
        shown, box = image.bounding_box(), figure.locator(".rf-box").bounding_box()
        y0, x0, y1, x1 = (max(0, min(v, n)) for v, n in zip(f["box"], natural * 2))
        scale = shown["width"] / natural[1]
        assert box["x"] - shown["x"] == pytest.approx(x0 * scale, abs=1.0)
        assert box["y"] - shown["y"] == pytest.approx(y0 * scale, abs=1.0)
        assert box["width"] == pytest.approx((x1 - x0) * scale, abs=1.0)
        assert box["height"] == pytest.approx((y1 - y0) * scale, abs=1.0)
    screenshot(page, "dashboard-neuron.png")
    page.set_viewport_size({"width": 1400, "height": 1900})  # the iframe shows all three levels
    frame.wait_for_selector(".activation-map canvas")
    screenshot(page, "dashboard.png")  # the one copied to docs/screenshots/
    assert page.aevis_errors == []


def test_state_in_hash_reopens_view(served_run, page):
    tb, written = served_run
    manifest = tb.aevis("analysis", **params(written, "dgr", 0))
    layer, treemap = max(
        ((l["name"], tb.aevis("treemap", **params(written, "dgr", 0), layer=l["name"], examples="0,2", diff="2,0"))
         for l in manifest["layers"]),
        key=lambda t: len(t[1]["cells"]),
    )
    assert treemap["cells"], "no datapath keeps any feature map"
    channel = treemap["cells"][0]["channel"]
    state = {"aevis.run": written.run, "aevis.analysis": written.name, "aevis.method": "dgr", "aevis.step": "0",
             "aevis.examples": "0,2", "aevis.layer": layer, "aevis.channel": str(channel), "aevis.diff": "2,0"}
    frame = dashboard(page, tb, "&" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote))
    frame.wait_for_selector("path.river-path")
    assert frame.locator("path.river-path").count() == 2
    assert frame.eval_on_selector('select[name="method"]', "s => s.value") == "dgr"
    assert frame.eval_on_selector('select[name="step"]', "s => s.value") == "0"
    assert frame.eval_on_selector('select[name="diff-a"]', "s => s.value") == "2"
    frame.wait_for_selector("g.treemap-cell")
    assert frame.locator("g.treemap-cell").count() == len(treemap["cells"])
    frame.wait_for_selector(".neuron h3")
    assert frame.locator(".neuron h3").inner_text() == f"Feature map {channel} of {layer}"


def test_datapath_selector_redraws_the_river(served_run, page):
    tb, written = served_run
    frame = dashboard(page, tb)
    frame.wait_for_selector("path.river-path")
    assert frame.locator('input[name="datapath"]:checked').count() == 3
    frame.locator('input[name="datapath"][value="1"]').uncheck()
    frame.wait_for_function("() => document.querySelectorAll('path.river-path').length === 2")
    drawn = sorted(int(p.get_attribute("data-example")) for p in frame.query_selector_all("path.river-path"))
    assert drawn == [0, 2]
    river = tb.aevis("river", **params(written), examples="0,2")
    assert river["layout"] == "least_squares" and len(river["paths"]) == 2
    assert "aevis.examples=0%2C2" in page.evaluate("location.hash")
    # The river compares at least two datapaths: the last two stay chosen.
    frame.locator('input[name="datapath"][value="2"]').click()  # the dashboard ticks it again
    frame.wait_for_selector(".message.warning")
    assert "at least two" in frame.locator(".message.warning").inner_text()
    assert frame.locator('input[name="datapath"]:checked').count() == 2
    assert frame.locator("path.river-path").count() == 2


def test_export_svg_and_png(served_run, page, tmp_path):
    tb, written = served_run
    frame = dashboard(page, tb)
    frame.wait_for_selector("path.river-path")
    with page.expect_download() as info:
        frame.locator(".network-panel button", has_text="Export SVG").click()
    svg_path = tmp_path / "view.svg"
    info.value.save_as(svg_path)
    text = svg_path.read_text(encoding="utf-8")
    assert text.startswith("<?xml") and 'xmlns="http://www.w3.org/2000/svg"' in text
    assert text.count('class="river-path"') == 3
    with page.expect_download() as info:
        frame.locator(".network-panel button", has_text="Export PNG").click()
    png_path = tmp_path / "view.png"
    info.value.save_as(png_path)
    data = png_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png_path) as im:
        width, height = im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert width > 400 and height > 200
    assert len(colours) > 10  # a drawing, not a blank canvas


def test_collapsed_group_expands(served_run, page):
    tb, written = served_run
    graph = tb.aevis("graph", **params(written))
    if not graph["groups"]:
        pytest.skip("the small model's graph has no layer groups")
    frame = dashboard(page, tb)
    frame.wait_for_selector("path.river-path")
    # Small models open fully; collapse a top-level group, then expand it again.
    top = next(g["id"] for g in graph["groups"] if not g["parent"])
    before = frame.locator("g.graph-node").count()
    # Fit shows every gated layer; the group's header may lie beyond them: pan it into view.
    view = frame.locator("svg.network-svg").bounding_box()
    toggle = frame.locator(f'g.expanded-group[data-group="{top}"] > .toggle').bounding_box()
    page.mouse.move(view["x"] + 200, view["y"] + view["height"] - 20)
    page.mouse.down()
    page.mouse.move(view["x"] + 200 + max(0, view["x"] + 60 - toggle["x"]), view["y"] + view["height"] - 20, steps=6)
    page.mouse.up()
    frame.locator(f'g.expanded-group[data-group="{top}"] > .toggle').click()
    frame.wait_for_selector(f'g.graph-node.group[data-id="{top}"]')
    inside = [n for n in graph["nodes"] if n["group"] and (n["group"] == top or n["group"].startswith(top + "."))]
    assert frame.locator("g.graph-node").count() == before - len(inside) + 1
    assert frame.locator("path.river-path").count() == 3
    frame.locator(f'g.graph-node.group[data-id="{top}"] .toggle').click()
    frame.wait_for_selector(f'g.expanded-group[data-group="{top}"]')
    assert frame.locator("g.graph-node").count() == before


def test_brushing_an_area_ranks_contributions_and_an_entry_opens_its_neuron_level(served_run, page):
    tb, written = served_run
    p = params(written, "dgr")
    manifest = tb.aevis("analysis", **p)
    assert manifest["has_model"]
    layer = manifest["layers"][-1]["name"]
    earlier = manifest["layers"][-2]["name"]
    treemap = tb.aevis("treemap", **p, layer=layer, examples="0,1,2")
    assert treemap["cells"], "no datapath keeps any feature map"
    channel = treemap["cells"][0]["channel"]
    state = {"aevis.method": "dgr", "aevis.layer": layer, "aevis.channel": str(channel)}
    frame = dashboard(page, tb, "&" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote))
    frame.wait_for_function("() => [...document.querySelectorAll('.activation-map canvas')].some(c => c.width > 1)")
    # The adversarial datapath alone is the default; the quadratic mode is chosen before brushing.
    adversarial = next(e["index"] for e in manifest["examples"] if e["role"] == "adversarial")
    checked = frame.eval_on_selector_all('.neuron input[name="contribution-example"]:checked', "xs => xs.map(x => Number(x.value))")
    assert checked == [adversarial]
    frame.select_option('.neuron select[name="contribution-mode"]', "quadratic")
    # Brushing runs on mouse-up: drag a rectangle of neurons on the first activation map.
    canvas = frame.locator(".activation-map canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)
    with page.expect_request(lambda r: r.url.endswith("/data/plugin/aevis/contribution") and r.method == "POST") as info:
        page.mouse.up()
    # The control that started the run is disabled while it runs.
    assert frame.locator(".neuron button.contribution-run").is_disabled() or frame.locator(".contribution-entry").count() > 0
    sent = info.value.post_data_json
    assert sent["target"] == "feature_map" and sent["target_layer"] == layer and sent["channel"] == channel
    assert sent["earlier_layer"] == earlier and sent["mode"] == "quadratic" and sent["examples"] == [adversarial]
    height, width = sent["area_grid"]
    y0, x0, y1, x1 = sent["area"]
    assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width and (y1 - y0) < height
    # The ranked list: the backend's top scores for that request, in order.
    frame.wait_for_selector(".contribution-entry", timeout=120_000)
    req = urllib.request.Request(tb.url + "/data/plugin/aevis/contribution", data=json.dumps(sent).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    entries = frame.eval_on_selector_all(".contribution-entry", "es => es.map(e => Number(e.dataset.channel))")
    channels = next(l["channels"] for l in manifest["layers"] if l["name"] == earlier)
    assert len(entries) >= min(10, channels)
    assert entries == [e["channel"] for e in answer["ranking"][:len(entries)]]
    assert frame.locator(".score-meaning").inner_text()
    # The brushed map stays in view, its area still drawn.
    assert frame.locator(".area-overlay:not([hidden])").count() >= 1
    assert canvas.is_visible()
    assert frame.locator(".neuron h3").inner_text() == f"Feature map {channel} of {layer}"
    screenshot(page, "dashboard-contribution.png")
    # Clicking an entry opens it at the neuron level; its layer's treemap shows the scores as dotted fills.
    first = entries[0]
    frame.locator(f'.contribution-entry[data-channel="{first}"]').click()
    frame.wait_for_function("t => document.querySelector('.neuron h3')?.textContent === t", arg=f"Feature map {first} of {earlier}")
    frame.wait_for_selector("rect.fill-contribution")
    assert "contribution to feature map" in frame.locator(".treemap-legend").inner_text()
    assert frame.locator(".contribution-entry").count() == len(entries)
