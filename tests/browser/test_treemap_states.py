"""Guarantees of the dashboard's messages and treemap states, in real headless Chromium
against a real TensorBoard: each warning shows once, a layer that keeps no map says so
without an empty box."""

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
