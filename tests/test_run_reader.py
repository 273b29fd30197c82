"""Round trips through TensorBoard's real DataProvider: what is read back is what was written."""

from __future__ import annotations

import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tensorboard import context
from tensorboard.backend.event_processing import data_ingester, data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from summary_writers import add_analysis
from tensorboard_plugin_aevis import metadata, run_reader
from tensorboard_plugin_aevis.analysis import Analysis, ExampleRecord, LayerRecord
from tensorboard_plugin_aevis.run_reader import AnalysisKey

CTX = context.RequestContext()
EID = ""


# ----------------------------------------------------------------- helpers
def make_analysis(seed=0, method="constrained", roles=("adversarial", "source", "target", "target"), map_size=(6, 56, 3)):
    """A synthetic analysis: 3 layers, random gates / maps; the middle layer's maps are 56x56 (pooled to 28x28)."""
    rng = np.random.default_rng(seed)
    layers = [LayerRecord("features.0", 8, map_size[0], map_size[0]), LayerRecord("features.3", 6, map_size[1], map_size[1]),
              LayerRecord("block/2", 16, map_size[2], map_size[2])]
    n = len(roles)
    examples = [
        ExampleRecord(name=f"img{i}", role=r, label=i, class_name=f"class {i}", confidence=0.5 + 0.1 * i, gated_label=i,
                      binary_label=i, true_label=i if i else None, adversarial_score=12.5 if r == "adversarial" else None,
                      loss_history=[1.0, 0.5 - 0.01 * seed])
        for i, r in enumerate(roles)
    ]
    return Analysis(
        method=method, params={"lambda": 0.01, "gamma": 1.0, "seed": seed}, examples=examples, layers=layers,
        images=rng.random((n, 3, 12, 12), dtype=np.float32),
        gates=[rng.random((n, l.channels), dtype=np.float32) for l in layers], threshold=0.5,
        max_activations=[rng.random((n, l.channels), dtype=np.float32) * 3 for l in layers],
        activation_maps=[rng.normal(size=(n, l.channels, l.height, l.width)).astype(np.float32) for l in layers],
    )


def provider_for(logdir, size_guidance=None):
    """The provider TensorBoard builds for ``--logdir`` with ``--load_fast=false`` (default sampling)."""
    mux = plugin_event_multiplexer.EventMultiplexer(
        size_guidance=size_guidance or data_ingester.DEFAULT_SIZE_GUIDANCE,
        tensor_size_guidance=dict(data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE),
    )
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return data_provider.MultiplexerDataProvider(mux, str(logdir))


def layer_distance(a, i, j, l):
    return float(np.linalg.norm(a.gates[l][i].astype(np.float64) - a.gates[l][j].astype(np.float64)))


def assert_same_analysis(written: Analysis, loaded: run_reader.LoadedAnalysis, max_map_size=28):
    read = loaded.analysis
    assert read.to_json() == written.to_json()
    for x, y in zip(written.gates, read.gates):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(written.max_activations, read.max_activations):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(read.images, written.images, atol=1 / 510 + 1e-6)
    n = written.num_examples
    for i in range(n):
        for j in range(i + 1, n):
            expected = [layer_distance(written, i, j, l) for l in range(len(written.layers))]
            np.testing.assert_allclose(loaded.distances[f"{i},{j}"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.manifest["kept_fraction"], written.kept_fraction())
    # activation maps: present exactly for the channels in some binary datapath, equal to
    # the block-average-pooled map within the quantisation step
    in_datapath = [b.any(axis=0) for b in written.binary()]
    for l, layer in enumerate(written.layers):
        for c in range(layer.channels):
            for e in range(n):
                got = loaded.activation_maps.map(l, c, e)
                if not in_datapath[l][c]:
                    assert got is None
                    continue
                full = written.activation_maps[l][e, c].astype(np.float64)
                if layer.height > max_map_size:
                    h = max_map_size
                    assert layer.height % h == 0, "test maps must pool evenly"
                    f = layer.height // h
                    full = full.reshape(h, f, h, f).mean(axis=(1, 3))
                step = (full.max() - full.min()) / 510
                np.testing.assert_allclose(got, full, atol=step + 1e-5)


# ------------------------------------------------------------------- tests
def test_several_analyses_at_several_steps_round_trip(tmp_path):
    written = {}
    with SummaryWriter(str(tmp_path / "train")) as writer:
        for step in (0, 5, 10):
            written[("train", "cat->dog", "constrained", step)] = a = make_analysis(seed=step)
            add_analysis(writer, "cat->dog", a, step)
        written[("train", "cat->dog", "dgr", 5)] = a = make_analysis(seed=99, method="dgr")
        add_analysis(writer, "cat->dog", a, 5)
    written[("eval", "a/b c", "constrained", 3)] = a = make_analysis(seed=7, roles=("source", "adversarial"))
    add_analysis(str(tmp_path / "eval"), "a/b c", a, 3)  # a logdir path and a name with '/'

    dp = provider_for(tmp_path)
    index = run_reader.index_runs(dp, CTX, EID)
    assert index.warnings == []
    assert index.analyses == {
        "eval": [AnalysisKey("a/b c", "constrained", (3,))],
        "train": [AnalysisKey("cat->dog", "constrained", (0, 5, 10)), AnalysisKey("cat->dog", "dgr", (5,))],
    }
    for (run, name, method, step), a in written.items():
        loaded = run_reader.load_analysis(dp, CTX, EID, run, name, method, step)
        assert (loaded.run, loaded.name, loaded.method, loaded.step) == (run, name, method, step)
        assert_same_analysis(a, loaded)
        assert loaded.warnings == []
        assert loaded.graph is None and loaded.model_artifact is None and loaded.manifest["has_model"] is False


def test_diff_curve_and_diverging_merging_follow_eq_9(tmp_path):
    a = make_analysis(seed=3, roles=("adversarial", "source", "target"))
    add_analysis(str(tmp_path / "run"), "x", a, 0)
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "x", "constrained", 0)
    expected = [layer_distance(a, 0, 1, l) - layer_distance(a, 0, 2, l) for l in range(3)]
    np.testing.assert_allclose(loaded.diff_curve, expected, rtol=1e-5, atol=1e-6)
    dm = loaded.diverging_merging
    assert (dm["adversarial"], dm["source"], dm["target"]) == (0, 1, 2)
    np.testing.assert_allclose(dm["diff"], expected, rtol=1e-5, atol=1e-6)
    r = 2  # 3 layers: r = min(8, L - 1)
    rises = sum(expected[i] > expected[i - 1] for i in range(len(expected) - r, len(expected)))
    assert (dm["r"], dm["n_l"]) == (r, rises)
    assert dm["detected"] == (rises == r and int(np.argmax(expected)) == len(expected) - 1)
    assert "diverging_layer" in dm and "merging_layer" in dm


def test_default_sampling_drops_no_step(tmp_path):
    """--load_fast=false keeps 10 tensors / blobs per tag by default; 14 steps all survive."""
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in range(14):
            add_analysis(writer, "x", make_analysis(seed=step, map_size=(2, 2, 2)), step * 10)
    dp = provider_for(tmp_path)
    index = run_reader.index_runs(dp, CTX, EID)
    assert index.analyses["run"] == [AnalysisKey("x", "constrained", tuple(range(0, 140, 10)))]
    assert index.warnings == []
    loaded = run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 70)
    assert loaded.analysis.params["seed"] == 7


def _rewrite_without(path, drop):
    """Rewrite an event file, leaving out the events ``drop(event)`` is true for."""
    events = [event_pb2.Event.FromString(record) for record in RawEventFileLoader(path).Load()]
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for event in events:
            if not drop(event):
                writer.write(event.SerializeToString())


def test_lost_manifest_is_reported_with_the_fix(tmp_path):
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in (0, 1, 2):
            add_analysis(writer, "x", make_analysis(seed=step, map_size=(2, 2, 2)), step)
    (path,) = glob.glob(str(tmp_path / "run" / "events.*"))
    _rewrite_without(path, lambda e: e.step == 1 and any(v.tag.endswith("/manifest") for v in e.summary.value))
    index = run_reader.index_runs(provider_for(tmp_path), CTX, EID)
    assert index.analyses["run"] == [AnalysisKey("x", "constrained", (0, 2))]
    (warning,) = index.warnings
    assert "1 logged analyses are not loaded" in warning and "--samples_per_plugin=aevis=0" in warning


def test_manifest_without_arrays_and_garbled_arrays(tmp_path):
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in (0, 1, 2):
            add_analysis(writer, "x", make_analysis(seed=step, map_size=(2, 2, 2)), step)
    (path,) = glob.glob(str(tmp_path / "run" / "events.*"))
    _rewrite_without(path, lambda e: e.step == 1 and any(v.tag.endswith("/arrays") for v in e.summary.value))
    events = [event_pb2.Event.FromString(record) for record in RawEventFileLoader(path).Load()]
    with open(path, "wb") as f:  # step 2: valid records whose npz bytes are garbage
        writer = RecordWriter(f)
        for event in events:
            for value in event.summary.value:
                if event.step == 2 and value.tag.endswith("/arrays"):
                    value.tensor.string_val[0] = b"PK\x03\x04 not really a zip"
            writer.write(event.SerializeToString())
    dp = provider_for(tmp_path)
    index = run_reader.index_runs(dp, CTX, EID)
    assert index.analyses == {"run": [AnalysisKey("x", "constrained", (0, 2))]}
    (warning,) = index.warnings
    assert "1 analyses have a manifest but no arrays" in warning
    with pytest.raises(run_reader.AnalysisReadError, match="is damaged"):
        run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 2)
    assert_same_analysis(make_analysis(seed=0, map_size=(2, 2, 2)), run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 0))


@pytest.mark.parametrize("breakage, message", [
    (lambda a: a.gates[1].__setitem__((0, 0), np.nan), "NaN"),
    (lambda a: a.gates.__setitem__(0, np.zeros((4, 5), np.float32)), "expected (4, 8)"),
    (lambda a: a.examples.clear(), "no examples"),
    (lambda a: a.max_activations.__setitem__(2, np.zeros((4, 3), np.float32)), "max_activations"),
])
def test_bad_analysis_raises_and_harms_nothing(tmp_path, breakage, message):
    with SummaryWriter(str(tmp_path / "run")) as writer:
        good = make_analysis(seed=1)
        add_analysis(writer, "x", good, 0)
        (path,) = glob.glob(str(tmp_path / "run" / "events.*"))
        size = os.path.getsize(path)
        bad = make_analysis(seed=2)
        breakage(bad)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            add_analysis(writer, "x", bad, 1)
        writer.flush()
        assert os.path.getsize(path) == size  # nothing written
    dp = provider_for(tmp_path)
    assert run_reader.list_analyses(dp, CTX, EID) == {"run": [AnalysisKey("x", "constrained", (0,))]}
    assert_same_analysis(good, run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 0))


@pytest.mark.parametrize("writer, error", [(42, TypeError), ("", ValueError)])
def test_bad_writer_is_named(writer, error):
    with pytest.raises(error, match="logdir"):
        add_analysis(writer, "x", make_analysis(), 0)


def test_bad_name_step_and_reference_images(tmp_path):
    a = make_analysis()
    with pytest.raises(ValueError, match="name"):
        add_analysis(str(tmp_path), "", a, 0)
    with pytest.raises(ValueError, match="step"):
        add_analysis(str(tmp_path), "x", a, -1)
    with pytest.raises(ValueError, match="model="):
        add_analysis(str(tmp_path), "x", a, 0, reference_images=np.zeros((2, 3, 8, 8), np.float32))
    assert glob.glob(str(tmp_path / "events.*")) == []


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from torch.utils.tensorboard import SummaryWriter
    from summary_writers import add_analysis, sink
    from test_run_reader import make_analysis

    original = sink.EventSink.write
    def write(self, record, step):
        original(self, record, step)
        if step == 2 and record.tag.endswith("/arrays"):
            self.flush()
            print("MIDDLE", flush=True)
            time.sleep(600)
    sink.EventSink.write = write
    writer = SummaryWriter({logdir!r})
    for step in (0, 1, 2):
        add_analysis(writer, "x", make_analysis(seed=step), step)
""")


def test_writer_killed_mid_analysis_leaves_earlier_ones_readable(tmp_path):
    script = KILLED_WRITER.format(tests=os.path.dirname(__file__), logdir=str(tmp_path / "run"))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == "MIDDLE", "the writer did not reach the middle of the third analysis"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    dp = provider_for(tmp_path)
    index = run_reader.index_runs(dp, CTX, EID)
    assert index.analyses == {"run": [AnalysisKey("x", "constrained", (0, 1))]}
    for step in (0, 1):
        assert_same_analysis(make_analysis(seed=step), run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", step))
    with pytest.raises(run_reader.AnalysisNotFoundError):
        run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 2)


def test_corrupt_and_truncated_event_files_are_skipped(tmp_path):
    good = {step: make_analysis(seed=step) for step in (0, 1, 2)}
    for step, a in good.items():
        add_analysis(str(tmp_path / "good"), "x", a, step)
    # a garbage event file beside the good one, in the same run
    with open(str(tmp_path / "good" / "events.out.tfevents.9999999999.garbage"), "wb") as f:
        f.write(b"\x00" * 16 + os.urandom(4000))
    # a run whose second event file is cut in the middle of a record
    for step, file_name in ((0, "events.out.tfevents.0000000001.a"), (1, "events.out.tfevents.0000000002.b")):
        with SummaryWriter(str(tmp_path / "parts" / str(step))) as writer:
            add_analysis(writer, "x", good[step], step)
        (path,) = glob.glob(str(tmp_path / "parts" / str(step) / "events.*"))
        data = open(path, "rb").read()
        os.makedirs(tmp_path / "cut", exist_ok=True)
        with open(tmp_path / "cut" / file_name, "wb") as f:
            f.write(data if step == 0 else data[: len(data) // 2])
    shutil.rmtree(tmp_path / "parts")

    dp = provider_for(tmp_path)
    index = run_reader.index_runs(dp, CTX, EID)
    assert index.analyses["good"] == [AnalysisKey("x", "constrained", (0, 1, 2))]
    assert index.analyses["cut"] == [AnalysisKey("x", "constrained", (0,))]
    for step, a in good.items():
        assert_same_analysis(a, run_reader.load_analysis(dp, CTX, EID, "good", "x", "constrained", step))
    assert_same_analysis(good[0], run_reader.load_analysis(dp, CTX, EID, "cut", "x", "constrained", 0))


def test_logdir_path_writes_one_event_file_per_process(tmp_path):
    """TensorBoard reads event files in name order; one file per path avoids '...10' < '...9'."""
    for step in range(12):
        add_analysis(str(tmp_path / "run"), "x", make_analysis(seed=step, map_size=(2, 2, 2)), step)
    assert len(glob.glob(str(tmp_path / "run" / "events.*"))) == 1
    assert run_reader.list_analyses(provider_for(tmp_path), CTX, EID) == {"run": [AnalysisKey("x", "constrained", tuple(range(12)))]}


def test_newer_plugin_data_is_a_warning_not_a_crash(tmp_path):
    from summary_writers import sink as sink_module
    from summary_writers.payloads import _string_tensor

    add_analysis(str(tmp_path / "run"), "x", make_analysis(), 0)
    future = metadata.create_summary_metadata(metadata.KIND_MANIFEST, "y", "constrained", 0)
    future.plugin_data.content = metadata.AEVisPluginData(version=metadata.PLUGIN_DATA_VERSION + 1, kind=1).SerializeToString()
    with sink_module.EventSink(str(tmp_path / "run")) as sink:
        sink.write(sink_module.SummaryRecord("aevis/y/constrained/0/manifest", future, _string_tensor([b"{}"], scalar=True)), 0)
    index = run_reader.index_runs(provider_for(tmp_path), CTX, EID)
    assert index.analyses == {"run": [AnalysisKey("x", "constrained", (0,))]}
    (warning,) = index.warnings
    assert "version 2 is not supported" in warning and "upgrade" in warning


def test_unknown_analysis_and_cache(tmp_path):
    add_analysis(str(tmp_path / "run"), "x", make_analysis(), 4)
    dp = provider_for(tmp_path)
    for run, name, method, step in [("nope", "x", "constrained", 4), ("run", "y", "constrained", 4),
                                    ("run", "x", "dgr", 4), ("run", "x", "constrained", 5)]:
        with pytest.raises(run_reader.AnalysisNotFoundError, match="no analysis"):
            run_reader.load_analysis(dp, CTX, EID, run, name, method, step)
    first = run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 4)
    assert run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 4) is first


def test_real_extraction_with_model_graph_learned_features_and_artifact(tmp_path):
    pytest.importorskip("tensorboard_plugin_aevis.extraction")
    from tensorboard_plugin_aevis.extraction import extract_datapaths
    from tensorboard_plugin_aevis.model_artifact import load_model_artifact
    from tensorboard_plugin_aevis.models import ClassifierWrapper

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )
    model = ClassifierWrapper(net, (0.5,) * 3, (0.5,) * 3, class_names=list("abcd")).eval()
    images = torch.rand(3, 3, 16, 16)
    analysis = extract_datapaths(model, images, ["adversarial", "source", "target"], steps=5)
    references = torch.rand(4, 3, 16, 16)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        add_analysis(writer, "real", analysis, 7, model=model, reference_images=references)
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "real", analysis.method, 7, logdir=str(tmp_path))
    assert loaded.analysis.to_json() == analysis.to_json()
    for x, y in zip(analysis.gates, loaded.analysis.gates):
        np.testing.assert_array_equal(x, y)
    assert {n["gated_layer"] for n in loaded.graph["nodes"]} >= set(range(len(analysis.layers)))
    from tensorboard_plugin_aevis.learned_features import learned_features

    channels = [np.flatnonzero(b.any(axis=0)).tolist() for b in analysis.binary()]
    expected = learned_features(model, [l.name for l in analysis.layers], channels, references, 3)
    assert loaded.learned_features.keys() == expected.keys()
    for layer, hits in expected.items():
        assert loaded.learned_features[layer].keys() == hits.keys()
        for channel, top in hits.items():
            got = loaded.learned_features[layer][channel]
            assert [(i, box) for i, _, box in got] == [(i, tuple(box)) for i, _, box in top]
            np.testing.assert_allclose([a for _, a, _ in got], [a for _, a, _ in top], rtol=1e-6)
    assert len(loaded.reference_image_pngs) == 4
    np.testing.assert_allclose(loaded.reference_image(2), references[2].numpy(), atol=1 / 510 + 1e-6)
    restored = load_model_artifact(loaded.model_artifact)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(restored(x), model(x))
    assert loaded.warnings == []


def test_round_trip_through_the_rust_data_server(tmp_path):
    """TensorBoard's default data server (``--load_fast=true``) sees the same analyses."""
    import time

    from tensorboard.data import server_ingester
    from tensorboard.util import grpc_util

    written = {}
    with SummaryWriter(str(tmp_path / "train")) as writer:
        for step in range(12):  # more steps than the server's default blob sampling (10)
            written[step] = make_analysis(seed=step, map_size=(6, 56, 3) if step == 11 else (2, 2, 2))
            add_analysis(writer, "cat->dog", written[step], step)
    ingester = server_ingester.SubprocessServerDataIngester(
        server_ingester.get_server_binary(), str(tmp_path), reload_interval=0,
        channel_creds_type=grpc_util.ChannelCredsType.LOCAL)
    ingester.start()
    try:
        dp = ingester.data_provider
        deadline = time.monotonic() + 60
        index = None
        while time.monotonic() < deadline:
            index = run_reader.index_runs(dp, CTX, EID)
            if index.analyses.get("train") and len(index.analyses["train"][0].steps) == 12:
                break
            time.sleep(0.5)
        assert index.analyses == {"train": [AnalysisKey("cat->dog", "constrained", tuple(range(12)))]}
        assert index.warnings == []
        for step in (0, 11):
            assert_same_analysis(written[step], run_reader.load_analysis(dp, CTX, EID, "train", "cat->dog", "constrained", step))
    finally:
        ingester._stdin_handle.close()  # the Rust data server exits when its stdin closes


# ------------------------------------------------- learned features: per-layer arrays
def _boxes(analysis, seed=0):
    """Learned features of every channel of every layer (2 hits; channel 1 of the last layer: 1)."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for layer in analysis.layers:
        boxes[layer.name] = {
            c: [(int(rng.integers(0, 4)), float(np.float32(rng.normal())), tuple(int(v) for v in rng.integers(0, 12, 4)))
                for _ in range(1 if (layer.name == "block/2" and c == 1) else 2)]
            for c in range(layer.channels)
        }
    return boxes


def _rewrite_blob(path, kind, change):
    """Rewrite an event file, replacing blob 0 of every ``.../<kind>`` tag by ``change(blob)``."""
    events = [event_pb2.Event.FromString(record) for record in RawEventFileLoader(path).Load()]
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for event in events:
            for value in event.summary.value:
                if value.tag.endswith("/" + kind):
                    value.tensor.string_val[0] = change(value.tensor.string_val[0])
            writer.write(event.SerializeToString())


def _damage_member(npz: bytes, key: str) -> bytes:
    """The npz with the compressed bytes of array ``key`` garbled (its zip directory intact)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        info = archive.getinfo(key + ".npy")
    data = bytearray(npz)
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    for k in range(start, start + info.compress_size):
        data[k] ^= 0x5A
    return bytes(data)


def test_learned_features_round_trip_as_per_layer_arrays_and_legacy_json(tmp_path):
    """The npz format and the JSON blob of runs logged before it read back the same."""
    import json

    from summary_writers import add_learned_features, payloads
    from summary_writers.sink import EventSink, SummaryRecord

    analysis = make_analysis(seed=3)
    boxes = _boxes(analysis)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in (0, 1, 2):
            add_analysis(writer, "x", analysis, step)
        add_learned_features(writer, "x", "constrained", 0, boxes)
        for step, blob in ((1, json.dumps(payloads.to_jsonable(boxes))), (2, '{"features.0": {"0": [[1, 2.0]]}}')):
            legacy = SummaryRecord(  # the format before the per-layer npz: one JSON blob
                payloads.analysis_tag("x", "constrained", step, metadata.KIND_LEARNED_FEATURES),
                metadata.create_summary_metadata(metadata.KIND_LEARNED_FEATURES, "x", "constrained", step),
                payloads._string_tensor([blob.encode("utf-8")]))
            with EventSink(writer) as sink:
                sink.write(legacy, step)
    dp = provider_for(tmp_path)
    damaged = run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", 2)  # a hit without its box
    assert damaged.feature_hits("features.0", 0) == [] and damaged.learned_features is None
    assert len(damaged.warnings) == 1 and "learned features" in damaged.warnings[0] and "re-log" in damaged.warnings[0]
    for step in (0, 1):
        loaded = run_reader.load_analysis(dp, CTX, EID, "run", "x", "constrained", step)
        assert loaded.learned_feature_store.is_legacy_json == (step == 1)
        assert loaded.learned_features == boxes
        for layer, per_channel in boxes.items():
            for channel, hits in per_channel.items():
                assert loaded.feature_hits(layer, channel) == hits
        assert loaded.feature_hits("features.0", 99) == [] and loaded.feature_hits("no such layer", 0) == []
        assert loaded.warnings == []


@pytest.mark.parametrize("hits, message", [
    ([(0, float("nan"), (0, 0, 1, 1))], "NaN"),
    ([(0, 1.0, (0, 0, 1))], "not \\(image index"),
    ([(-1, 1.0, (0, 0, 1, 1))], "negative"),
])
def test_malformed_learned_features_are_refused_with_the_culprit(tmp_path, hits, message):
    from summary_writers import add_learned_features

    with pytest.raises(ValueError, match=message):
        add_learned_features(str(tmp_path), "x", "constrained", 0, {"layer.1": {3: hits}})
    assert not glob.glob(str(tmp_path / "events.*"))  # refused before anything was written


def test_a_damaged_layer_leaves_the_other_layers_readable(tmp_path):
    """Each layer's maps and learned features are decompressed on their own, on first use:
    a garbled layer fails alone, with a message naming the fix."""
    from summary_writers import add_learned_features

    analysis = make_analysis(seed=4, map_size=(2, 2, 2))
    analysis.gates = [np.full_like(g, 0.9) for g in analysis.gates]  # every map logged
    boxes = _boxes(analysis)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        add_analysis(writer, "x", analysis, 0)
        add_learned_features(writer, "x", "constrained", 0, boxes)
    (path,) = glob.glob(str(tmp_path / "run" / "events.*"))
    _rewrite_blob(path, "learned_features", lambda blob: _damage_member(blob, "images/1"))
    _rewrite_blob(path, "arrays", lambda blob: _damage_member(blob, "maps/1/uint8"))
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "x", "constrained", 0)
    assert loaded.analysis.to_json() == analysis.to_json()
    assert loaded.feature_hits("features.0", 2) == boxes["features.0"][2]
    assert loaded.feature_hits("block/2", 5) == boxes["block/2"][5]
    assert loaded.warnings == []
    assert loaded.feature_hits("features.3", 0) == []
    assert any("learned features" in w and "re-log" in w for w in loaded.warnings)
    assert loaded.activation_maps.map(0, 1, 2) is not None and loaded.activation_maps.map(2, 0, 0) is not None
    assert loaded.activation_maps.has_map(1, 0, 0)  # the channel list of layer 1 is intact
    with pytest.raises(run_reader.AnalysisReadError, match="activation maps .* damaged.*re-log"):
        loaded.activation_maps.map(1, 0, 0)

    # through the plugin: the damaged layer answers 404 naming the fix, the others are served
    import json
    import urllib.parse

    from werkzeug.test import Client

    from run_fixtures import tensorboard_app

    app, close = tensorboard_app(str(tmp_path))
    client = Client(app)

    def get(route, **params):
        query = {"run": "run", "analysis": "x", "method": "constrained", "step": 0, **params}
        return client.get(f"/data/plugin/aevis/{route}?{urllib.parse.urlencode(query)}")

    try:
        assert get("activation_map", layer="features.0", channel=1, example=2).status_code == 200
        damaged = get("activation_map", layer="features.3", channel=0, example=0)
        assert damaged.status_code == 404 and "re-log" in json.loads(damaged.get_data())["error"]
        assert get("learned_feature", layer="features.0", channel=2, rank=0).status_code == 404  # no reference images logged
        neuron = json.loads(get("neuron", layer="block/2", channel=5).get_data())
        assert [(f["reference_image"], f["box"]) for f in neuron["learned_features"]] == \
            [(i, list(box)) for i, _, box in boxes["block/2"][5]]
        neuron = json.loads(get("neuron", layer="features.3", channel=0).get_data())
        assert neuron["learned_features"] == [] and all(e["activation_map"] for e in neuron["examples"])
    finally:
        close()


# ----------------------------------------------------------------------- the server's store (issue #18)
class CountingProvider:
    """A real DataProvider, counting the calls made to it (one per data-server round trip)."""

    def __init__(self, inner):
        self._inner, self.calls = inner, {}

    def __getattr__(self, name):
        method = getattr(self._inner, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def test_store_lists_once_per_ttl_and_reads_each_analysis_once(tmp_path, monkeypatch):
    import concurrent.futures

    add_analysis(str(tmp_path / "run"), "x", make_analysis(seed=0), 0)
    add_analysis(str(tmp_path / "run"), "x", make_analysis(seed=1), 1)
    dp = CountingProvider(provider_for(tmp_path))
    now = [1000.0]
    monkeypatch.setattr(run_reader.time, "monotonic", lambda: now[0])
    store = run_reader.AnalysisStore(dp, index_ttl_s=5.0)
    assert store.index(CTX, EID).analyses == {"run": [AnalysisKey("x", "constrained", (0, 1))]}
    listed = dp.calls.copy()
    assert listed == {"list_tensors": 1, "list_blob_sequences": 1, "read_tensors": 1}  # every manifest in one read
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # simultaneous requests share one read
        loaded = list(pool.map(lambda _: store.load(CTX, EID, "run", "x", "constrained", 1), range(8)))
    assert all(l is loaded[0] for l in loaded)
    assert_same_analysis(make_analysis(seed=1), loaded[0])
    assert dp.calls["read_blob_sequences"] == 1 and dp.calls["list_tensors"] == 1  # no listing within the TTL
    blob_reads = dp.calls["read_blob"]
    store.index(CTX, EID)
    store.load(CTX, EID, "run", "x", "constrained", 1)
    assert dp.calls["read_blob"] == blob_reads and dp.calls["list_tensors"] == 1
    now[0] += 6.0  # past the TTL: listed again; unchanged manifests are not read again
    store.index(CTX, EID)
    assert dp.calls["list_tensors"] == 2 and dp.calls["read_tensors"] == 1
    now[0] += 2.0
    with pytest.raises(run_reader.AnalysisNotFoundError):
        store.load(CTX, EID, "run", "x", "constrained", 7)  # unknown: one more listing (logged just now?), then 404
    assert dp.calls["list_tensors"] == 3
    with pytest.raises(run_reader.AnalysisNotFoundError):
        store.load(CTX, EID, "run", "x", "constrained", 7)  # within MIN_RELIST_S: no listing again
    assert dp.calls["list_tensors"] == 3


def test_store_keeps_at_most_max_bytes(tmp_path):
    for step in range(3):
        add_analysis(str(tmp_path / "run"), "x", make_analysis(seed=step), step)
    dp = CountingProvider(provider_for(tmp_path))
    one = run_reader.AnalysisStore(dp).load(CTX, EID, "run", "x", "constrained", 0).nbytes
    assert one > 0
    store = run_reader.AnalysisStore(dp, max_bytes=int(2.5 * one))
    for step in range(3):
        store.load(CTX, EID, "run", "x", "constrained", step)
    assert store.cached_bytes <= int(2.5 * one)
    reads = dp.calls["read_blob_sequences"]
    store.load(CTX, EID, "run", "x", "constrained", 0)  # evicted (least recently used): read again
    assert dp.calls["read_blob_sequences"] == reads + 1
    store.load(CTX, EID, "run", "x", "constrained", 0)
    assert dp.calls["read_blob_sequences"] == reads + 1


def test_store_reads_ahead_the_latest_step_of_each_analysis_within_its_budget(tmp_path):
    run = str(tmp_path / "run")
    add_analysis(run, "x", make_analysis(seed=0), 0)
    add_analysis(run, "x", make_analysis(seed=1), 1)
    add_analysis(run, "y", make_analysis(seed=2), 0)
    dp = CountingProvider(provider_for(tmp_path))
    store = run_reader.AnalysisStore(dp)
    assert store.read_ahead(CTX, EID, budget_bytes=1) == 1  # stops once what it read fills the budget
    assert store.read_ahead(CTX, EID, budget_bytes=2**40) == 2  # x (held already) and y
    assert dp.calls["read_blob_sequences"] == 2
    assert_same_analysis(make_analysis(seed=1), store.load(CTX, EID, "run", "x", "constrained", 1))
    assert_same_analysis(make_analysis(seed=2), store.load(CTX, EID, "run", "y", "constrained", 0))
    assert dp.calls["read_blob_sequences"] == 2  # both answered from what was read ahead
    store.load(CTX, EID, "run", "x", "constrained", 0)  # an earlier step is not read ahead
    assert dp.calls["read_blob_sequences"] == 3


def test_index_lists_the_steps_with_a_model(tmp_path):
    add_analysis(str(tmp_path / "run"), "x", make_analysis(), 0)  # no model
    assert run_reader.index_runs(provider_for(tmp_path), CTX, EID).analyses["run"][0].steps_with_model == ()
