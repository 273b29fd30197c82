"""The first view tells the story (issue #14): in real headless Chromium against a real
TensorBoard, the river shows every gated layer with a tall band, the diverging ->
merging span and the Eq. 9 chart with its verdict; Fit, group expansion, the URL, the
layer distance, dark mode and the river export keep their promises."""

from __future__ import annotations

import math
import re
import time
import urllib.parse

import pytest

from conftest import dashboard, screenshot, start_tensorboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MEASURE = """() => {
  const svg = document.querySelector('svg.network-svg').getBoundingClientRect();
  const ticks = [...document.querySelectorAll('svg.network-svg line.layer-tick')].map(t => [t.dataset.layer, t.getBoundingClientRect().left]);
  const paths = [...document.querySelectorAll('svg.network-svg path.river-path')].map(p => p.getBoundingClientRect());
  const top = Math.min(...paths.map(r => r.top)), bottom = Math.max(...paths.map(r => r.bottom));
  return {left: svg.left, right: svg.right, height: svg.height, ticks, band: (bottom - top) / svg.height};
}"""


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    """A three-datapath run and a run with three candidate targets, served by tensorboard."""
    from run_fixtures import write_small_run

    logdir = str(tmp_path_factory.mktemp("aevis-story"))
    small = write_small_run(logdir, run="small", name="cat->dog")
    several = write_small_run(logdir, run="several", name="cat->dog x3",
                              roles=("source", "adversarial", "target", "target", "target"), seed=1)
    tb = start_tensorboard(logdir, expect_runs=2)
    yield tb, small, several
    tb.close()


def ids(written, method="constrained", step=0):
    return {"run": written.run, "analysis": written.name, "method": method, "step": step}


def open_run(page, tb, written, extra=None):
    state = {"aevis.run": written.run, "aevis.analysis": written.name, **(extra or {})}
    frame = dashboard(page, tb, "&" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote))
    frame.wait_for_selector("path.river-path", timeout=90_000)
    return frame


def all_layers_in_view(m, layers):
    xs = dict(m["ticks"])
    return sorted(xs) == sorted(layers) and all(m["left"] <= x <= m["right"] for x in xs.values())


def test_first_view_shows_every_layer_tall_band_span_and_chart(served_runs, page):
    tb, small, _ = served_runs
    frame = open_run(page, tb, small)
    manifest = tb.aevis("analysis", **ids(small))
    layers = [l["name"] for l in manifest["layers"]]
    m = frame.evaluate(MEASURE)
    assert all_layers_in_view(m, layers)
    assert m["band"] >= 0.25
    # The diff chart: one point per layer, aligned with the river's layer ticks.
    assert frame.locator("path.diff-curve").count() == 1
    points = frame.eval_on_selector_all("circle.diff-point", "cs => cs.map(c => c.getBoundingClientRect().left + c.getBoundingClientRect().width / 2)")
    ticks = sorted(x for _, x in m["ticks"])
    assert len(points) == len(layers)
    assert all(abs(a - b) < 1.5 for a, b in zip(sorted(points), ticks))
    assert frame.locator("rect.last-r-window").count() == 1
    dm = manifest["diverging_merging"]
    verdict = frame.locator("text.verdict").text_content()
    assert verdict.startswith("Pattern (Eq. 10)" if dm["detected"] else "No pattern (Eq. 10)")
    # The span from diverging to merging layer (or the best candidate, labelled so).
    if dm["merging_layer"] is not None:
        label = frame.locator("text.story-label").text_content()
        assert ("Best candidate" in label) != dm["detected"]
        span = frame.locator("rect.story-span").bounding_box()
        xs = dict(m["ticks"])
        merging = xs[layers[dm["merging_layer"]]]
        assert span["x"] <= merging <= span["x"] + span["width"]
        if dm["diverging_layer"] is not None:
            assert span["x"] <= xs[layers[dm["diverging_layer"]]] <= span["x"] + span["width"]
    # Coinciding curves stay distinguishable: distinct widths, the adversarial thinnest and on top.
    widths = frame.eval_on_selector_all("path.river-path", "ps => ps.map(p => [p.dataset.role, Number(p.getAttribute('stroke-width'))])")
    assert len({w for _, w in widths}) == len(widths)
    assert widths[-1][0] == "adversarial" and widths[-1][1] == min(w for _, w in widths)
    # Readable names: the short name on the axis, the full path on hover; no repeated words in the legend.
    for text, title in frame.eval_on_selector_all("text.layer-label", "ts => ts.map(t => [t.firstChild.textContent, t.querySelector('title').textContent])"):
        assert title in layers and len(text) <= len(title)
    for item in frame.locator(".legend .item[data-example]").all_inner_texts():
        words = re.findall(r"\w+", item)
        assert not any(words.count(w) > 1 for w in ("adversarial", "source", "target")), item
    screenshot(page, "story-first-view.png")
    assert page.aevis_errors == []


def test_fit_restores_the_whole_river_after_pan_and_zoom_and_the_url_keeps_the_view(served_runs, page):
    tb, small, _ = served_runs
    frame = open_run(page, tb, small)
    layers = [l["name"] for l in tb.aevis("analysis", **ids(small))["layers"]]
    svg = frame.locator("svg.network-svg").bounding_box()
    first = frame.evaluate(MEASURE)
    # Zoom in at the centre, then pan right: layers leave the view.
    hit = frame.locator("rect.layer-hit").nth(1)
    hit.hover()
    frame.locator(".network .tooltip").wait_for(state="visible")
    for _ in range(4):
        page.mouse.wheel(0, -400)
    frame.wait_for_function("() => document.querySelector('.network .tooltip').hidden")  # a redraw hides the tooltip
    page.mouse.move(svg["x"] + 300, svg["y"] + svg["height"] - 40)
    page.mouse.down()
    page.mouse.move(svg["x"] + 700, svg["y"] + svg["height"] - 40, steps=8)
    page.mouse.up()
    moved = frame.evaluate(MEASURE)
    assert not all_layers_in_view(moved, layers)
    # The URL keeps the pan and zoom; a reload reopens the same view.
    frame.wait_for_function("() => window.parent.location.hash.includes('aevis.view=')")
    hash_ = page.evaluate("location.hash")
    page.goto("about:blank")
    frame = dashboard(page, tb, hash_[len("#aevis"):])
    frame.wait_for_selector("path.river-path")
    reopened = frame.evaluate(MEASURE)
    for (name, x), (name2, x2) in zip(sorted(moved["ticks"]), sorted(reopened["ticks"])):
        assert name == name2 and abs(x - x2) < 3
    frame.locator(".network-panel button", has_text="Fit").click()
    fitted = frame.evaluate(MEASURE)
    assert all_layers_in_view(fitted, layers)
    assert fitted["band"] >= 0.25
    assert all(abs(x - y) < 1.5 for (_, x), (_, y) in zip(sorted(first["ticks"]), sorted(fitted["ticks"])))


def test_opening_a_layer_or_expanding_a_group_keeps_the_view(served_runs, page):
    tb, small, _ = served_runs
    graph = tb.aevis("graph", **ids(small))
    layers = [l["name"] for l in tb.aevis("analysis", **ids(small))["layers"]]
    top = next((g for g in graph["groups"] if not g["parent"] and g["gated_layers"]), None)
    assert top is not None, "the small model's graph has a layer group with gated layers"
    frame = open_run(page, tb, small)
    svg = frame.locator("svg.network-svg").bounding_box()
    # Pan so that the group's toggle is well inside the view (and the view is not the fitted one).
    toggle = frame.locator(f'g.expanded-group[data-group="{top["id"]}"] > .toggle').bounding_box()
    dx = max(120, svg["x"] + 60 - toggle["x"])
    page.mouse.move(svg["x"] + 200, svg["y"] + svg["height"] - 20)
    page.mouse.down()
    page.mouse.move(svg["x"] + 200 + dx, svg["y"] + svg["height"] - 20, steps=6)
    page.mouse.up()
    before = dict(frame.evaluate(MEASURE)["ticks"])
    # Opening a layer's treemap keeps the river where it is.
    shown = [k for k in before if svg["x"] < before[k] < svg["x"] + svg["width"]]
    name = sorted(shown, key=before.get)[len(shown) // 2]
    frame.locator(f'rect.layer-hit[data-layer="{name}"]').click()
    frame.wait_for_selector(".treemap-panel:not([hidden])")
    after = dict(frame.evaluate(MEASURE)["ticks"])
    assert all(abs(after[k] - before[k]) < 1 for k in before)
    # Collapsing the group keeps its first layer at the same place on screen.
    kept = layers[top["gated_layers"][0]]
    frame.locator(f'g.expanded-group[data-group="{top["id"]}"] > .toggle').click()
    frame.wait_for_selector(f'g.graph-node.group[data-id="{top["id"]}"]')
    collapsed = dict(frame.evaluate(MEASURE)["ticks"])
    assert abs(collapsed[kept] - after[kept]) < 1.5


def test_several_targets_open_on_the_papers_triplet(served_runs, page):
    tb, _, several = served_runs
    manifest = tb.aevis("analysis", **ids(several))
    dm = manifest["diverging_merging"]
    assert len(manifest["examples"]) == 5
    frame = open_run(page, tb, several)
    drawn = sorted(int(e) for e in frame.eval_on_selector_all("path.river-path", "ps => ps.map(p => p.dataset.example)"))
    assert drawn == sorted([dm["adversarial"], dm["source"], dm["target"]])
    assert "rule (Sec. 5.2)" in frame.locator(".summary").inner_text()
    assert "paper's triplet" in frame.locator(".messages").inner_text()


def test_layer_distance_rms_is_l2_over_sqrt_width_and_can_be_switched(served_runs, page):
    tb, small, _ = served_runs
    manifest = tb.aevis("analysis", **ids(small))
    l2 = tb.aevis("river", **ids(small), examples="0,1,2", normalization="l2")
    rms = tb.aevis("river", **ids(small), examples="0,1,2", normalization="rms")
    widths = [l["channels"] for l in manifest["layers"]]
    for key, curve in manifest["distances"].items():
        assert l2["distances"][key] == pytest.approx(curve)
        assert rms["distances"][key] == pytest.approx([d / math.sqrt(c) for d, c in zip(curve, widths)])
    assert rms["diff_curve"] == pytest.approx([d / math.sqrt(c) for d, c in zip(manifest["diff_curve"], widths)])
    status, body, _ = tb.get("/data/plugin/aevis/river", {**ids(small), "normalization": "max"})
    assert status == 400 and b"normalization" in body
    frame = open_run(page, tb, small)
    assert frame.eval_on_selector('select[name="distance"]', "s => s.value") == "rms"
    with page.expect_request(lambda r: "/river?" in r.url and "normalization=l2" in r.url):
        frame.select_option('select[name="distance"]', "l2")
    frame.wait_for_function("() => window.parent.location.hash.includes('aevis.distance=l2')")
    frame.locator("rect.layer-hit").first.hover()
    assert "L2 distance" in frame.locator(".network .tooltip").inner_text()


def test_dark_mode_follows_tensorboard(served_runs, page):
    tb, small, _ = served_runs
    frame = open_run(page, tb, small)
    background = "() => getComputedStyle(document.querySelector('svg.network-svg .background')).fill"
    light = frame.evaluate(background)
    page.evaluate("document.body.classList.add('dark-mode')")  # what TensorBoard's theme setting does
    frame.wait_for_function("() => document.querySelector('.aevis').classList.contains('dark')")
    dark = frame.evaluate(background)
    assert light != dark
    assert frame.evaluate("() => getComputedStyle(document.body).backgroundColor") != "rgb(245, 245, 245)"
    page.evaluate("document.body.classList.remove('dark-mode')")
    frame.wait_for_function("() => !document.querySelector('.aevis').classList.contains('dark')")
    assert frame.evaluate(background) == light


def test_river_export_holds_every_layer_with_title_and_legend(served_runs, page, tmp_path):
    tb, small, _ = served_runs
    frame = open_run(page, tb, small)
    layers = [l["name"] for l in tb.aevis("analysis", **ids(small))["layers"]]
    for _ in range(5):  # zoomed in: the view shows only part of the river
        frame.locator("svg.network-svg").hover()
        page.mouse.wheel(0, -500)
    with page.expect_download() as info:
        frame.locator(".network-panel button", has_text="Export SVG").click()
    path = tmp_path / "river.svg"
    info.value.save_as(path)
    text = path.read_text(encoding="utf-8")
    width = float(re.search(r'<svg[^>]* width="([\d.]+)"', text).group(1))
    ticks = re.findall(r'<line class="layer-tick" data-layer="([^"]+)" x1="([-\d.]+)"', text)
    assert sorted(name for name, _ in ticks) == sorted(layers)
    assert all(0 <= float(x) <= width for _, x in ticks)
    assert 'class="export-title"' in text and small.name in text.replace("&gt;", ">")
    assert 'class="export-legend"' in text and text.count('class="river-path"') == 3


def best_layer(tb, written, method="constrained"):
    """The layer whose treemap of examples 0, 1, 2 has the most cells, and that treemap."""
    manifest = tb.aevis("analysis", **ids(written, method))
    return max(((l["name"], tb.aevis("treemap", **ids(written, method), layer=l["name"], examples="0,1,2"))
                for l in manifest["layers"]), key=lambda t: len(t[1]["cells"]))


def test_treemap_outlines_every_datapath_labels_regions_and_refuses_a_equal_b(served_runs, page, tmp_path):
    tb, small, _ = served_runs
    layer, treemap = best_layer(tb, small)
    assert treemap["cells"], "no datapath keeps any feature map"
    frame = open_run(page, tb, small, {"aevis.layer": layer})
    frame.wait_for_selector("g.treemap-cell", timeout=60_000)
    keeping = {m for s in treemap["sets"] for m in s["members"]}
    outlined = {int(e) for e in frame.eval_on_selector_all(".datapath-outline", "rs => rs.map(r => r.dataset.example)")}
    assert outlined == keeping
    legend = frame.locator(".treemap-legend li[data-example]").all_inner_texts()
    assert len(legend) == 3  # every chosen datapath is named, also one that keeps no map here
    labels = frame.eval_on_selector_all("text.region-label", "ts => ts.map(t => [t.dataset.members, t.textContent])")
    names = {",".join(map(str, sorted(s["members"]))): s["label"] if s["shared"] else f"{s['label']} only" for s in treemap["sets"]}
    assert labels and any(" only" in t or "∩" in t for _, t in labels)
    for members, text in labels:  # each region's name, or its start and "…" where the region is too narrow
        assert text == names[members] or (text.endswith("…") and names[members].startswith(text[:-1])), (text, names[members])
    # A = B is refused with a message next to the menus; the URL keeps the last valid pair.
    before = page.evaluate("location.hash")
    scroll = frame.evaluate("() => window.scrollY")
    b = frame.eval_on_selector('select[name="diff-a"]', "s => s.value")
    frame.select_option('select[name="diff-b"]', b)
    frame.wait_for_selector(".treemap-notice")
    assert "two different datapaths" in frame.locator(".treemap-notice").inner_text()
    assert page.evaluate("location.hash") == before
    assert frame.eval_on_selector('select[name="diff-b"]', "s => s.value") != b
    assert abs(frame.evaluate("() => window.scrollY") - scroll) < 5
    # Export: title and legend with the drawing.
    with page.expect_download() as info:
        frame.locator(".treemap-panel button", has_text="Export SVG").click()
    path = tmp_path / "treemap.svg"
    info.value.save_as(path)
    text = path.read_text(encoding="utf-8")
    assert 'class="export-title"' in text and f"feature maps of {layer}" in text
    assert 'class="export-legend"' in text and text.count('class="treemap-cell"') == len(treemap["cells"])


def test_neuron_maps_share_one_colour_scale_with_numbers(served_runs, page):
    tb, small, _ = served_runs
    layer, treemap = best_layer(tb, small)
    channel = treemap["cells"][0]["channel"]
    neuron = tb.aevis("neuron", **ids(small), layer=layer, channel=channel)
    urls = [e["activation_map"] for e in neuron["examples"] if e["activation_map"]]
    assert len(urls) >= 2, "two or more examples have an activation map of this feature map"
    ranges = []
    for url in urls:
        status, _, headers = tb.get("/data/plugin/aevis/" + url)
        assert status == 200
        ranges.append([float(v) for v in headers["X-AEVis-Range"].split(",")])
    shared = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
    frame = open_run(page, tb, small, {"aevis.layer": layer, "aevis.channel": str(channel)})
    frame.wait_for_function("n => [...document.querySelectorAll('.activation-map canvas')].filter(c => c.dataset.scale).length === n",
                            arg=len(urls), timeout=60_000)
    scales = frame.eval_on_selector_all(".activation-map canvas", "cs => cs.map(c => c.dataset.scale.split(',').map(Number))")
    assert all(s == pytest.approx(shared, rel=1e-6, abs=1e-9) for s in scales)
    numbers = frame.locator(".ramp-number").all_inner_texts()
    assert len(numbers) == 2 and float(numbers[0]) == pytest.approx(shared[0], rel=5e-3, abs=1e-3)
    # Per-map scale as an option.
    frame.locator('input[name="per-map-scale"]').check()
    frame.wait_for_function("n => [...document.querySelectorAll('.activation-map canvas')].filter(c => c.dataset.scale).length === n",
                            arg=len(urls), timeout=60_000)
    scales = frame.eval_on_selector_all(".activation-map canvas", "cs => cs.map(c => c.dataset.scale.split(',').map(Number))")
    flat = [v for s in sorted(scales) for v in s]
    assert flat == pytest.approx([v for r in sorted(ranges) for v in r], rel=1e-6, abs=1e-9)
    with page.expect_download() as info:
        frame.locator("button.neuron-export").click()
    assert info.value.suggested_filename.endswith(".png")


def test_a_step_without_a_model_says_which_steps_allow_contribution(tmp_path_factory, page):
    from run_fixtures import write_small_run

    logdir = str(tmp_path_factory.mktemp("aevis-nomodel"))
    write_small_run(logdir, run="mixed", name="cat->dog", steps=(0,), with_model=False)
    written = write_small_run(logdir, run="mixed", name="cat->dog", steps=(5,), with_model=True)
    tb = start_tensorboard(logdir, expect_runs=1)
    try:
        entry = tb.aevis("runs")["runs"][0]["analyses"][0]
        frame = open_run(page, tb, written, {"aevis.method": "constrained", "aevis.step": "0"})
        note = frame.locator(".summary .no-model").inner_text()
        assert "Step 0 saved no model" in note
        if "steps_with_model" in entry:  # servers that list them: the note names the steps
            assert entry["steps_with_model"] == [5] and "steps with a saved model: 5" in note
        else:
            assert "model=" in note
        # A link naming datapaths the analysis does not have is repaired, and says so.
        frame = open_run(page, tb, written, {"aevis.method": "constrained", "aevis.step": "5", "aevis.examples": "0,9"})
        assert "9 of the link is not in this analysis" in frame.locator(".messages").inner_text()
        assert page.aevis_errors == []
    finally:
        tb.close()


def test_changing_the_datapaths_keeps_the_open_levels_and_the_scroll(served_runs, page):
    tb, small, _ = served_runs
    layer, treemap = best_layer(tb, small)
    channel = treemap["cells"][0]["channel"]
    frame = open_run(page, tb, small, {"aevis.layer": layer, "aevis.channel": str(channel)})
    frame.wait_for_function("() => [...document.querySelectorAll('.activation-map canvas')].some(c => c.dataset.scale)", timeout=60_000)
    frame.locator(".neuron h3").scroll_into_view_if_needed()
    where = lambda: frame.evaluate("() => [window.scrollY, window.parent.scrollY]")  # noqa: E731
    before = where()
    assert max(before) > 0, "the page is scrolled to the neuron level"
    frame.evaluate("() => { window.aevisHidden = 0; new MutationObserver(() => { if (document.querySelector('.treemap-panel').hidden) window.aevisHidden++; })"
                   ".observe(document.body, {subtree: true, attributes: true, attributeFilter: ['hidden']}); }")
    # Untick a datapath without scrolling to its checkbox (as a keyboard user would).
    frame.evaluate("() => document.querySelector('input[name=\"datapath\"][value=\"1\"]').click()")
    frame.wait_for_function("() => document.querySelectorAll('path.river-path').length === 2")
    frame.wait_for_function("() => document.querySelectorAll('.neuron-example').length > 0")
    assert frame.evaluate("() => window.aevisHidden") == 0  # the treemap never disappeared
    after = where()
    # Not reset: the page stays where it was, up to the height of what changed above (a shorter legend).
    assert all(abs(a - b) < 60 for a, b in zip(before, after)), (before, after)
    frame.locator(".neuron h3").wait_for(state="visible", timeout=30_000)  # the neuron level is redrawn in place
    heading = frame.locator(".neuron h3").bounding_box()
    assert 0 <= heading["y"] <= page.viewport_size["height"]
    assert frame.locator(".neuron h3").inner_text() == f"Feature map {channel} of {layer}"


def test_provenance_is_shown_as_text(tmp_path_factory, page):
    import numpy as np
    import torch
    from run_fixtures import IMAGE_SIZE, TinyCNN
    from summary_writers import add_analysis
    from tensorboard_plugin_aevis.extraction import extract_datapaths

    logdir = str(tmp_path_factory.mktemp("aevis-provenance"))
    model = TinyCNN(0).eval()
    images = torch.from_numpy(np.random.default_rng(0).random((3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    analysis = extract_datapaths(model, images, ["source", "adversarial", "target"], method="constrained", steps=4)
    provenance = {"adversarial": "MI-FGSM, targeted at 'dog', eps 16/255, 10 steps",
                  "target": "representative (Sec. 6.2.1) of 3 'dog' images: <b>dog 2</b>"}
    analysis.params["provenance"] = provenance
    add_analysis(f"{logdir}/prov", "cat->dog", analysis, 0, model=None, save_model=False)
    tb = start_tensorboard(logdir, expect_runs=1)
    try:
        frame = dashboard(page, tb)
        frame.wait_for_selector("path.river-path")
        shown = frame.locator(".summary .provenance").inner_text()
        assert provenance["adversarial"] in shown and provenance["target"] in shown  # as text, never as markup
        assert frame.locator(".summary .provenance b").count() == 0
    finally:
        tb.close()


def test_brushing_shows_a_quadratic_preview_then_the_sgd_answer(served_runs, page):
    tb, small, _ = served_runs
    layer, treemap = best_layer(tb, small)
    manifest = tb.aevis("analysis", **ids(small))
    if manifest["layers"][0]["name"] == layer:
        pytest.skip("the layer with most maps is the first: nothing earlier to trace from")
    channel = treemap["cells"][0]["channel"]
    frame = open_run(page, tb, small, {"aevis.layer": layer, "aevis.channel": str(channel)})
    frame.wait_for_function("() => [...document.querySelectorAll('.activation-map canvas')].some(c => c.dataset.scale)", timeout=60_000)
    assert frame.eval_on_selector('.neuron select[name="contribution-mode"]', "s => s.value") == "preview"
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json["mode"]) if r.url.endswith("/contribution") and r.method == "POST" else None)
    canvas = frame.locator(".activation-map canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=4)
    page.mouse.up()
    frame.wait_for_selector(".contribution-entry", timeout=120_000)
    frame.wait_for_function("() => /done in/.test(document.querySelector('.neuron .contribution-status').textContent)", timeout=180_000)
    assert sent == ["quadratic", "sgd"]
    note = frame.locator(".contribution-result .note").first.inner_text()
    assert "sgd" in note and "preview" not in note
    assert not frame.locator(".neuron button.contribution-run").is_disabled()
