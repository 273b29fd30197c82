"""What a server's first contribution request runs: no import of torch's export deserializer, torch._dynamo or sympy
(seconds on this CPU; docs/architecture.md, "Model artifact"), and the SGD mode's Adam equal to torch.optim.Adam."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

from tensorboard_plugin_aevis.contribution.sgd import adam_step


def test_adam_step_is_torchs_adam_bit_for_bit():
    """The SGD mode's written-out Adam (torch.optim imports torch._dynamo) takes torch.optim.Adam's steps exactly,
    with the clamp to [0, 1] between steps as the fit does."""
    torch.manual_seed(0)
    target = torch.rand(3, 40)
    start = torch.rand(3, 40)

    def loss_of(z):
        return ((torch.sin(3 * z) - target) ** 2).sum() + 0.05 * z.sum()

    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theirs], lr=0.05)
    moments = (torch.zeros_like(ours), torch.zeros_like(ours))
    for step in range(1, 61):
        ours.grad = None
        loss_of(ours).backward()
        optimizer.zero_grad()
        loss_of(theirs).backward()
        with torch.no_grad():
            adam_step(ours, ours.grad, moments, step, 0.05)
            ours.clamp_(0.0, 1.0)
        optimizer.step()
        with torch.no_grad():
            theirs.clamp_(0.0, 1.0)
        assert torch.equal(ours, theirs), step
    assert not torch.equal(ours, start)


def test_first_request_imports_none_of_the_slow_modules(tmp_path):
    """A fresh process loads an artifact and answers an SGD contribution query (model read, first forward
    pass, quadratic start, Adam) without importing torch._export.serde.serialize, torch._dynamo or sympy
    (torch imports sympy for an autograd.grad with grad_outputs: the Jacobian's rows do without)."""
    from tensorboard_plugin_aevis.model_artifact import save_model_artifact
    from tensorboard_plugin_aevis.models import ClassifierWrapper

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model = ClassifierWrapper(net, (0.5,) * 3, (0.25,) * 3).eval()
    directory = str(tmp_path / "m")
    save_model_artifact(model, torch.rand(3, 12, 12), directory, gated_layers=["model.1", "model.3"])
    code = (
        "import sys, torch\n"
        "from tensorboard_plugin_aevis import contribution\n"
        "from tensorboard_plugin_aevis.model_artifact import load_model_artifact\n"
        f"model = load_model_artifact({directory!r})\n"
        "session = contribution.ContributionSession(model, torch.rand(2, 3, 12, 12), 'model.1', 'model.3')\n"
        "result = session.feature_map(2, (3, 3, 7, 7), contribution.ContributionOptions(mode='sgd', steps=5))\n"
        "assert result.to_json()['ranking']\n"
        "print(sorted(n for n in ('torch._dynamo', 'torch._export.serde.serialize', 'sympy') if n in sys.modules))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
