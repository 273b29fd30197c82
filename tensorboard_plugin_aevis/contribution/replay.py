"""Replaying the LCA's fx graph from the child that holds the earlier layer, with the earlier values cached."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .lca_graph import lca_graph


class StopForward(Exception):
    """Raised once the target layer's output is kept: nothing after the target layer is needed."""


def clone(value: Any) -> Any:
    """A tensor's copy (a replay's in-place ops, e.g. ``ReLU(inplace=True)``, must not touch the cache); other values as they are."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def traced_replay(lca: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], earlier_rel: Sequence[str],
                  gate: Callable[[Any], Any], stop: Optional[Callable[[Any], None]]) -> Optional[Callable[[], Any]]:
    """A replay of the LCA's fx graph from the child holding the earlier layer, or None when there is none.

    Args:
        lca: the lowest common ancestor module of the two layers.
        args, kwargs: the LCA's inputs in the one real forward pass (a replay needs no kwargs).
        earlier_rel: the earlier layer's path below the LCA, split at the dots.
        gate: applied to the earlier child's output when the earlier layer is that child itself
            (deeper earlier layers are gated by their forward hook).
        stop: called with the graph's output when the LCA's output is the target (it keeps the
            value and raises :class:`StopForward`); None when the LCA's output is simply returned.

    Returns:
        ``replay() -> output``: runs the graph's nodes after the earlier child on clones of the
        values they read from before it (computed once here).
    """
    if kwargs or not earlier_rel:
        return None
    graph_module = lca_graph(lca)
    if graph_module is None:
        return None
    nodes: List[torch.fx.Node] = list(graph_module.graph.nodes)
    called = {n.target for n in nodes if n.op == "call_module"}
    unit = next((k for k in range(len(earlier_rel), 0, -1) if ".".join(earlier_rel[:k]) in called), None)
    if unit is None:
        return None
    first = [n for n in nodes if n.op == "call_module" and n.target == ".".join(earlier_rel[:unit])]
    if len(first) != 1 or sum(n.op == "placeholder" for n in nodes) != len(args):
        return None
    start = nodes.index(first[0])
    earlier_is_child = unit == len(earlier_rel)
    interpreter = torch.fx.Interpreter(graph_module)
    interpreter.args_iter = iter(args)
    prefix = nodes[: start + 1] if earlier_is_child else nodes[:start]
    for node in prefix:  # the earlier child itself runs ungated here (gates are None)
        interpreter.env[node] = interpreter.run_node(node)
    later = set(nodes[len(prefix):])
    cached = {n: v for n, v in interpreter.env.items() if any(u in later for u in n.users)}
    earlier_output = interpreter.env[first[0]] if earlier_is_child else None

    def replay():
        interpreter.env = {n: clone(v) for n, v in cached.items()}
        if earlier_is_child:
            interpreter.env[first[0]] = gate(clone(earlier_output))
        for node in nodes[len(prefix):]:
            value = interpreter.run_node(node)
            if node.op == "output":
                if isinstance(value, (tuple, list)) and len(value) == 1:  # a loaded model's graph returns its outputs flattened
                    value = value[0]
                if stop is not None:
                    stop(value)
                return value
            interpreter.env[node] = value
        raise AssertionError("an fx graph always ends in an output node")

    return replay
