"""AEVis's own artifact loader (program_loader) against torch's (torch.export deserialise + unflatten)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from tensorboard_plugin_aevis import model_artifact, program_loader
from tensorboard_plugin_aevis.gating import GateHooks
from tensorboard_plugin_aevis.model_artifact import ModelArtifactError, load_model_artifact, save_model_artifact
from tensorboard_plugin_aevis.models import ClassifierWrapper


# ----------------------------------------------------------------------------- test models
class Residual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # called twice per block: one module, two calls
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(Residual(8, 8, 1), Residual(8, 8, 1))
        self.layer2 = nn.Sequential(Residual(8, 16, 2), Residual(16, 16, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class MBConv(nn.Module):
    """EfficientNet's block: expand, depthwise, squeeze-excitation, project; one swish module called three times."""

    def __init__(self, cin, cout, expand, stride):
        super().__init__()
        mid = cin * expand
        self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid)
        self._se_reduce = nn.Conv2d(mid, max(1, cin // 2), 1)
        self._se_expand = nn.Conv2d(max(1, cin // 2), mid, 1)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout)
        self._swish = Swish()
        self.skip = stride == 1 and cin == cout

    def forward(self, inputs):
        x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        squeezed = self._se_expand(self._swish(self._se_reduce(nn.functional.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(squeezed) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(8)
        self._blocks = nn.ModuleList([MBConv(8, 8, 1, 1), MBConv(8, 12, 4, 2), MBConv(12, 12, 4, 1), MBConv(12, 16, 4, 2)])
        self._swish = Swish()
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self._fc(self._dropout(x.view(x.size(0), -1)))  # x.size(0): a batch-size node in the program


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


MODELS = {
    "small_cnn": (small_cnn, ["model.0", "model.3"]),
    "resnet_like": (ResNetLike, ["model.layer1.0", "model.layer1.1", "model.layer2.0", "model.layer2.1"]),
    "efficientnet_like": (EfficientNetLike, ["model._blocks.0", "model._blocks.1", "model._blocks.2", "model._blocks.3"]),
}


def _wrapped(net):
    torch.manual_seed(0)
    net = net()
    for module in net.modules():  # non-trivial batch-norm statistics
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return ClassifierWrapper(net, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), class_names=[f"c{i}" for i in range(5)]).eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved(request, tmp_path_factory):
    make, layers = MODELS[request.param]
    model = _wrapped(make)
    directory = str(tmp_path_factory.mktemp(request.param) / "0123456789abcdef")
    save_model_artifact(model, torch.rand(3, 32, 32), directory, step=3, gated_layers=layers)
    return model, directory, layers


def _both(directory):
    """(AEVis's module, torch's module) of one artifact."""
    ours = model_artifact.read_program(directory)
    reference = model_artifact.read_program(directory, torch_loader=True)
    assert ours.tree is not None, "the artifact fell back to torch's loader"
    assert reference.tree is None
    return model_artifact.module_from_program(ours), model_artifact.module_from_program(reference)


# ----------------------------------------------------------------------------- same model as torch's loader
def test_same_modules_weights_and_outputs_as_torchs_loader(saved):
    model, directory, _ = saved
    ours, reference = _both(directory)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in reference.named_modules()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert sorted(n for n, _ in ours.named_buffers()) == sorted(n for n, _ in reference.named_buffers())
    for (name, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(reference.state_dict().items())):
        assert torch.equal(a, b), name
    for batch in (1, 3, 6):
        x = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)  # the same ops in the same order
            torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    assert ours.class_names == reference.class_names and ours.input_shape == (3, 32, 32) and ours.step == 3
    assert not any(p.requires_grad for p in ours.parameters())


def test_hooked_blocks_see_and_gate_the_same_outputs(saved):
    """gating.GateHooks on the blocks' module paths: the recorded block outputs, the gated logits and
    the gradients through the gates equal torch's loader's (and the original model's)."""
    model, directory, layers = saved
    ours, reference = _both(directory)
    x = torch.rand(2, 3, 32, 32)
    results = []
    for net in (ours, reference, model):
        with GateHooks(net, layers, record=True) as hooks:
            net(x)
            recorded = [a.clone() for a in hooks.activations]
            torch.manual_seed(1)
            gates = [torch.rand(2, a.shape[1], requires_grad=True) for a in recorded]
            hooks.gates = gates
            out = net(x)
            grads = torch.autograd.grad(out.square().sum(), gates)
        results.append((recorded, out, grads))
    (rec_a, out_a, grad_a), (rec_b, out_b, grad_b), (rec_m, out_m, _) = results
    for a, b, m in zip(rec_a, rec_b, rec_m):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    torch.testing.assert_close(out_a, out_m, rtol=1e-5, atol=1e-5)
    for a, b in zip(grad_a, grad_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grad_a)


def test_every_call_of_a_shared_module_fires_its_hook(saved):
    """A module called several times (EfficientNet's _swish, a block's ReLU) is one module whose hooks fire per call, as in torch's."""
    _, directory, _ = saved
    ours, reference = _both(directory)
    counts = []
    for net in (ours, reference):
        calls = {}
        handles = [m.register_forward_hook(lambda m, a, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
                   for n, m in net.named_modules() if n]
        net(torch.rand(1, 3, 32, 32))
        for h in handles:
            h.remove()
        counts.append(calls)
    assert counts[0] == counts[1]
    most = {"small_cnn": 1, "resnet_like": 2, "efficientnet_like": 3}  # a block's ReLU: 2 calls, MBConv's _swish: 3
    assert max(counts[0].values()) == next(v for k, v in most.items() if k in directory)


def test_input_of_another_shape_is_refused_as_torchs(saved):
    _, directory, _ = saved
    ours, reference = _both(directory)
    for bad in (torch.rand(2, 3, 30, 32), torch.rand(2, 1, 32, 32), torch.rand(3, 32, 32), torch.rand(model_artifact.MAX_BATCH + 1, 3, 1, 1)):
        for net in (ours, reference):
            with pytest.raises(RuntimeError):
                net(bad)


# ----------------------------------------------------------------------------- what the fast path avoids, and its limits
def _program(directory):
    with open(os.path.join(directory, model_artifact.PROGRAM_FILE)) as f:
        return model_artifact.sanitise_program_json(json.load(f))


def _weights(directory):
    return [torch.load(os.path.join(directory, name), weights_only=True) for name in (model_artifact.WEIGHTS_FILE, model_artifact.CONSTANTS_FILE)]


@pytest.mark.parametrize("edit, named", [
    (lambda n: n["inputs"][0].__setitem__("arg", {"as_graph": {"name": "g", "graph": {}}}), "'as_graph'"),
    (lambda n: n.__setitem__("target", "torch.ops.aten.no_such_operator.default"), "no_such_operator"),
    (lambda n: n["outputs"].__setitem__(0, {"as_custom_obj": {"name": "o", "class_fqn": "x"}}), "'as_custom_obj'"),
])
def test_an_unsupported_construct_is_named(saved, edit, named):
    _, directory, _ = saved
    program = _program(directory)
    edit(next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.conv2d.default"))
    with pytest.raises(program_loader.UnsupportedProgram, match=named):
        program_loader.build_program(program, *_weights(directory))


def test_an_unsupported_program_falls_back_to_torchs_loader(tmp_path):
    """A module called twice with different graphs (shape-dependent code) is outside the fast path:
    the artifact is read by torch's loader, and the model is the same."""

    class Flexible(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)) if x.dim() == 4 else x * 2

    class TwoShapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head, self.flex = nn.Conv2d(3, 4, 3), nn.Linear(4, 2), Flexible()

        def forward(self, x):
            return self.head(self.flex(self.flex(self.conv(x))))

    torch.manual_seed(0)
    model = ClassifierWrapper(TwoShapes(), (0.5,) * 3, (0.25,) * 3).eval()
    directory = str(tmp_path / "m")
    save_model_artifact(model, torch.rand(3, 8, 8), directory)
    with pytest.raises(program_loader.UnsupportedProgram, match="'model.flex' is called 2 times with different graphs"):
        program_loader.build_program(_program(directory), *_weights(directory))
    program = model_artifact.read_program(directory)
    assert program.tree is None and program.program is not None
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(model_artifact.module_from_program(program)(x), model(x), rtol=1e-5, atol=1e-5)


def test_names_that_are_not_identifiers_never_reach_the_generated_code(saved):
    """Node names come from the logdir: a name the sanitiser lets through but that is no Python
    identifier ("-", ".") is not used as a variable; the model computes the same."""
    model, directory, _ = saved
    program = _program(directory)
    nodes = program["graph_module"]["graph"]["nodes"]
    node = next(n for n in nodes if n["outputs"] and "as_tensor" in n["outputs"][0])
    old = node["outputs"][0]["as_tensor"]["name"]
    text = json.dumps(program).replace(f'"{old}"', '"bad-name.x"')
    tree = program_loader.build_program(json.loads(text), *_weights(directory))
    loaded = tree.instantiate()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    for module in loaded.modules():
        if isinstance(module, program_loader.ProgramModule):
            source = module.graph.python_code("self").src
            assert "bad-name" not in source


def test_tied_weights_stay_one_tensor(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.b.weight = self.a.weight
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.b(torch.relu(self.a(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = ClassifierWrapper(Tied(), (0.5,) * 3, (0.25,) * 3).eval()
    directory = str(tmp_path / "m")
    save_model_artifact(model, torch.rand(3, 8, 8), directory)
    ours, reference = _both(directory)
    assert ours.get_submodule("model.a").weight is ours.get_submodule("model.b").weight
    # as in the user's model (torch's loader gives the two names two Parameter objects over one tensor)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in model.named_parameters()]
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_instances_share_weights_not_modules(saved):
    _, directory, _ = saved
    program = model_artifact.read_program(directory)
    first, second = (model_artifact.module_from_program(program) for _ in range(2))
    pairs = list(zip(first.named_modules(), second.named_modules()))
    assert all(a is not b for (_, a), (_, b) in pairs)
    for (_, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert a is not b and a.data_ptr() == b.data_ptr()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenet_v3_small", "densenet121", "regnet_x_400mf", "efficientnet-lite0"])
def test_model_zoo_loads_by_the_fast_path_as_torchs(name, tmp_path):
    """The engine's architectures rebuild by AEVis's loader (no fallback), with torch's loader's outputs and block outputs."""
    from tensorboard_plugin_aevis.gating import select_layers
    from tensorboard_plugin_aevis.models import load_model

    torch.manual_seed(0)
    model = load_model(name)
    size = model.input_size if name == "efficientnet-lite0" else (64, 64)
    x = torch.rand(2, 3, *size)
    layers = select_layers(model, x[:1])
    directory = str(tmp_path / "m")
    save_model_artifact(model, x[0], directory, gated_layers=layers)
    ours, reference = _both(directory)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in reference.named_modules()]
    recorded = []
    for net in (ours, reference):
        with GateHooks(net, layers, record=True) as hooks, torch.no_grad():
            out = net(x)
        recorded.append((out, hooks.activations))
    torch.testing.assert_close(recorded[0][0], recorded[1][0], rtol=0, atol=0)
    for a, b in zip(recorded[0][1], recorded[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_damaged_program_is_still_a_clear_error(saved, tmp_path):
    """A program neither loader can rebuild (a node reads a value no node defines) is a ModelArtifactError."""
    import shutil

    _, directory, _ = saved
    copy = str(tmp_path / "a")
    shutil.copytree(directory, copy)
    program = json.load(open(os.path.join(copy, model_artifact.PROGRAM_FILE)))
    node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.conv2d.default")
    node["inputs"][0]["arg"] = {"as_tensor": {"name": "never_defined"}}
    with open(os.path.join(copy, model_artifact.PROGRAM_FILE), "w") as f:
        json.dump(program, f)
    with pytest.raises(ModelArtifactError, match="could not be rebuilt"):
        load_model_artifact(copy)
