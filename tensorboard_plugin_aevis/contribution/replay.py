"""Replaying the LCA's fx graph from the child that holds the earlier layer, with the earlier values cached."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .lca_graph import lca_graph


class StopForward(Exception):
    """Raised once the target layer's output is kept: nothing after the target layer is needed."""


def clone(value: Any) -> Any:
    """A tensor's copy (a replay's in-place ops, e.g. ``ReLU(inplace=True)``, must not touch the cache); other values as they are."""
    return value.clone() if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def recorded_outputs(modules: Iterable[nn.Module]) -> Iterator[Dict[nn.Module, torch.Tensor]]:
    """Records the outputs of ``modules`` in the forward pass run inside the ``with``.

    Yields a dict filled on exit: module -> its output, for each module called exactly once
    whose output is a tensor not modified in place afterwards (its version counter unchanged
    since the call); such an output is the value a replay of that call would compute.
    """
    seen: Dict[nn.Module, List[Any]] = {}

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        entry = seen.setdefault(module, [0, None, None])
        entry[0] += 1
        entry[1], entry[2] = output, output._version if isinstance(output, torch.Tensor) else None

    handles = [module.register_forward_hook(keep) for module in modules]
    kept: Dict[nn.Module, torch.Tensor] = {}
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()
        kept.update({m: out for m, (calls, out, version) in seen.items()
                     if calls == 1 and isinstance(out, torch.Tensor) and out._version == version})


def traced_replay(lca: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], earlier_rel: Sequence[str],
                  gate: Callable[[Any], Any], stop: Optional[Callable[[Any], None]],
                  recorded: Optional[Mapping[nn.Module, torch.Tensor]]) -> Optional[Callable[[], Any]]:
    """A replay of the LCA's fx graph from the child holding the earlier layer, or None when there is none.

    Args:
        lca: the lowest common ancestor module of the two layers.
        args, kwargs: the LCA's inputs in the one real forward pass (a replay needs no kwargs).
        earlier_rel: the earlier layer's path below the LCA, split at the dots.
        gate: applied to the earlier child's output when the earlier layer is that child itself
            (deeper earlier layers are gated by their forward hook).
        stop: called with the graph's output when the LCA's output is the target (it keeps the
            value and raises :class:`StopForward`); None when the LCA's output is simply returned.
        recorded: outputs of the LCA's children in the real forward pass (:func:`recorded_outputs`):
            of the nodes before the earlier child only those the later nodes depend on run, and
            not the calls of these children; None: every node before the earlier child runs (an
            in-place operation among them that no later node depends on takes effect).

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
    later = set(nodes[len(prefix):])
    needed = [n for n in prefix if any(u in later for u in n.users) or (earlier_is_child and n is first[0])]
    known: Dict[torch.fx.Node, torch.Tensor] = {}
    runs = set(prefix)
    if recorded is not None:
        known = {n: recorded[graph_module.get_submodule(n.target)] for n in prefix
                 if n.op == "call_module" and graph_module.get_submodule(n.target) in recorded}
        runs, pending = set(), [n for n in needed if n not in known]
        while pending:  # what the needed values depend on, back to the recorded ones
            node = pending.pop()
            if node not in runs:
                runs.add(node)
                pending += [n for n in node.all_input_nodes if n not in known]
    for node in prefix:  # the earlier child itself runs ungated here (gates are None); placeholders read the args in order
        if node in known:
            interpreter.env[node] = known[node]
        elif node in runs or node.op == "placeholder":
            interpreter.env[node] = interpreter.run_node(node)
    cached = {n: interpreter.env[n] for n in needed}
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
