"""Guarantees of the dashboard's messages and treemap states, in real headless Chromium
against a real TensorBoard: each warning shows once, a layer that keeps no map says so
without an empty box, a treemap cell's opacity follows its stability over the starts."""

from __future__ import annotations

import glob
import os
import urllib.parse

import pytest

from conftest import dashboard, start_tensorboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DAMAGED = "cannot be used"
AT_LEAST_TWO = "The river compares two or more datapaths: keep at least two selected."
NO_MAP_HERE = "None of the chosen datapaths keeps a feature map of this layer."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A run whose model artifact is damaged (a reader warning the analysis answer carries),
    and a run with stability and a layer that keeps no map (tests/run_fixtures.py), served
    by tensorboard."""
    from run_fixtures import write_run_with_stability_and_an_empty_layer, write_small_run

    logdir = str(tmp_path_factory.mktemp("aevis-treemap-states"))
    twice = write_small_run(logdir, run="damaged-model", name="cat->dog")
    metas = glob.glob(os.path.join(twice.path, "plugins", "aevis", "models", "*", "meta.json"))
    assert len(metas) == 1
    with open(metas[0], "w", encoding="utf-8") as f:
        f.write("{not json")
    stable = write_run_with_stability_and_an_empty_layer(logdir)
    tb = start_tensorboard(logdir, expect_runs=2)
    yield tb, twice, stable
    tb.close()


def open_run(page, tb, written, extra=None):
    state = {"aevis.run": written.run, "aevis.analysis": written.name, **(extra or {})}
    frame = dashboard(page, tb, "&" + urllib.parse.urlencode(state, quote_via=urllib.parse.quote))
    frame.wait_for_selector("path.river-path", timeout=90_000)
    return frame


def warnings_shown(frame):
    return frame.eval_on_selector_all(".messages .message.warning", "ms => ms.map(m => m.textContent)")


def test_each_warning_shows_once_through_redraws(served, page):
    tb, twice, _ = served
    frame = open_run(page, tb, twice)
    assert any(DAMAGED in w for w in tb.aevis("analysis", run=twice.run, analysis=twice.name, method="constrained", step=0)["warnings"])
    frame.wait_for_selector(".messages .message.warning")
    assert sum(DAMAGED in w for w in warnings_shown(frame)) == 1
    # Redraws: another layer distance, fewer datapaths (the analysis is read again), then
    # two refused unticks in a row (each raises the same warning).
    frame.select_option('select[name="distance"]', "l2")
    frame.wait_for_function("() => window.parent.location.hash.includes('aevis.distance=l2')")
    frame.evaluate("() => document.querySelector('input[name=\"datapath\"][value=\"1\"]').click()")
    frame.wait_for_function("() => document.querySelectorAll('path.river-path').length === 2")
    frame.wait_for_function("() => document.querySelectorAll('input[name=\"datapath\"]:checked').length === 2")
    for _ in range(2):
        frame.evaluate("() => document.querySelector('input[name=\"datapath\"][value=\"2\"]').click()")
        frame.wait_for_function(f"() => document.querySelector('.messages').textContent.includes({AT_LEAST_TWO!r})")
    shown = warnings_shown(frame)
    assert sum(DAMAGED in w for w in shown) == 1, shown
    assert shown.count(AT_LEAST_TWO) == 1, shown
    assert len(shown) == len(set(shown)), shown
    assert frame.locator('input[name="datapath"]:checked').count() == 2


def test_a_layer_that_keeps_no_map_says_so_without_an_empty_box(served, page):
    from run_fixtures import EMPTY_LAYER

    tb, _, stable = served
    analysis = stable.analyses[("constrained", 0)]
    layer = analysis.layers[EMPTY_LAYER].name
    assert not any(b.any() for b in analysis.binary()[EMPTY_LAYER])  # the constructed input
    assert tb.aevis("treemap", run=stable.run, analysis=stable.name, method="constrained", step=0, layer=layer)["cells"] == []
    frame = open_run(page, tb, stable, {"aevis.layer": layer})
    frame.wait_for_selector(".treemap .empty-layer", timeout=60_000)
    treemap = frame.locator(".treemap-panel .treemap")
    assert frame.locator(".treemap .empty-layer").inner_text() == NO_MAP_HERE
    assert treemap.locator("svg").count() == 0
    assert treemap.bounding_box()["height"] < 300
    rows = treemap.locator(".treemap-legend li[data-example]").all_inner_texts()
    assert len(rows) == 3 and all(r.endswith("keeps no feature map of this layer") for r in rows), rows


def test_treemap_cell_opacity_and_hover_follow_the_stability_of_the_starts(served, page):
    tb, one_start, stable = served
    ids = {"run": stable.run, "analysis": stable.name, "method": "constrained", "step": 0}
    analysis = stable.analyses[("constrained", 0)]
    answers = {l.name: tb.aevis("treemap", **ids, layer=l.name) for l in analysis.layers}
    layer = next(name for name, a in answers.items() if any(min(c["stability"]) < 1 for c in a["cells"]))
    cells = {c["channel"]: c for c in answers[layer]["cells"]}
    frame = open_run(page, tb, stable, {"aevis.layer": layer})
    frame.wait_for_selector("g.treemap-cell", timeout=60_000)
    drawn = frame.eval_on_selector_all(
        "g.treemap-cell", "gs => gs.map(g => [Number(g.dataset.channel), Number(getComputedStyle(g).opacity)])")
    assert sorted(ch for ch, _ in drawn) == sorted(cells)
    for channel, opacity in drawn:  # opacity = 0.25 + 0.75 x the least stable member's share of starts
        assert opacity == pytest.approx(0.25 + 0.75 * min(cells[channel]["stability"]), abs=2e-3), channel
    by_stability = sorted(drawn, key=lambda d: min(cells[d[0]]["stability"]))
    assert by_stability[0][1] < by_stability[-1][1] == pytest.approx(1.0)
    faded = by_stability[0][0]
    frame.locator(f'g.treemap-cell[data-channel="{faded}"]').hover()
    tooltip = frame.locator(".treemap .tooltip").inner_text()
    names = {e.name for e in analysis.examples}
    shares = [f"{int(100 * v + 0.5)} %" for v in cells[faded]["stability"]]
    assert "stability" in tooltip and all(s in tooltip for s in shares), tooltip
    assert any(e.name in tooltip for e in analysis.examples)
    assert "starts" in frame.locator(".treemap-legend .stability-key").inner_text()
    # One start: no stability, every cell opaque, no stability key in the legend.
    last = one_start.analyses[("constrained", 0)].layers[-1].name
    assert all(c["stability"] is None for c in tb.aevis(
        "treemap", run=one_start.run, analysis=one_start.name, method="constrained", step=0, layer=last)["cells"])
    frame = open_run(page, tb, one_start, {"aevis.layer": last})
    frame.wait_for_selector("g.treemap-cell", timeout=60_000)
    assert frame.eval_on_selector_all("g.treemap-cell", "gs => gs.every(g => getComputedStyle(g).opacity === '1')")
    assert frame.locator(".treemap-legend .stability-key").count() == 0
