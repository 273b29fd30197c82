"""Layer selection on torchvision CNNs and a user-defined model; GateHooks leave no trace."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from tensorboard_plugin_aevis.gating import GateHooks, select_layers, select_layers_and_blocks


class UserNet(nn.Module):
    """A model as a user writes it: functional ReLU, a hand-written residual block."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = F.relu(self.bn2(self.conv2(x)))
        x = x + self.conv3(y)  # residual merge in the model's own forward
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.conv(x))


class UserResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).amax(dim=(2, 3)))


def test_resnet18_gates_stem_and_every_residual_block():
    model = tvm.resnet18().eval()
    names, blocks = select_layers_and_blocks(model, torch.rand(1, 3, 64, 64))
    want_blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert names == ["relu"] + want_blocks
    assert blocks == want_blocks


def test_vgg_gates_every_conv_activation():
    model = tvm.vgg11().eval()
    names = select_layers(model, torch.rand(1, 3, 32, 32))
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    assert names == [f"features.{i + 1}" for i in convs]  # the ReLU after each conv
    assert all(isinstance(model.get_submodule(n), nn.ReLU) for n in names)


def test_mobilenet_v2_residual_blocks_and_conv_units():
    model = tvm.mobilenet_v2().eval()
    names, blocks = select_layers_and_blocks(model, torch.rand(1, 3, 64, 64))
    residual = [f"features.{i}" for i, m in enumerate(model.features) if getattr(m, "use_res_connect", False)]
    assert blocks == residual and set(residual) <= set(names)
    assert names[0] == "features.0.2" and names[-1] == "features.18.2"
    # inside a non-residual inverted block: expansion, depthwise and projection units
    assert ["features.2.conv.0.2", "features.2.conv.1.2", "features.2.conv.3"] == [n for n in names if n.startswith("features.2.")]


def test_densenet_gates_concatenating_blocks():
    model = tvm.densenet121().eval()
    names, blocks = select_layers_and_blocks(model, torch.rand(1, 3, 32, 32))
    dense = [f"features.denseblock{i}" for i in range(1, 5)]
    assert blocks == dense
    assert names == ["features.relu0", dense[0], "features.transition1.conv", dense[1],
                     "features.transition2.conv", dense[2], "features.transition3.conv", dense[3]]


def test_user_defined_models():
    names, blocks = select_layers_and_blocks(UserNet().eval(), torch.rand(1, 3, 16, 16))
    # conv1 (functional ReLU: gate the conv), conv2 -> bn2 unit; conv3's output merges in the root
    assert names == ["conv1", "bn2", "conv3"] and blocks == []
    names, blocks = select_layers_and_blocks(UserResNet().eval(), torch.rand(1, 1, 12, 12))
    assert names == ["stem.2", "blocks.0", "blocks.1"] and blocks == ["blocks.0", "blocks.1"]


def test_explicit_names_and_predicate():
    model = tvm.resnet18().eval()
    x = torch.rand(1, 3, 32, 32)
    assert select_layers(model, x, ["layer2.1", "layer1.0.conv1"]) == ["layer1.0.conv1", "layer2.1"]
    assert select_layers(model, x, lambda n, m: n.startswith("layer4.")) == [
        n for n, _ in model.named_modules() if n.startswith("layer4.") and n not in ("layer4.0.relu", "layer4.1.relu")
    ]


def test_bad_layer_specs_name_the_problem():
    model = tvm.resnet18().eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"no module named 'layer1\.O'.*layer1\.0"):
        select_layers(model, x, ["layer1.O"])
    with pytest.raises(ValueError, match="runs 2 times"):
        select_layers(model, x, ["layer1.0.relu"])  # BasicBlock calls its ReLU twice
    with pytest.raises(ValueError, match="not a 4-D feature map"):
        select_layers(model, x, ["fc"])
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no 4-D feature maps"):
        select_layers(mlp, torch.rand(1, 3, 2, 2))


def test_gate_hooks_multiply_per_example_and_leave_the_model_unchanged():
    model = UserResNet().eval()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        before = model(x)
    names = select_layers(model, x[:1])
    stem_out = model.stem(x).detach()
    gates = [torch.rand(3, 4) for _ in names]
    with GateHooks(model, names, record=True) as hooks:
        hooks.gates = gates
        with torch.no_grad():
            gated = model(x)
        torch.testing.assert_close(hooks.activations[0], stem_out)  # recorded ungated
    # independent computation of the gated network
    with torch.no_grad():
        h = stem_out * gates[0][:, :, None, None]
        for block, g in zip(model.blocks, gates[1:]):
            h = block(h) * g[:, :, None, None]
        want = model.fc(h.amax(dim=(2, 3)))
    torch.testing.assert_close(gated, want)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert flags == [p.requires_grad for p in model.parameters()] and not model.training


def test_gate_hooks_removed_after_an_exception():
    model = UserResNet().eval()
    names = select_layers(model, torch.rand(1, 1, 12, 12))
    with pytest.raises(ValueError, match="gates for layer 'stem.2' have shape"):
        with GateHooks(model, names) as hooks:
            hooks.gates = [torch.ones(1, 5)] + [torch.ones(1, 4)] * 2
            model(torch.rand(1, 1, 12, 12))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
