"""Writer ops, the plugin-data proto and the pickle-free codec."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from tensorboard.compat.proto import summary_pb2
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from summary_writers import add_analysis, add_arrays, add_manifest, add_model_graph, add_reference_images, codec
from tensorboard_plugin_aevis import metadata, run_reader
from tensorboard_plugin_aevis.analysis import Analysis, ExampleRecord, LayerRecord
from tensorboard_plugin_aevis.model_artifact import load_model_artifact
from tensorboard_plugin_aevis.models import ClassifierWrapper
from test_run_reader import CTX, EID, assert_same_analysis, make_analysis, provider_for


# ------------------------------------------------------------------ metadata
def test_plugin_data_round_trips_and_sets_the_data_class():
    md = metadata.create_summary_metadata(metadata.KIND_ARRAYS, "cat/dog", "dgr", 7, writer_id="w", writer_sequence=3)
    assert md.plugin_data.plugin_name == "aevis" == metadata.PLUGIN_NAME
    assert md.data_class == summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    assert metadata.parse_plugin_metadata(md.plugin_data.content) == {
        "version": 1, "kind": "arrays", "analysis_name": "cat/dog", "method": "dgr", "step": 7,
        "writer_id": "w", "writer_sequence": 3,
    }
    manifest = metadata.create_summary_metadata(metadata.KIND_MANIFEST, "x", "constrained", 0)
    assert manifest.data_class == summary_pb2.DATA_CLASS_TENSOR


def test_plugin_data_errors_name_the_fix():
    newer = metadata.AEVisPluginData(version=metadata.PLUGIN_DATA_VERSION + 1, kind=1).SerializeToString()
    with pytest.raises(metadata.PluginDataError, match="upgrade tensorboard-plugin-aevis"):
        metadata.parse_plugin_metadata(newer)
    with pytest.raises(metadata.PluginDataError, match="corrupt"):
        metadata.parse_plugin_metadata(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="unknown AEVis summary kind"):
        metadata.create_summary_metadata("histogram", "x")
    with pytest.raises(ValueError, match="non-empty"):
        metadata.create_summary_metadata(metadata.KIND_GRAPH, "")


# --------------------------------------------------------------------- codec
def test_npz_round_trip_refuses_objects():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b/c": np.array([1, 2], np.int32)}
    back = codec.decode_npz(codec.encode_npz(arrays))
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype
    with pytest.raises(TypeError, match="dtype object"):
        codec.encode_npz({"x": np.array([{"a": 1}], dtype=object)})
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        codec.decode_npz(buffer.getvalue())
    with pytest.raises(ValueError, match="pickle"):
        codec.NpzArchive(buffer.getvalue())["x"]


def test_npz_archive_reads_arrays_on_demand_and_names_bad_input():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b/c": np.array([1, 2], np.int32)}
    archive = codec.NpzArchive(codec.encode_npz(arrays))
    assert archive.files == ["a", "b/c"] and "b/c" in archive and "d" not in archive
    np.testing.assert_array_equal(archive["b/c"], arrays["b/c"])
    assert archive["a"] is archive["a"]  # decoded once, then kept
    with pytest.raises(ValueError, match="no array 'd'"):
        archive["d"]
    for garbage in (b"", b"{}", b"PK\x03\x04 not a zip"):
        with pytest.raises(ValueError, match="not a valid .npz"):
            codec.NpzArchive(garbage)
    single = io.BytesIO()
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy"):
        codec.NpzArchive(single.getvalue())


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_within_half_a_grey_level(channels):
    image = np.random.default_rng(0).random((channels, 9, 7), dtype=np.float32)
    back = codec.decode_png(codec.encode_png(image))
    assert back.shape == image.shape
    np.testing.assert_allclose(back, image, atol=1 / 510 + 1e-7)


def test_quantised_maps_match_block_average_within_one_step():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 3, 40, 20)).astype(np.float32) * 5
    maps[1, 2] = 1.5  # a constant map
    quantised, lo, hi = codec.quantise_maps(maps, max_size=10)
    assert quantised.shape == (2, 3, 10, 10) and quantised.dtype == np.uint8
    pooled = maps.reshape(2, 3, 10, 4, 10, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(lo, pooled.min(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(hi, pooled.max(axis=(2, 3)), rtol=1e-5)
    for e in range(2):
        for c in range(3):
            back = codec.dequantise_map(quantised[e, c], lo[e, c], hi[e, c])
            np.testing.assert_allclose(back, pooled[e, c], atol=(hi[e, c] - lo[e, c]) / 510 + 1e-5)


# ---------------------------------------------------------------- writer ops
def _series(dp):
    tensors = dp.list_tensors(CTX, experiment_id=EID, plugin_name="aevis")
    blobs = dp.list_blob_sequences(CTX, experiment_id=EID, plugin_name="aevis")
    return tensors, blobs


def test_tags_and_data_classes(tmp_path):
    add_analysis(str(tmp_path / "run"), "n", make_analysis(), 3)
    tensors, blobs = _series(provider_for(tmp_path))
    assert set(tensors["run"]) == {"aevis/n/constrained/3/manifest"}
    assert set(blobs["run"]) == {"aevis/n/constrained/3/arrays"}
    assert blobs["run"]["aevis/n/constrained/3/arrays"].max_length == 1 + 4  # npz + one PNG per example


def test_finer_ops_log_parts_that_the_reader_assembles(tmp_path):
    a = make_analysis(seed=4)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        add_arrays(writer, "parts", a, 2)
        assert run_reader.list_analyses(provider_for(tmp_path), CTX, EID) == {}  # no manifest yet: not listed
        add_manifest(writer, "parts", a, 2)
    assert_same_analysis(a, run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "parts", "constrained", 2))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(y.mean(dim=(2, 3)))


def small_model_and_analysis(seed=0):
    model = ClassifierWrapper(SmallNet(), (0.5,) * 3, (0.5,) * 3, class_names=["a", "b", "c"]).eval()
    rng = np.random.default_rng(seed)
    layers = [LayerRecord("model.conv1", 4, 12, 12), LayerRecord("model.conv2", 6, 6, 6)]
    examples = [ExampleRecord(f"e{i}", r, 0, "a", 0.5, 0, 0) for i, r in enumerate(("adversarial", "source", "target"))]
    analysis = Analysis("constrained", {}, examples, layers, rng.random((3, 3, 12, 12), dtype=np.float32),
                        [rng.random((3, l.channels), dtype=np.float32) for l in layers], 0.5)
    return model, analysis


def test_maps_and_maxima_come_from_the_model_when_the_analysis_has_none(tmp_path):
    model, analysis = small_model_and_analysis()
    add_analysis(str(tmp_path / "run"), "m", analysis, 0, model=model, save_model=False)
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "m", "constrained", 0, logdir=str(tmp_path))
    # independent computation: the ungated feature maps by hand
    x = (torch.from_numpy(analysis.images) - 0.5) / 0.5
    with torch.no_grad():
        a1 = model.model.conv1(x)
        a2 = model.model.conv2(torch.relu(a1))
    for l, maps in enumerate((a1.numpy(), a2.numpy())):
        np.testing.assert_allclose(loaded.analysis.max_activations[l], maps.max(axis=(2, 3)), rtol=1e-5, atol=1e-6)
        for c in np.flatnonzero((analysis.gates[l] > 0.5).any(axis=0)):
            for e in range(3):
                m = maps[e, c]
                np.testing.assert_allclose(loaded.activation_maps.map(l, int(c), e), m, atol=(m.max() - m.min()) / 510 + 1e-5)
    assert loaded.graph is not None and loaded.model_artifact is None
    assert not os.path.exists(tmp_path / "run" / "plugins" / "aevis" / "models")  # save_model=False


def test_graph_once_per_name_and_one_model_artifact_per_distinct_weights(tmp_path):
    model, analysis = small_model_and_analysis()
    x = torch.from_numpy(analysis.images)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        add_analysis(writer, "m", analysis, 0, model=model)
        add_analysis(writer, "other name, same weights", analysis, 0, model=model)
        before = model(x).detach()
        with torch.no_grad():  # a training step changes the weights
            for p in model.parameters():
                p.mul_(1.5)
        add_analysis(writer, "m", analysis, 10, model=model)
    _, blobs = _series(provider_for(tmp_path))
    assert sorted(t for t in blobs["run"] if t.endswith("/graph")) == ["aevis/m/0/graph", "aevis/other name, same weights/0/graph"]
    dp = provider_for(tmp_path)
    early = run_reader.load_analysis(dp, CTX, EID, "run", "m", "constrained", 0, logdir=str(tmp_path))
    same = run_reader.load_analysis(dp, CTX, EID, "run", "other name, same weights", "constrained", 0, logdir=str(tmp_path))
    late = run_reader.load_analysis(dp, CTX, EID, "run", "m", "constrained", 10, logdir=str(tmp_path))
    assert early.graph == late.graph and early.graph["nodes"]
    assert early.warnings == late.warnings == []
    assert early.model_artifact == same.model_artifact != late.model_artifact
    assert len(os.listdir(tmp_path / "run" / "plugins" / "aevis" / "models")) == 2
    torch.testing.assert_close(load_model_artifact(early.model_artifact)(x), before)  # each step keeps its own weights
    torch.testing.assert_close(load_model_artifact(late.model_artifact)(x), model(x))
    assert not torch.allclose(before, model(x))


def test_standalone_graph_and_reference_image_ops(tmp_path):
    model, analysis = small_model_and_analysis()
    refs = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    add_model_graph(str(tmp_path / "run"), "m", model, torch.from_numpy(analysis.images[:1]), ["model.conv1"], step=0)
    add_reference_images(str(tmp_path / "run"), "m", refs)
    add_analysis(str(tmp_path / "run"), "m", analysis, 5)
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "m", "constrained", 5)
    assert [n for n in loaded.graph["nodes"] if n["gated_layer"] is not None]
    np.testing.assert_allclose(loaded.reference_image(1), refs[1], atol=1 / 510 + 1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_reference_images(str(tmp_path / "run"), "m", refs * 3)


def test_model_of_another_analysis_is_refused_before_writing(tmp_path):
    model, analysis = small_model_and_analysis()
    analysis.layers[1] = LayerRecord("model.conv2", 6, 5, 5)  # wrong map size for this model
    with pytest.raises(ValueError, match="pass the model the analysis was extracted from"):
        add_analysis(str(tmp_path / "run"), "m", analysis, 0, model=model)
    assert run_reader.list_analyses(provider_for(tmp_path), CTX, EID) == {}
    with pytest.raises(TypeError, match="Analysis"):
        add_analysis(str(tmp_path / "run"), "m", {"gates": []}, 0)


class DataDependentNet(SmallNet):
    def forward(self, x):
        logits = super().forward(x)
        return logits if x.mean() > 0.5 else -logits  # torch.export refuses data-dependent branches


def test_unexportable_model_raises_before_anything_is_logged(tmp_path):
    from tensorboard_plugin_aevis.model_artifact import ModelArtifactError

    _, analysis = small_model_and_analysis()
    model = ClassifierWrapper(DataDependentNet(), (0.5,) * 3, (0.5,) * 3).eval()
    with pytest.raises(ModelArtifactError, match="save_model=False"):
        add_analysis(str(tmp_path / "run"), "m", analysis, 0, model=model)
    assert run_reader.list_analyses(provider_for(tmp_path), CTX, EID) == {}
    models = str(tmp_path / "run" / "plugins" / "aevis" / "models")
    assert not os.path.exists(models) or os.listdir(models) == []
    add_analysis(str(tmp_path / "run"), "m", analysis, 0, model=model, save_model=False)  # the opt-out works
    assert run_reader.list_analyses(provider_for(tmp_path), CTX, EID) == {"run": [run_reader.AnalysisKey("m", "constrained", (0,))]}


@pytest.mark.parametrize("policy, kept_steps", [("first-and-latest", [0, 4]), (True, [0, 4]), ("all", [0, 1, 2, 3, 4]),
                                                 ("none", [])])
def test_save_model_policy_bounds_a_training_loops_artifacts(tmp_path, policy, kept_steps):
    """Five training steps with new weights each: the default keeps the first and the latest artifact."""
    model, analysis = small_model_and_analysis()
    x = torch.from_numpy(analysis.images)
    outputs = {}
    with SummaryWriter(str(tmp_path / "run")) as writer:  # the user's writer: events go through its public file_writer
        for step in range(5):
            with torch.no_grad():  # a training step changes the weights
                for p in model.parameters():
                    p.add_(0.1)
            outputs[step] = model(x).detach()
            add_analysis(writer, "m", analysis, step, model=model, save_model=policy)
    dp = provider_for(tmp_path)
    loaded = {s: run_reader.load_analysis(dp, CTX, EID, "run", "m", "constrained", s, logdir=str(tmp_path)) for s in range(5)}
    assert {s for s, l in loaded.items() if l.model_artifact is not None} == set(kept_steps)
    models = tmp_path / "run" / "plugins" / "aevis" / "models"
    assert len(os.listdir(models) if models.exists() else []) == len(kept_steps)
    for s in kept_steps:  # each kept artifact is the model of its own step
        torch.testing.assert_close(load_model_artifact(loaded[s].model_artifact)(x), outputs[s])
    expected_policy = "first-and-latest" if policy is True else policy
    assert all(l.manifest["model_policy"] == expected_policy for l in loaded.values())
    assert all(l.manifest["has_model"] == (policy != "none") for l in loaded.values())  # as written at each step


def test_save_model_policy_names_the_choices(tmp_path):
    model, analysis = small_model_and_analysis()
    with pytest.raises(ValueError, match="first-and-latest"):
        add_analysis(str(tmp_path / "run"), "m", analysis, 0, model=model, save_model="sometimes")
    assert not os.path.exists(tmp_path / "run" / "plugins")


def test_a_closed_summary_writer_still_logs(tmp_path):
    """After ``writer.close()`` (no file_writer left) the analysis goes to the run's own event file."""
    model, analysis = small_model_and_analysis()
    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    add_analysis(writer, "m", analysis, 3, model=model, save_model=False)
    loaded = run_reader.load_analysis(provider_for(tmp_path), CTX, EID, "run", "m", "constrained", 3, logdir=str(tmp_path))
    for got, want in zip(loaded.analysis.gates, analysis.gates):
        np.testing.assert_array_equal(got, want)
    assert loaded.analysis.to_json()["examples"] == analysis.to_json()["examples"]
