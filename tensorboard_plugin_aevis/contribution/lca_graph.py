"""The forward of the layers' lowest common ancestor (LCA) as an fx graph whose calls of children stay calls."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ..program_loader import ProgramModule

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _unit_length(root: nn.Module, parts: Sequence[str]) -> int:
    """How many leading path parts name the child of ``root`` that ``root``'s forward calls.

    Usually 1; more when the child sits in a ModuleList / ModuleDict (never called
    itself): ``_blocks.8`` is the unit of ``_blocks.8.conv`` under an EfficientNet.
    """
    module = root
    for i, part in enumerate(parts):
        module = getattr(module, part)
        if not isinstance(module, _CONTAINERS):
            return i + 1
    return len(parts)


def called_children(root: nn.Module) -> Iterator[nn.Module]:
    """The children that ``root``'s forward calls (see :func:`_unit_length`): its children, the
    items of a ModuleList / ModuleDict child in their place."""
    for child in root.children():
        if isinstance(child, _CONTAINERS):
            yield from called_children(child)
        else:
            yield child


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's forward with its called children (see :func:`_unit_length`) kept as opaque calls."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self._root = root

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        parts = qualified_name.split(".")
        return _unit_length(self._root, parts) == len(parts)


def lca_graph(lca: nn.Module) -> Optional[torch.fx.GraphModule]:
    """The LCA's forward as an fx graph whose calls of children stay calls: a module of a loaded
    model artifact (:class:`..program_loader.ProgramModule`) gives its own graph, which is such a
    graph already; other modules are traced with torch.fx, or, when tracing fails, give their own
    graph when they have one (``torch.export.unflatten``'s InterpreterModule runs an fx graph); else None."""
    if isinstance(lca, ProgramModule):
        return torch.fx.GraphModule(lca, lca.graph)
    try:
        return torch.fx.GraphModule(lca, _ChildrenAsLeaves(lca).trace(lca))
    except Exception:  # any tracing failure (data-dependent control flow, ...)
        pass
    graph = getattr(lca, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        try:
            return torch.fx.GraphModule(lca, graph)
        except Exception:
            return None
    return None
