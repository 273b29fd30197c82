"""``--device cuda``: extraction, contribution analysis and logging with the model on a GPU.

Skipped without CUDA (CI has none); run on a GPU machine. Each test checks what only a GPU
run can break: tensors made on the wrong device, and a run written from a GPU model that a
CPU-only TensorBoard must still read.
"""

import copy
import glob
import os

import numpy as np
import pytest
import torch

from summary_writers import add_analysis
from tensorboard_plugin_aevis.contribution import feature_map_contributions
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.model_artifact import load_model_artifact
from tensorboard_plugin_aevis.models import exact_float32, load_model, model_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SIZE = 64


def small_resnet():
    torch.manual_seed(0)
    model = load_model("resnet18")
    model.input_size = (SIZE, SIZE)
    return model


def images(n):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_extraction_on_cuda_keeps_labels_and_leaves_the_model_on_the_cpu():
    model = small_resnet()
    analysis = extract_datapaths(model, images(3), ["source", "adversarial", "target"], steps=20, device="cuda",
                                 keep_activation_maps=False)
    assert analysis.params["device"].startswith("cuda")
    assert model_device(model).type == "cpu"
    with torch.no_grad():
        labels = model(images(3)).argmax(dim=1).tolist()
    assert [e.label for e in analysis.examples] == labels
    assert all(e.binary_label == e.label for e in analysis.examples)
    assert all(((g >= 0) & (g <= 1)).all() for g in analysis.gates)


@pytest.mark.parametrize("mode", ["sgd", "quadratic"])
def test_contribution_on_cuda_agrees_with_the_cpu(mode):
    """Both in float32 (the engine turns TF32 off). The quadratic mode solves nearly equal Jacobians, but
    its box QP is degenerate enough that a few maps flip (an H200 against this CPU: mean score difference
    0.029); SGD amplifies rounding (a start-sensitive fit), so only its fit is compared."""
    model = small_resnet().eval()
    x = images(2)
    kwargs = dict(target_layer="model.layer3.1", channel=5, earlier_layer="model.layer3.0", area=(0, 0, 2, 2), mode=mode)
    cpu = feature_map_contributions(model, x, **kwargs)
    gpu = feature_map_contributions(model.cuda(), x.cuda(), **kwargs)
    model.cpu()
    print(mode, np.abs(cpu.scores - gpu.scores).mean(), np.corrcoef(cpu.scores, gpu.scores)[0, 1], cpu.fidelity, gpu.fidelity)
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default, restored after the analysis
    assert gpu.scores.shape == cpu.scores.shape and ((gpu.scores >= 0) & (gpu.scores <= 1)).all()
    if mode == "quadratic":
        assert np.abs(cpu.scores - gpu.scores).mean() < 0.1
    else:
        assert (gpu.fidelity < 2 * cpu.fidelity + 0.05).all()


def test_run_logged_from_a_cuda_model_loads_on_the_cpu(tmp_path):
    model = small_resnet().cuda()
    x = images(3)
    analysis = extract_datapaths(model, x, ["source", "adversarial", "target"], steps=5, keep_activation_maps=False)
    add_analysis(str(tmp_path / "run"), "gpu", analysis, 0, model=model, reference_images=images(4))
    assert model_device(model).type == "cuda"  # the writer exported a CPU copy, not the user's model
    (directory,) = glob.glob(os.path.join(tmp_path, "run", "plugins", "aevis", "models", "*"))
    restored = load_model_artifact(directory)  # on the CPU, as a TensorBoard server without a GPU would
    assert all(p.device.type == "cpu" for p in restored.parameters())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), copy.deepcopy(model).cpu()(x), rtol=1e-5, atol=1e-5)
        with exact_float32():  # PyTorch's default TF32 convolutions differ from float32 by ~1e-3 relative
            torch.testing.assert_close(restored(x), model(x.cuda()).cpu(), rtol=1e-3, atol=1e-3)


def test_adversarial_score_of_a_cuda_model_from_cpu_images():
    from tensorboard_plugin_aevis.adversarial_score import AdversarialScorer

    model = small_resnet().eval()
    references, probes = images(12), torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    cpu = AdversarialScorer(model, references, reference_labels=[0] * 12).score_with_method(probes)
    gpu = AdversarialScorer(model.cuda(), references, reference_labels=[0] * 12).score_with_method(probes)
    model.cpu()
    assert gpu[1] == cpu[1]
    np.testing.assert_allclose(gpu[0], cpu[0], atol=10.0)  # percentiles of 12 references; rounding may move one rank
