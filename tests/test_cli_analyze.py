"""``aevis analyze`` end to end on a user's module:factory model, and once on EfficientNet-Lite0."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

from tensorboard_plugin_aevis import run_reader
from tensorboard_plugin_aevis.cli import main
from tensorboard_plugin_aevis.sample_images import load_image_file, load_photo

USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 8 * 8, 4),
        )
""")
MODULE = "aevis_cli_test_cnn"
SIZE = 32


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{MODULE}:make", tmp_path
    sys.modules.pop(MODULE, None)


def predict(path_or_tensor) -> int:
    """The user model's prediction, computed here without the CLI's code path (no wrapper, no loader)."""
    net = importlib.import_module(MODULE).make().eval()
    x = load_image_file(path_or_tensor, SIZE) if isinstance(path_or_tensor, str) else path_or_tensor
    with torch.no_grad():
        return int(net(x.unsqueeze(0)).argmax(1))


def run_json(capsys, argv):
    code = main(["analyze", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_targeted_attack_report_matches_the_model(user_model, capsys):
    spec, tmp_path = user_model
    adv_png = str(tmp_path / "adv.png")
    source_label = predict(load_photo("chelsea", SIZE))
    target = (source_label + 1) % 4
    report = run_json(capsys, ["--model", spec, "--photo", "chelsea", "--size", str(SIZE), "--eps", "32",
                               "--target-class", str(target), "--save-adversarial", adv_png, "--steps", "15"])
    assert report["source"]["label"] == source_label
    assert report["adversarial"]["label"] == target and report["adversarial"]["succeeded"] is True
    saved = load_image_file(adv_png, SIZE)
    assert (saved - load_photo("chelsea", SIZE)).abs().max() <= 32 / 255 + 1 / 255
    assert predict(adv_png) == target  # the 8-bit file still fools the model
    (analysis,) = report["analyses"]
    assert analysis["method"] == "constrained"
    assert [e["role"] for e in analysis["examples"]] == ["adversarial", "source"]
    assert [e["label"] for e in analysis["examples"]] == [target, source_label]
    assert all(0 <= e["kept_fraction"] <= 1 for e in analysis["examples"])
    assert analysis["representative_target"] is None
    assert any("no target images" in w for w in report["warnings"])


def test_given_adversarial_with_targets_picks_the_closest_target(user_model, capsys):
    spec, tmp_path = user_model
    photo = (load_photo("coffee", SIZE).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "adv.png")
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    adv_path = str(tmp_path / "adv.png")
    logdir = tmp_path / "run"
    # target 2 is the adversarial image itself
    report = run_json(capsys, ["--model", spec, "--photo", "chelsea", "--size", str(SIZE), "--adversarial", adv_path,
                               "--targets", str(tmp_path / "noise.png"), adv_path, "--method", "both", "--r", "1",
                               "--logdir", str(logdir), "--no-save-model"])
    assert report["adversarial"]["label"] == predict(adv_path)
    assert report["adversarial"]["provenance"].startswith("given by the caller")
    assert [a["method"] for a in report["analyses"]] == ["constrained", "dgr"]
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    for analysis in report["analyses"]:
        names = [e["name"] for e in analysis["examples"]]
        assert names == ["chelsea (adversarial)", "chelsea", "noise", "adv"]
        assert [e["label"] for e in analysis["examples"]] == [predict(adv_path), predict(load_photo("chelsea", SIZE)),
                                                              predict(str(tmp_path / "noise.png")), predict(adv_path)]
        # the representative is the target with the smallest Eq. 5 distance, recomputed here from the logged gates
        loaded = run_reader.load_analysis(provider, context.RequestContext(), "", ".", report["name"], analysis["method"], 0)
        gates = loaded.analysis.flat_gates().astype(np.float64)
        distances = [np.linalg.norm(gates[0] - gates[i]) for i in (2, 3)]
        assert analysis["representative_target"] == 2 + int(np.argmin(distances))
        if analysis["method"] == "dgr":  # independent fits: the identical image gets the identical datapath
            assert distances[1] <= distances[0]
        assert len(analysis["diff_curve"]) == len(analysis["layers"])
        for kind in ("diverging_layer", "merging_layer"):
            ref = analysis[kind]
            assert ref is None or analysis["layers"][ref["index"]] == ref["name"]


def test_logdir_logs_what_the_report_says(user_model, capsys):
    spec, tmp_path = user_model
    logdir = tmp_path / "run"
    report = run_json(capsys, ["--model", spec, "--photo", "chelsea", "--size", str(SIZE), "--steps", "5", "--r", "1",
                               "--target-photos", "coffee", "rocket", "--logdir", str(logdir), "--no-save-model",
                               "--name", "cat"])
    assert report["logdir"] == str(logdir)
    assert not (logdir / "plugins" / "aevis" / "models").exists()  # --no-save-model
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    loaded = run_reader.load_analysis(provider, context.RequestContext(), "", ".", "cat", "constrained", 0)
    (summary,) = report["analyses"]
    assert [e.label for e in loaded.analysis.examples] == [e["label"] for e in summary["examples"]]
    assert [e.adversarial_score for e in loaded.analysis.examples] == [e["adversarial_score"] for e in summary["examples"]]
    np.testing.assert_allclose(loaded.analysis.kept_fraction(), [e["kept_fraction"] for e in summary["examples"]], atol=1e-4)
    found = loaded.diverging_merging
    assert found["target"] == summary["representative_target"] and found["r"] == 1
    np.testing.assert_allclose(found["diff"], summary["diff_curve"], atol=1e-4)
    for kind in ("diverging_layer", "merging_layer"):
        assert found[kind] == (summary[kind]["index"] if summary[kind] else None)
    assert loaded.graph is not None and loaded.learned_features is not None


def test_text_output_through_the_console_script(user_model):
    spec, tmp_path = user_model
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    aevis = os.path.join(os.path.dirname(sys.executable), "aevis")
    result = subprocess.run([aevis, "analyze", "--model", spec, "--photo", "chelsea", "--size", str(SIZE),
                             "--attack", "fgsm", "--steps", "5"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "source       chelsea: class" in result.stdout and "[constrained]" in result.stdout
    assert "fgsm, eps 16/255, untargeted" in result.stdout


def test_warmup_and_multiplicative_reach_the_constrained_extraction_only(user_model, capsys):
    """``--warmup 0 --no-multiplicative`` (the former plain Adam, not the default) reaches the constrained
    extraction; unset, the constrained method's defaults (warmup 5, multiplicative) apply; DGR keeps its own."""
    spec, tmp_path = user_model
    photo = (load_photo("coffee", SIZE).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "adv.png")
    logdir = tmp_path / "run"
    argv = ["--model", spec, "--photo", "chelsea", "--size", str(SIZE), "--adversarial", str(tmp_path / "adv.png"),
            "--target-photos", "coffee", "--method", "both", "--steps", "12", "--name", "cat", "--no-save-model"]
    report = run_json(capsys, [*argv, "--warmup", "0", "--no-multiplicative", "--logdir", str(logdir)])
    assert [a["optimiser"] for a in report["analyses"]] == [{"warmup": 0, "multiplicative": False}] * 2
    # the logged gates are the engine's, called directly with those options on the same images
    from tensorboard_plugin_aevis.extraction import extract_datapaths
    from tensorboard_plugin_aevis.models import load_model

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    model = load_model(spec)
    images = torch.stack([load_image_file(str(tmp_path / "adv.png"), SIZE), load_photo("chelsea", SIZE), load_photo("coffee", SIZE)])
    roles = ["adversarial", "source", "target"]
    for method, options in (("constrained", {"warmup": 0, "multiplicative": False}), ("dgr", {})):
        logged = run_reader.load_analysis(provider, context.RequestContext(), "", ".", "cat", method, 0).analysis.flat_gates()
        direct = extract_datapaths(model, images, roles, method=method, steps=12, **options).flat_gates()
        np.testing.assert_allclose(logged, direct, atol=1e-6)
        if options:  # the options change these gates, so the comparison above can fail
            assert np.abs(direct - extract_datapaths(model, images, roles, method=method, steps=12).flat_gates()).max() > 1e-3
    plain = run_json(capsys, argv)
    assert [a["optimiser"] for a in plain["analyses"]] == [{"warmup": 5, "multiplicative": True},
                                                           {"warmup": 0, "multiplicative": False}]


def test_starts_log_the_stability_the_report_summarises(user_model, capsys):
    """``--starts 3`` reaches both methods: the logged analysis holds each map's share of the 3 starts
    (multiples of 1/3), and each example's ``every_start`` is, recomputed here from the logged arrays, the
    share of its binary datapath's maps that all 3 starts selected."""
    spec, tmp_path = user_model
    logdir = tmp_path / "run"
    report = run_json(capsys, ["--model", spec, "--photo", "chelsea", "--size", str(SIZE), "--steps", "8",
                               "--target-photos", "coffee", "--method", "both", "--starts", "3", "--name", "cat",
                               "--no-save-model", "--logdir", str(logdir)])
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    for summary in report["analyses"]:
        logged = run_reader.load_analysis(provider, context.RequestContext(), "", ".", "cat", summary["method"], 0).analysis
        assert logged.params["starts"] == 3
        shares = np.concatenate(logged.stability, axis=1)
        np.testing.assert_allclose(shares * 3, np.round(shares * 3), atol=1e-5)
        binary = np.concatenate(logged.binary(), axis=1)
        for i, e in enumerate(summary["examples"]):
            expected = np.isclose(shares[i][binary[i]], 1.0).mean() if binary[i].any() else 0.0
            assert e["every_start"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("argv, given", [
    ([], {}),
    (["--warmup", "3"], {"constrained": {"warmup": 3}}),
    (["--no-multiplicative"], {"constrained": {"multiplicative": False}}),
    (["--multiplicative", "--warmup", "0"], {"constrained": {"warmup": 0, "multiplicative": True}}),
])
def test_only_the_optimiser_options_given_are_passed(argv, given):
    from tensorboard_plugin_aevis.cli import build_parser, optimiser_options

    args = build_parser().parse_args(["analyze", "--model", "resnet50", "--photo", "chelsea", *argv])
    assert optimiser_options(args, ("constrained", "dgr")) == given


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet5", "--photo", "chelsea"], "unknown model 'resnet5'"),
    (["--model", "{spec}", "--image", "/no/such.png"], "does not exist"),
    (["--model", "{spec}", "--photo", "kitten"], "bundled photos"),
    (["--model", "{spec}", "--photo", "chelsea", "--size", "32", "--target-class", "espresso"], "neither a class index"),
    (["--model", "{spec}", "--photo", "chelsea", "--size", "32", "--target-class", "9"], "out of range"),
    (["--model", "{spec}", "--photo", "chelsea", "--size", "48"], "pass the size it expects with --size"),
    (["--model", "{spec}", "--photo", "chelsea", "--eps", "0"], "--eps"),
    (["--model", "{spec}", "--photo", "chelsea", "--device", "tpu"], "--device"),
    (["--model", "{spec}", "--photo", "chelsea", "--method", "dgr", "--warmup", "5"], "the DGR baseline keeps its own"),
    (["--model", "{spec}", "--photo", "chelsea", "--warmup", "-2"], "--warmup -2"),
    (["--model", "{spec}", "--photo", "chelsea", "--starts", "0"], "--starts 0"),
])
def test_bad_input_exits_2_with_a_clear_message(user_model, capsys, argv, message):
    spec, _ = user_model
    code = main(["analyze", *[a.replace("{spec}", spec) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_efficientnet_lite0_cat_to_espresso(capsys):
    report = run_json(capsys, ["--model", "efficientnet-lite0", "--photo", "chelsea", "--target-class", "espresso",
                               "--target-photos", "coffee", "--steps", "10"])
    assert report["source"]["class_name"] == "Egyptian cat"
    assert report["adversarial"]["class_name"] == "espresso" and report["adversarial"]["succeeded"]
    (analysis,) = report["analyses"]
    assert [e["class_name"] for e in analysis["examples"]] == ["espresso", "Egyptian cat", "espresso"]
    assert analysis["representative_target"] == 2
    assert len(analysis["diff_curve"]) == len(analysis["layers"]) > 5
