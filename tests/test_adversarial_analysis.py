"""The one call (``analyze_adversarial``), the README's training-script example run verbatim,
and the notebook reader (``load_analyses``) as a round trip through real event files."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import tensorboard_plugin_aevis as aevis
from tensorboard_plugin_aevis.extraction import ExtractionOptions
from run_fixtures import IMAGE_SIZE, TinyCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_training_snippet() -> str:
    """The first python block of the README's 'Use it from your training script' section."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Use it from your training script"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def cat_and_espresso(model):
    """A source image, a class it is not, and 3 random images the model puts in that class."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(200, 3, 1, 1, generator=generator)  # plain noise falls in one class of the random net
    pool = (colours + 0.3 * torch.rand(200, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)).clamp(0, 1)
    with torch.no_grad():
        predicted = model(pool).argmax(1)
    cat = pool[0]
    classes, counts = torch.unique(predicted[1:], return_counts=True)
    order = [int(c) for c in classes[torch.argsort(counts, descending=True)] if int(c) != int(predicted[0])]
    espresso = order[0]
    photos = pool[1:][predicted[1:] == espresso][:3]
    assert len(photos) == 3
    return cat, espresso, photos


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Runs the README snippet exactly as written, in a fresh folder, on a small CNN."""
    folder = tmp_path_factory.mktemp("readme")
    model = TinyCNN(0).eval()
    cat, espresso, photos = cat_and_espresso(model)
    namespace = {"model": model, "cat": cat, "espresso": espresso, "espresso_photos": photos, "global_step": 7}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(readme_training_snippet(), "README.md", "exec"), namespace)
        namespace["writer"].close()
    finally:
        os.chdir(cwd)
    return folder, namespace


def test_readme_example_is_at_most_ten_code_lines():
    lines = [line for line in readme_training_snippet().splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 10, lines


def test_readme_example_logs_both_methods_with_the_representative_target(readme_run):
    folder, namespace = readme_run
    result = namespace["result"]
    assert set(result.analyses) == {"constrained", "dgr"}
    for method, analysis in result.analyses.items():
        assert [e.role for e in analysis.examples] == ["adversarial", "source", "target", "target", "target"]
        # the representative target is the paper's (Sec. 6.2.1), recomputed independently: smallest Eq. 5 distance
        flat = analysis.flat_gates().astype(np.float64)
        distances = [np.linalg.norm(flat[0] - flat[i]) for i in (2, 3, 4)]
        assert result.representative[method] == 2 + int(np.argmin(distances))
        provenance = analysis.params["provenance"]
        assert provenance == result.provenance[method]
        assert provenance["adversarial"].startswith(f"MI-FGSM, targeted at 'class{namespace['espresso']}', eps 16/255, 10 steps")
        chosen = analysis.examples[result.representative[method]].name
        assert provenance["target"].endswith(f"of 3 normal 'class{namespace['espresso']}' images: {chosen!r}")

    loaded = aevis.load_analyses(str(folder / "runs"))
    assert {(a.run, a.method, a.step) for a in loaded} == {("my_experiment", "constrained", 7), ("my_experiment", "dgr", 7)}
    for entry in loaded:
        assert entry.analysis.params["provenance"] == result.provenance[entry.method]
        assert entry.manifest["diverging_merging"]["target"] == result.representative[entry.method]


def test_round_trip_through_the_notebook_reader(tmp_path):
    """add_analysis -> event files -> load_analyses gives back the same arrays."""
    model = TinyCNN(1).eval()
    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    written = {}
    for step in (0, 5):
        for method in ("constrained", "dgr"):
            analysis = aevis.extract_datapaths(model, images, ["adversarial", "source", "target"], method=method, steps=6)
            aevis.add_analysis(str(tmp_path / "run"), "a->b", analysis, step, model=model, save_model=False)
            written[(method, step)] = analysis
    loaded = aevis.load_analyses(str(tmp_path))
    assert [(a.run, a.name, a.method, a.step) for a in loaded] == [
        ("run", "a->b", m, s) for m in ("constrained", "dgr") for s in (0, 5)]
    for entry in loaded:
        original = written[(entry.method, entry.step)]
        for got, want in zip(entry.analysis.gates, original.gates):
            np.testing.assert_array_equal(got, want)  # gates are stored as float32, exactly
        np.testing.assert_allclose(entry.analysis.images, original.images, atol=1 / 510 + 1e-7)  # 8-bit PNG
        assert [e.label for e in entry.analysis.examples] == [e.label for e in original.examples]
        assert entry.analysis.layers == original.layers
        # one datapath map compared with the model's own feature map (uint8-quantised: within a step of its range)
        layer, example = len(original.layers) - 1, 0
        channel = int(entry.activation_maps.channels(layer)[0])
        got = entry.activation_maps.map(layer, channel, example)
        want = original.activation_maps[layer][example, channel]
        if got.shape == want.shape:
            lo, hi = float(want.min()), float(want.max())
            assert np.abs(got - want).max() <= (hi - lo) / 255 + 1e-5 or hi == lo
    assert len(aevis.load_analyses(str(tmp_path), method="dgr", step=5)) == 1
    assert aevis.load_analyses(str(tmp_path / "run"))[0].run == "."  # a run folder works too
    with pytest.raises(FileNotFoundError, match="tensorboard --logdir"):
        aevis.load_analyses(str(tmp_path / "missing"))


def test_given_adversarial_image_and_plain_module_need_normalisation(tmp_path):
    model = TinyCNN(2).eval()
    cat, espresso, photos = cat_and_espresso(model)
    with pytest.raises(ValueError, match="mean=.*std="):
        aevis.analyze_adversarial(None, model, cat, espresso, photos)
    adversarial = (cat + 0.03 * torch.randn(cat.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = aevis.analyze_adversarial(None, model, cat, targets=photos[:1], adversarial=adversarial,
                                           mean=(0, 0, 0), std=(1, 1, 1), methods=["constrained"], extraction_steps=5)
    assert [str(w.message) for w in caught] == result.warnings  # each problem once, also in the result
    provenance = result.provenance["constrained"]
    assert provenance["adversarial"].startswith("given by the caller; L-inf")
    assert provenance["target"] == f"the only normal 'class{result.adversarial_label}' image given: 'target'"
    torch.testing.assert_close(result.adversarial, adversarial.unsqueeze(0))
    with pytest.raises(ValueError, match="leave it None"):
        aevis.analyze_adversarial(None, model, cat, espresso, photos, adversarial=adversarial, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match=r"extraction_options names \['dgr'\], which are not among methods"):
        aevis.analyze_adversarial(None, model, cat, adversarial=adversarial, mean=(0,) * 3, std=(1,) * 3, methods=["constrained"],
                                  extraction_options={"dgr": ExtractionOptions(warmup=5)})


def test_importing_the_package_root_does_not_import_torch():
    code = ("import sys, tensorboard_plugin_aevis as a; assert 'torch' not in sys.modules, 'torch'; "
            "a.analyze_adversarial; a.load_analyses; assert 'torch' in sys.modules; "
            "[getattr(a, n) for n in a.__all__]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
