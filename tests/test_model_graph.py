"""build_model_graph: edges against hand-written wiring, torchvision models, the hook fallback."""

import json

import pytest
import torch
import torchvision
from torch import nn

from tensorboard_plugin_aevis.model_graph import build_model_graph
from tensorboard_plugin_aevis.models import ClassifierWrapper, load_model


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) + x)


class BranchNet(nn.Module):
    """stem -> residual block -> two branches concatenated -> pool -> flatten -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Residual(4)
        self.left = nn.Conv2d(4, 2, 1)
        self.right = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 7)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


class DataDependent(BranchNet):
    """The same layers, but a Python branch on tensor values: torch.fx cannot trace it."""

    def forward(self, x):
        x = self.stem(x)
        if x.mean() > -1e9:
            x = self.block(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


def edge_set(graph):
    return {(e["source"], e["target"]) for e in graph["edges"]}


def by_id(graph):
    return {n["id"]: n for n in graph["nodes"]}


def test_user_model_edges_groups_and_gates_match_its_wiring():
    gated = ["block", "right.1", "left"]
    graph = build_model_graph(BranchNet(), torch.rand(2, 3, 6, 6), gated)
    assert graph["method"] == "fx"
    assert edge_set(graph) == {
        ("input", "stem"), ("stem", "block.conv"), ("block.conv", "block.add"), ("stem", "block.add"),
        ("block.add", "block.act"), ("block.act", "left"), ("block.act", "right.0"), ("right.0", "right.1"),
        ("left", "cat"), ("right.1", "cat"), ("cat", "pool"), ("pool", "flatten"), ("flatten", "fc"), ("fc", "output"),
    }
    nodes = by_id(graph)
    assert nodes["block.conv"]["module_type"] == "Conv2d" and nodes["block.conv"]["group"] == "block"
    assert nodes["block.add"]["op"] == "call_function" and nodes["block.add"]["group"] == "block"
    assert nodes["cat"]["group"] is None and nodes["cat"]["shape"] == [5, 6, 6]
    # a container's gate sits on the node returning its output
    assert {n["id"]: n["gated_layer"] for n in graph["nodes"] if n["gated_layer"] is not None} == {
        "block.act": 0, "right.1": 1, "left": 2,
    }
    assert graph["groups"] == [
        {"id": "block", "label": "block", "parent": None, "module_type": "Residual", "gated_layers": [0]},
        {"id": "right", "label": "right", "parent": None, "module_type": "Sequential", "gated_layers": [1]},
    ]
    json.dumps(graph)


def test_wrapper_draws_normalisation_then_the_model_with_prefixed_paths():
    wrapped = ClassifierWrapper(BranchNet(), [0.5] * 3, [0.25] * 3)
    graph = build_model_graph(wrapped, torch.rand(1, 3, 6, 6), ["model.block"])
    edges = edge_set(graph)
    assert ("input", "normalize") in edges and ("normalize", "model.stem") in edges
    assert ("model.stem", "model.block.add") in edges
    assert by_id(graph)["model.block.act"]["gated_layer"] == 0
    assert {g["id"]: g["parent"] for g in graph["groups"]} == {"model": None, "model.block": "model", "model.right": "model"}


def test_resnet18_skip_connections_and_repeated_relu():
    model = load_model("resnet18")
    gated = ["model.layer1.0", "model.layer2.0", "model.layer1.0.relu"]
    graph = build_model_graph(model, torch.rand(1, 3, 32, 32), gated)
    edges = edge_set(graph)
    # identity skip: the block input (the stem's max-pool) feeds the add directly
    assert ("model.maxpool", "model.layer1.0.add") in edges and ("model.layer1.0.bn2", "model.layer1.0.add") in edges
    # projection skip: the downsample branch feeds the add
    assert ("model.layer2.0.downsample.1", "model.layer2.0.add") in edges
    assert ("model.layer1.1.relu#1", "model.layer2.0.downsample.0") in edges
    nodes = by_id(graph)
    assert nodes["model.layer1.0.relu#1"]["gated_layer"] == 0  # the block's output: its second ReLU call
    assert nodes["model.layer1.0.relu"]["gated_layer"] == 2
    assert nodes["model.layer2.0.relu#1"]["gated_layer"] == 1
    groups = {g["id"]: g for g in graph["groups"]}
    assert groups["model.layer1"]["gated_layers"] == [0, 2] and groups["model.layer1.0"]["parent"] == "model.layer1"
    ids = [n["id"] for n in graph["nodes"]]
    assert len(ids) == len(set(ids))
    assert {e["source"] for e in graph["edges"]} | {e["target"] for e in graph["edges"]} <= set(ids)


def test_densenet_concatenations_collect_every_earlier_feature():
    net = torchvision.models.DenseNet(growth_rate=4, block_config=(3, 2), num_init_features=8, bn_size=2, num_classes=5)
    graph = build_model_graph(ClassifierWrapper(net, [0.0] * 3, [1.0] * 3), torch.rand(1, 3, 32, 32), [])
    block = "model.features.denseblock1"
    into_third = {s for s, t in edge_set(graph) if t.startswith(f"{block}.denselayer3.") and t.endswith("cat")}
    assert into_third == {"model.features.pool0", f"{block}.denselayer1.conv2", f"{block}.denselayer2.conv2"}


def test_untraceable_model_falls_back_to_hooks():
    graph = build_model_graph(DataDependent(), torch.rand(1, 3, 6, 6), ["block", "left"])
    assert graph["method"] == "hooks"
    edges = edge_set(graph)
    assert {("input", "stem"), ("stem", "block.conv"), ("block.act", "left"), ("block.act", "right.0"), ("right.0", "right.1"), ("fc", "output")} <= edges
    # the add is a functional op hooks cannot see: the ReLU links to the module called before it
    assert ("block.conv", "block.act") in edges
    nodes = by_id(graph)
    assert nodes["block.act"]["gated_layer"] == 0 and nodes["left"]["gated_layer"] == 1
    assert nodes["right.1"]["shape"] == [3, 6, 6]


def test_unknown_gated_layer_is_named():
    with pytest.raises(ValueError, match=r"\['blok'\] are not modules"):
        build_model_graph(BranchNet(), torch.rand(1, 3, 6, 6), ["blok"])


@pytest.mark.slow
def test_efficientnet_lite0_keeps_library_convs_whole_and_finds_its_skips():
    model = load_model("efficientnet-lite0")
    graph = build_model_graph(model, torch.rand(1, 3, 64, 64), ["model._blocks.2"])
    nodes = by_id(graph)
    assert nodes["model._conv_stem"]["module_type"] == "Conv2dStaticSamePadding"
    assert not any(n["label"] == "conv2d" for n in graph["nodes"])
    adds = [n["id"] for n in graph["nodes"] if n["label"] == "add" and n["group"] == "model._blocks.2"]
    assert len(adds) == 1 and nodes[adds[0]]["gated_layer"] == 0
    assert ("model._blocks.1._bn2", adds[0]) in edge_set(graph)  # block 2's input skips to its add
