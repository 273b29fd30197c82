"""The model's layer DAG for the dashboard: torch.fx nodes, edges and module-path groups.

``build_model_graph(model, example_input, gated_layers)`` returns the JSON of
``GET graph`` (``http_api.md``)::

    {"method": "fx" | "hooks",
     "nodes": [{"id", "label", "op", "module_type", "group", "gated_layer", "shape"}],
     "edges": [{"source", "target"}],
     "groups": [{"id", "label", "parent", "gated_layers"}]}

Granularity (drawable, yet true to the data flow):

- one node per call of a *leaf module*: a module with no children, or an instance of
  a ``torch.nn`` layer class (so a library's ``Conv2d`` subclass stays one node);
  ``id`` = module path (a module called twice gets ``path#1`` for its second call);
- one node per functional op that carries data (``add``, ``cat``, ``mul``,
  ``flatten``, ...); plumbing (``getattr``, ``getitem``, ``size``, parameter reads)
  is contracted away, its edges passed through; ``id`` = ``group.opname`` (``#k``
  for the k-th repeat in the same group);
- an ``input`` and an ``output`` node.

Edges follow the real tensors, so residual skips and concatenations are right.
``group`` is the module path of the innermost container module that made the call
(``None`` at the top level); ``groups`` hold every such container with its parent
and the indices of the gated layers in its subtree. ``gated_layer`` marks the node
that produces a gated module's output (for a container such as a residual block: the
last op of its forward). ``shape`` is the node's output shape without the batch
dimension, or None when it is not a single tensor.

A :class:`~tensorboard_plugin_aevis.models.ClassifierWrapper` is drawn as its
``normalize`` step followed by the wrapped model's graph (paths keep the ``model.``
prefix, as ``named_modules`` of the wrapper gives them). When torch.fx cannot trace
the model (data-dependent control flow, ...), the graph comes from forward hooks on
the leaf modules during one run of ``example_input`` (``"method": "hooks"``): edges
connect the module that produced a tensor to the modules that consume it; a tensor
made by a functional op links to the module called just before.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .models import ClassifierWrapper, eval_mode

CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
PLUMBING_FUNCTIONS = {"getattr", "getitem", "_assert", "size", "dim"}
PLUMBING_METHODS = {"size", "dim", "contiguous", "type", "to", "detach", "clone", "type_as"}
NORMALIZE = "normalize"


class GraphError(ValueError):
    """The model cannot be drawn (it fails on the example input); the message says why."""


def is_leaf_module(module: nn.Module) -> bool:
    """A node of the drawn graph: no children, or a ``torch.nn`` layer class (or a subclass of one)."""
    if not any(True for _ in module.children()):
        return True
    for cls in type(module).__mro__:
        if cls in CONTAINERS:
            return False
        if cls.__module__.startswith(("torch.nn.", "torch.ao.nn.")):
            return True
    return False


def build_model_graph(model: nn.Module, example_input: torch.Tensor, gated_layers: Sequence[str]) -> Dict[str, Any]:
    """The layer DAG of ``model`` (JSON-able dict, see the module docstring).

    ``example_input``: (B, C, H, W) images the model accepts (for the output shapes,
    and for the hook fallback); ``gated_layers``: module paths, their list index is
    ``gated_layer`` in the nodes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    missing = [g for g in gated_layers if g not in modules]
    if missing:
        raise ValueError(f"gated layers {missing} are not modules of the model; pass paths from model.named_modules()")
    with eval_mode(model), torch.no_grad():
        try:
            nodes, edges = _fx_graph(model, example_input)
            method = "fx"
        except Exception:  # torch.fx raises TraceError, TypeError, NotImplementedError, ... on untraceable code
            nodes, edges = _hook_graph(model, example_input)
            method = "hooks"
    _mark_gated(nodes, gated_layers, modules)
    return {"method": method, "nodes": nodes, "edges": edges, "groups": _groups(nodes, gated_layers, modules)}


# ----------------------------------------------------------------------------- torch.fx


class _Tracer(fx.Tracer):
    """Keeps leaf modules whole and records which node each module call returned."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: Dict[str, List[fx.Node]] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf_module(m)

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.module_outputs.setdefault(self.path_of_module(m), []).append(out.node)
        return out


def _fx_graph(model: nn.Module, example_input: torch.Tensor) -> Tuple[List[dict], List[dict]]:
    prefix, net, net_input = "", model, example_input
    if isinstance(model, ClassifierWrapper):  # its input checks are Python control flow: trace the inner model
        prefix, net = "model.", model.model
        net_input = (example_input - model.mean) / model.std
    tracer = _Tracer()
    graph = tracer.trace(net)
    module = fx.GraphModule(tracer.root, graph)
    ShapeProp(module).propagate(net_input)

    kept: Dict[fx.Node, dict] = {}
    calls: Dict[str, int] = {}
    outputs_of: Dict[fx.Node, List[str]] = {}
    for path, produced in tracer.module_outputs.items():
        for node in produced:
            outputs_of.setdefault(node, []).append(prefix + path)
    for node in graph.nodes:
        record = _node_record(node, prefix, calls, model)
        if record is not None:
            record["outputs_of"] = outputs_of.get(node, [])
            kept[node] = record

    nodes = list(kept.values())
    edges, seen = [], set()
    for node, record in kept.items():
        for source in _kept_sources(node, kept):
            key = (kept[source]["id"], record["id"])
            if key not in seen:
                seen.add(key)
                edges.append({"source": key[0], "target": key[1]})
    if prefix:  # input -> normalize -> whatever the wrapped model's input fed
        nodes.insert(1, _record(NORMALIZE, NORMALIZE, "call_function", None, None, list(example_input.shape[1:])))
        edges = [{"source": NORMALIZE if e["source"] == "input" else e["source"], "target": e["target"]} for e in edges]
        edges.insert(0, {"source": "input", "target": NORMALIZE})
    return nodes, edges


def _node_record(node: fx.Node, prefix: str, calls: Dict[str, int], model: nn.Module) -> Optional[dict]:
    """The drawn node for an fx node, or None for plumbing."""
    shape = _shape(node.meta.get("tensor_meta"))
    if node.op == "placeholder":
        return _record("input", "input", "placeholder", None, None, shape)
    if node.op == "output":
        return _record("output", "output", "output", None, None, shape)
    if node.op == "get_attr":
        return None
    if node.op == "call_module":
        path = prefix + str(node.target)
        count = calls.get(path, 0)
        calls[path] = count + 1
        module = model.get_submodule(path)
        node_id = path if count == 0 else f"{path}#{count}"
        return _record(node_id, path.rsplit(".", 1)[-1], "call_module", type(module).__name__, _parent(path), shape)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    if (node.op == "call_function" and name in PLUMBING_FUNCTIONS) or (node.op == "call_method" and name in PLUMBING_METHODS):
        return None
    stack = node.meta.get("nn_module_stack") or {}
    group = prefix + list(stack.values())[-1][0] if stack else (prefix[:-1] or None)
    base = f"{group}.{name}" if group else name
    count = calls.get(base, 0)
    calls[base] = count + 1
    return _record(base if count == 0 else f"{base}#{count}", name, node.op, None, group, shape)


def _kept_sources(node: fx.Node, kept: Dict[fx.Node, dict]) -> List[fx.Node]:
    """The nearest kept ancestors of ``node`` in argument order (plumbing nodes passed through)."""
    sources: List[fx.Node] = []
    for n in node.all_input_nodes:
        for source in ([n] if n in kept else _kept_sources(n, kept)):
            if source not in sources:
                sources.append(source)
    return sources


def _shape(meta: Any) -> Optional[List[int]]:
    shape = getattr(meta, "shape", None)
    return [int(s) for s in shape[1:]] if shape is not None and len(shape) > 0 else None


def _record(node_id, label, op, module_type, group, shape) -> dict:
    return {"id": node_id, "label": label, "op": op, "module_type": module_type, "group": group, "gated_layer": None, "shape": shape}


def _parent(path: str) -> Optional[str]:
    return path.rsplit(".", 1)[0] if "." in path else None


# ----------------------------------------------------------------------------- hooks


def _hook_graph(model: nn.Module, example_input: torch.Tensor) -> Tuple[List[dict], List[dict]]:
    """Module-level graph from forward hooks in execution order (the fallback)."""
    leaves = [(path, m) for path, m in model.named_modules() if path and is_leaf_module(m) and not _inside_leaf(path, model)]
    nodes = [_record("input", "input", "placeholder", None, None, list(example_input.shape[1:]))]
    nodes[0]["outputs_of"] = []
    producer: Dict[int, str] = {id(example_input): "input"}
    alive: List[torch.Tensor] = [example_input]  # keep tensors alive so their ids stay unique
    edges: List[dict] = []
    calls: Dict[str, int] = {}

    def hook(path):
        def record(module, inputs, output):
            count = calls.get(path, 0)
            calls[path] = count + 1
            node_id = path if count == 0 else f"{path}#{count}"
            shape = list(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            node = _record(node_id, path.rsplit(".", 1)[-1], "call_module", type(module).__name__, _parent(path), shape)
            node["outputs_of"] = [path]
            sources = [producer.get(id(t)) for t in inputs if isinstance(t, torch.Tensor)] or [None]
            for source in dict.fromkeys(s if s is not None else nodes[-1]["id"] for s in sources):
                edges.append({"source": source, "target": node_id})
            nodes.append(node)
            if isinstance(output, torch.Tensor):
                producer[id(output)] = node_id
                alive.append(output)

        return record

    handles = [m.register_forward_hook(hook(path)) for path, m in leaves]
    try:
        output = model(example_input)
    except Exception as e:
        raise GraphError(f"the model fails on the example input ({type(e).__name__}: {e}); pass an input of the shape it expects") from e
    finally:
        for h in handles:
            h.remove()
    out = _record("output", "output", "output", None, None, list(output.shape[1:]) if isinstance(output, torch.Tensor) else None)
    out["outputs_of"] = []
    edges.append({"source": producer.get(id(output), nodes[-1]["id"]), "target": "output"})
    nodes.append(out)
    return nodes, edges


def _inside_leaf(path: str, model: nn.Module) -> bool:
    parts = path.split(".")
    return any(is_leaf_module(model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts)))


# ----------------------------------------------------------------------------- marking and groups


def _mark_gated(nodes: List[dict], gated_layers: Sequence[str], modules: Dict[str, nn.Module]) -> None:
    """Set ``gated_layer`` on the node producing each gated module's output.

    A module called several times is marked at its last call not yet marked by an
    earlier gated layer.
    """
    producers: Dict[str, List[dict]] = {}
    for node in nodes:
        for path in node.pop("outputs_of", []):
            producers.setdefault(path, []).append(node)
    for index, path in enumerate(gated_layers):
        candidates = producers.get(path) or [
            n for n in nodes if n["group"] == path or (n["group"] or "").startswith(path + ".")
        ][-1:]  # a container returning its input unchanged: its last op
        free = [n for n in candidates if n["gated_layer"] is None]
        if free:
            free[-1]["gated_layer"] = index


def _groups(nodes: List[dict], gated_layers: Sequence[str], modules: Dict[str, nn.Module]) -> List[dict]:
    paths = set()
    for node in nodes:
        group = node["group"]
        while group:
            paths.add(group)
            group = _parent(group)
    groups = []
    for path in sorted(paths, key=lambda p: (p.count("."), list(modules).index(p) if p in modules else 0)):
        gated = [i for i, g in enumerate(gated_layers) if g == path or g.startswith(path + ".")]
        groups.append({
            "id": path,
            "label": path.rsplit(".", 1)[-1],
            "parent": _parent(path),
            "module_type": type(modules[path]).__name__ if path in modules else None,
            "gated_layers": gated,
        })
    return groups
