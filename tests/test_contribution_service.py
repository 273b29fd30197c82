"""ContributionService against real runs (real writer, saved model artifact, real DataProvider)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from tensorboard import context
from tensorboard.backend.event_processing import data_ingester, data_provider, plugin_event_multiplexer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run_fixtures import TinyCNN, write_small_run  # noqa: E402

from tensorboard_plugin_aevis import contribution, run_reader  # noqa: E402
from tensorboard_plugin_aevis.contribution_service import ContributionService, provider_loader  # noqa: E402

CTX = context.RequestContext()


def provider_for(logdir):
    mux = plugin_event_multiplexer.EventMultiplexer(
        size_guidance=data_ingester.DEFAULT_SIZE_GUIDANCE, tensor_size_guidance=dict(data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE)
    )
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return data_provider.MultiplexerDataProvider(mux, str(logdir))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("contribution_runs")
    small = write_small_run(str(root), run="small", seed=0)
    write_small_run(str(root), run="nomodel", with_model=False, seed=1)
    return str(root), small


@pytest.fixture(scope="module")
def provider(logdir):
    return provider_for(logdir[0])


@pytest.fixture(scope="module")
def load(logdir, provider):
    return provider_loader(provider, logdir[0], CTX, "")


def request(small, **overrides):
    analysis = small.analyses[("constrained", 0)]
    params = {
        "run": "small", "analysis": small.name, "method": "constrained", "step": 0,
        "target_layer": analysis.layers[-1].name, "channel": 1, "earlier_layer": analysis.layers[1].name,
        "area": [0, 0, 2, 2], "mode": "quadratic",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


@pytest.mark.parametrize("mode", ["quadratic", "sgd"])
def test_answer_matches_the_engine_on_the_original_model_and_is_cached(logdir, provider, load, mode):
    root, small = logdir
    service = ContributionService(max_concurrent=2, timeout_s=120)
    params = request(small, examples=[1, 0], mode=mode)
    status, body = service.handle(params, load)
    assert status == 200, body
    assert body["cached"] is False and body["examples"] == [1, 0] and body["area"] == [0, 0, 2, 2]
    # independent computation: the user's original model on the images read back from the run
    loaded = run_reader.load_analysis(provider, CTX, "", "small", small.name, "constrained", 0, logdir=root)
    images = torch.from_numpy(loaded.analysis.images[[1, 0]].astype(np.float32))
    expected = contribution.feature_map_contributions(
        TinyCNN(0).eval(), images, params["target_layer"], 1, params["earlier_layer"], area=(0, 0, 2, 2), mode=mode
    )
    np.testing.assert_allclose(body["scores"], expected.scores, atol=1e-4)
    assert [r["channel"] for r in body["ranking"]] == expected.ranking[:10]  # default top 10
    binary = loaded.analysis.binary()[[l.name for l in loaded.analysis.layers].index(params["earlier_layer"])]
    for rank, entry in enumerate(body["ranking"]):
        assert entry["rank"] == rank and entry["score"] == body["scores"][entry["channel"]]
        assert entry["in_datapaths"] == [i for i in range(loaded.analysis.num_examples) if binary[i, entry["channel"]]]
        assert entry["neuron"].startswith("neuron?") and f"channel={entry['channel']}" in entry["neuron"]
    assert body["score_meaning"] and len(service.handle(dict(params, top=3), load)[1]["ranking"]) == 3

    status, again = service.handle(dict(params), load)
    assert status == 200 and again["cached"] is True and again["scores"] == body["scores"]
    status, other = service.handle(dict(params, mode="sgd", steps=5), load)
    assert status == 200 and other["cached"] is False and other["mode"] == "sgd" and other["params"]["steps"] == 5


def test_area_in_another_grid_maps_onto_the_target_map(logdir, load):
    root, small = logdir
    service = ContributionService()
    layer = small.analyses[("constrained", 0)].layers[-1]
    status, native = service.handle(request(small), load)
    assert status == 200, native
    # the same neurons brushed on an image 4x the map's size hit the same cache entry
    grid = [4 * layer.height, 4 * layer.width]
    status, scaled = service.handle(request(small, area="0,0,8,8", area_grid=grid), load)
    assert status == 200 and scaled["cached"] is True and scaled["area"] == [0, 0, 2, 2]
    mask = np.zeros((layer.height, layer.width), dtype=int)
    mask[0:2, 0:2] = 1
    status, by_mask = service.handle(request(small, area=None, area_mask=mask.tolist()), load)
    assert status == 200 and by_mask["area_neurons"] == 4
    np.testing.assert_allclose(by_mask["scores"], native["scores"], atol=1e-5)


def test_prediction_target(logdir, provider, load):
    root, small = logdir
    service = ContributionService()
    params = request(small, target="prediction", target_layer=None, channel=None, area=None, examples=[])
    status, body = service.handle(params, load)
    assert status == 200, body
    assert body["examples"] == [0, 1, 2]  # an empty list means all examples
    assert body["target_layer"] is None and len(body["scores"]) == small.analyses[("constrained", 0)].layers[1].channels
    # the loaded artifact replays from the earlier layer to the logits: the original model's answer
    loaded = run_reader.load_analysis(provider, CTX, "", "small", small.name, "constrained", 0, logdir=root)
    images = torch.from_numpy(loaded.analysis.images.astype(np.float32))
    expected = contribution.prediction_contributions(TinyCNN(0).eval(), images, params["earlier_layer"], mode="quadratic")
    np.testing.assert_allclose(body["scores"], expected.scores, atol=1e-4)


class BlockingProvider:
    """The real provider; ``read_tensors`` waits until ``release`` is set (holds a job in flight)."""

    def __init__(self, inner):
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def read_tensors(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(60)
        return self.inner.read_tensors(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_429_when_all_slots_are_busy_then_serving_again(logdir, provider):
    root, small = logdir
    blocking = BlockingProvider(provider)
    load = provider_loader(blocking, root, CTX, "")
    service = ContributionService(max_concurrent=1, timeout_s=120)
    answers = {}
    worker = threading.Thread(target=lambda: answers.setdefault("first", service.handle(request(small, area=None), load)))
    worker.start()
    assert blocking.entered.wait(30)
    status, body = service.handle(request(small), load)
    assert status == 429 and "already running" in body["error"]
    blocking.release.set()
    worker.join(60)
    assert answers["first"][0] == 200, answers["first"]
    assert service.handle(request(small, area=None, examples=[0]), load)[0] == 200


def test_timeout_answers_503(logdir, load):
    root, small = logdir
    service = ContributionService(timeout_s=1e-6)
    status, body = service.handle(request(small, area=None, mode="sgd"), load)
    assert status == 503 and "longer than" in body["error"]


@pytest.mark.parametrize(
    "overrides,status,message",
    [
        (dict(run=None), 400, "missing parameter 'run'"),
        (dict(step="zero"), 400, "'step' must be an integer"),
        (dict(mode="newton"), 400, "'mode' must be one of"),
        (dict(target="logits"), 400, "'target' must be"),
        (dict(area=[0, 0, 99, 2]), 400, "outside the"),
        (dict(area="1,2"), 400, "'area' must be 4 integers"),
        (dict(area_mask=[[1]]), 400, "give either 'area'"),
        (dict(area=None, area_mask=[[0, 0], [0, 0]], area_grid=[2, 2]), 400, "selects no neuron"),
        (dict(steps=10_000), 400, "'steps' must be between"),
        (dict(run="nope"), 404, "no analysis"),
        (dict(step=7), 404, "no analysis"),
        (dict(examples=[0, 9]), 404, "must be distinct indices"),
        (dict(channel=999), 404, "channel 999 does not exist"),
        (dict(earlier_layer="features.99"), 404, "unknown earlier layer 'features.99'"),
        (dict(run="nomodel"), 409, "has no saved model"),
    ],
)
def test_bad_requests_get_clear_errors(logdir, load, overrides, status, message):
    root, small = logdir
    service = ContributionService()
    got, body = service.handle(request(small, **overrides), load)
    assert got == status, body
    assert message in body["error"]


def test_earlier_layer_that_is_not_earlier(logdir, load):
    root, small = logdir
    service = ContributionService()
    layers = small.analyses[("constrained", 0)].layers
    status, body = service.handle(request(small, target_layer=layers[0].name, earlier_layer=layers[-1].name, area=None), load)
    assert status == 400 and "does not run before" in body["error"]
    assert service.handle(request(small), load)[0] == 200  # still serving


def test_post_route_of_the_real_plugin(logdir):
    """The plugin's POST contribution (its default handler is handle_contribution) in TensorBoard's WSGI app."""
    import json

    from run_fixtures import tensorboard_app
    from werkzeug.test import Client

    root, small = logdir
    app, close = tensorboard_app(root)
    try:
        client = Client(app)
        url = "/data/plugin/aevis/contribution"

        def post(**overrides):
            response = client.post(url, data=json.dumps(request(small, **overrides)), content_type="application/json")
            return response.status_code, json.loads(response.get_data(as_text=True))

        status, body = post(area=None)
        assert status == 200 and body["ranking"] and len(body["scores"]) == small.analyses[("constrained", 0)].layers[1].channels
        status, body = post(area=[0, 0, 99, 2])
        assert status == 400 and "outside the" in body["error"]
        status, body = post(run="nomodel")
        assert status == 409 and "has no saved model" in body["error"]
        status, body = post(run="missing")
        assert status == 404
        assert client.get("/data/plugin/aevis/runs").status_code == 200  # still serving
    finally:
        close()


# ----------------------------------------------------------------------- simultaneous requests (issue #18)
@pytest.mark.parametrize("count", [2, 10])
def test_simultaneous_requests_on_a_fresh_service_answer_200_or_429_and_load_once(logdir, provider, count, monkeypatch):
    import concurrent.futures

    from tensorboard_plugin_aevis import model_artifact

    reads = []
    real_read = model_artifact.read_program
    monkeypatch.setattr(model_artifact, "read_program", lambda d: reads.append(d) or real_read(d))
    root, small = logdir
    load = provider_loader(provider, root, CTX, "")
    service = ContributionService(max_concurrent=2, timeout_s=120)
    barrier = threading.Barrier(count)

    def send(i):
        barrier.wait()
        return service.handle(request(small, channel=i % 2, mode="sgd", steps=5 + i), load)  # distinct, valid requests

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(send, range(count)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429} and 200 in statuses, answers
    assert all("already running" in body["error"] for status, body in answers if status == 429)
    assert len(reads) == 1  # one read of the artifact, shared by every job


def test_a_warmed_artifact_is_not_read_again(logdir, provider, monkeypatch):
    from tensorboard_plugin_aevis import model_artifact

    reads, instances = [], []
    real_read, real_instance = model_artifact.read_program, model_artifact.module_from_program
    monkeypatch.setattr(model_artifact, "read_program", lambda d: reads.append(d) or real_read(d))
    monkeypatch.setattr(model_artifact, "module_from_program", lambda p: instances.append(p) or real_instance(p))
    root, small = logdir
    load = provider_loader(provider, root, CTX, "")
    service = ContributionService()
    service.warm(load("small", small.name, "constrained", 0))
    assert len(reads) == 1 and len(instances) == 1  # the model read and one instance made ahead
    service.warm(load("small", small.name, "constrained", 0))
    assert len(reads) == 1 and len(instances) == 1  # an instance is free already: none more
    assert service.handle(request(small), load)[0] == 200 and len(reads) == 1 and len(instances) == 1  # the request used it
    service.warm(load("nomodel", small.name, "constrained", 0))  # nothing to warm: no error either


# ----------------------------------------------------------------------- damaged artifacts through the route (issue #18)
@pytest.mark.parametrize("kind", ["program_directory", "weights_directory", "program_loop", "weights_truncated", "weights_oversized",
                                  "meta_directory", "meta_loop"])
def test_damaged_artifact_through_the_real_plugin_is_a_4xx_naming_the_file(logdir, tmp_path, kind):
    import json
    import os
    import shutil

    from run_fixtures import tensorboard_app
    from werkzeug.test import Client

    from tensorboard_plugin_aevis import model_artifact

    root, small = logdir
    copy = tmp_path / "runs"
    shutil.copytree(os.path.join(root, "small"), copy / "small")
    models = copy / "small" / "plugins" / "aevis" / "models"
    artifact = models / os.listdir(models)[0]
    name = {"program": model_artifact.PROGRAM_FILE, "weights": model_artifact.WEIGHTS_FILE, "meta": model_artifact.META_FILE}[kind.split("_")[0]]
    path = artifact / name
    if kind.endswith("directory"):
        path.unlink()
        path.mkdir()
    elif kind.endswith("loop"):
        path.unlink()
        os.symlink(path, path)
    elif kind.endswith("truncated"):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        with open(path, "r+b") as f:
            f.truncate(model_artifact.MAX_FILE_BYTES[name] + 1)
    app, close = tensorboard_app(str(copy))
    try:
        client = Client(app)
        response = client.post("/data/plugin/aevis/contribution", data=json.dumps(request(small)), content_type="application/json")
        body = json.loads(response.get_data(as_text=True))
        assert 400 <= response.status_code < 500 and name in body["error"] and "re-log" in body["error"], body
        analysis = client.get("/data/plugin/aevis/analysis?" + "&".join(f"{k}={v}" for k, v in
                              {"run": "small", "analysis": "cat-%3Edog", "method": "constrained", "step": 0}.items()))
        assert analysis.status_code == 200  # the rest of the analysis is served
    finally:
        close()
