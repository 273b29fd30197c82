"""Which layers of a CNN carry gates, and forward hooks that apply per-example gates.

A *gated layer* is a module whose 4-D output ``(B, C, H, W)`` gets one gate per
channel (feature map) and per example: ``output * z[:, :, None, None]`` with ``z``
of shape ``(B, C)``.

The ``layers="auto"`` rule (generic: it looks only at data flow and at the kind of
each module, never at a model's class name):

1. **Merging blocks.** A module whose own ``forward`` merges two or more data paths
   that start at its inputs (a residual ``x + f(x)``, a concatenation, a gating
   product) is a block; its 4-D output is gated as one layer and nothing inside it
   is. Merging is detected on the autograd graph of one example forward pass: the
   number of distinct paths from the module's output back to its inputs, with each
   child module call contracted to a single edge, is greater than one. Only the
   outermost such block is gated (e.g. a ResNet ``Bottleneck`` or a DenseNet dense
   block, not the layers inside it).
2. **Conv units** outside merging blocks: a convolution, the normalisation layer
   that consumes its output (if any) and the activation module that consumes that
   (if any) form a unit, gated at its last module, i.e. the activated output. When
   the activation is applied functionally (``F.relu``) or by a module shared by
   several calls (it runs more than once per forward), the gate sits on the last
   module of the unit that runs once (conv or norm); for binary gates this is the
   same datapath, since every usual activation maps 0 to 0.

This matches the DGR baseline (docs/method.md, "Gates"): one gate vector per residual
block output for ResNets, one gate per conv channel for plain networks.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

LayerSpec = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_NOT_ACTIVATIONS = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention, nn.GLU)
_PATH_CAP = 1 << 20  # path counts only need to be compared with 1


@dataclasses.dataclass
class ModuleCall:
    """One call of a module during the tracing forward pass."""

    name: str
    module: nn.Module
    parent: Optional["ModuleCall"]
    inputs: List[Any]  # autograd nodes (grad_fn) of the tensor inputs
    first_node: int  # autograd sequence number at the start of the call
    outputs: List[Any] = dataclasses.field(default_factory=list)
    output_shape: Optional[Tuple[int, ...]] = None  # shape of the single tensor output, if any
    children: List["ModuleCall"] = dataclasses.field(default_factory=list)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _sequence_probe() -> int:
    """The current autograd node sequence number (nodes created later get larger ones)."""
    return torch.zeros((), requires_grad=True).mul(1.0).grad_fn._sequence_nr()


class ModelTrace:
    """The module calls of one forward pass of ``model`` on ``example_input`` (B, C, H, W).

    The forward pass runs with temporary hooks under ``torch.enable_grad()`` on a
    copy of the input; the model's weights, flags and modes are not touched.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.names: Dict[int, str] = {id(m): n for n, m in model.named_modules()}
        self.calls: List[ModuleCall] = []  # in call order (pre-order)
        self.call_counts: Dict[str, int] = {}
        self.output: Any = None
        stack: List[ModuleCall] = []
        handles = []

        def pre_hook(module, args, kwargs):
            name = self.names[id(module)]
            inputs = [t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None]
            call = ModuleCall(name, module, stack[-1] if stack else None, inputs, _sequence_probe())
            if stack:
                stack[-1].children.append(call)
            stack.append(call)
            self.calls.append(call)
            self.call_counts[name] = self.call_counts.get(name, 0) + 1

        def post_hook(module, args, kwargs, output):
            call = stack.pop()
            outs = list(_tensors(output))
            call.outputs = [t.grad_fn for t in outs if t.grad_fn is not None]
            if isinstance(output, torch.Tensor):
                call.output_shape = tuple(output.shape)

        try:
            for module in model.modules():
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
                handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
            leaf = example_input.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                self.output = model(leaf.view_as(leaf))
        finally:
            for h in handles:
                h.remove()
        self._merging: Dict[int, bool] = {}

    # ------------------------------------------------------------------ queries
    def root(self) -> ModuleCall:
        return self.calls[0]

    def runs_once(self, name: str) -> bool:
        return self.call_counts.get(name, 0) == 1

    def merges(self, call: ModuleCall) -> bool:
        """True when the call's own forward merges several paths from its inputs."""
        key = id(call)
        if key not in self._merging:
            self._merging[key] = _count_paths(call) > 1
        return self._merging[key]

    def feature_map_calls(self) -> List[ModuleCall]:
        """Calls producing one 4-D tensor, in call order."""
        return [c for c in self.calls if c.output_shape is not None and len(c.output_shape) == 4]


def _count_paths(call: ModuleCall) -> int:
    """Distinct autograd paths from the call's outputs to its inputs, child calls contracted."""
    targets = {id(n) for n in call.inputs}
    if not targets or not call.outputs:
        return 0
    shortcuts: Dict[int, List[Any]] = {}
    for child in call.children:
        child_inputs = {id(n) for n in child.inputs}
        for out in child.outputs:
            if id(out) not in child_inputs:  # identity-like children (Dropout in eval) pass through
                shortcuts[id(out)] = child.inputs
    memo: Dict[int, int] = {}

    def successors(node: Any) -> List[Any]:
        if id(node) in shortcuts:
            return shortcuts[id(node)]
        return [n for n, _ in node.next_functions if n is not None]

    def is_base(node: Any) -> bool:
        return id(node) in targets or node._sequence_nr() < call.first_node

    total = 0
    for out in call.outputs:
        stack: List[Tuple[Any, bool]] = [(out, False)]
        while stack:
            node, expanded = stack.pop()
            key = id(node)
            if key in memo:
                continue
            if is_base(node):
                memo[key] = 1 if key in targets else 0
                continue
            nexts = successors(node)
            if expanded:
                memo[key] = min(_PATH_CAP, sum(memo.get(id(n), 0) for n in nexts))
                continue
            stack.append((node, True))
            stack.extend((n, False) for n in nexts if id(n) not in memo)
        total = min(_PATH_CAP, total + memo[id(out)])
    return total


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES)


def _is_activation(module: nn.Module) -> bool:
    """torch.nn activation modules, or a user-defined one (a Swish class): parameter-free,
    childless and defined outside torch (the caller also checks it keeps the shape)."""
    if isinstance(module, _NOT_ACTIVATIONS):
        return False
    if type(module).__module__ == nn.modules.activation.__name__:
        return True
    return (
        not type(module).__module__.startswith("torch.")
        and next(module.parameters(), None) is None
        and next(module.children(), None) is None
    )


def _auto_layers(trace: ModelTrace) -> List[str]:
    """The ``layers="auto"`` rule (see the module docstring), in call order."""
    consumers: Dict[int, List[ModuleCall]] = {}
    for c in trace.calls:
        for node in c.inputs:
            consumers.setdefault(id(node), []).append(c)
    chosen: List[Tuple[int, str]] = []
    order = {id(c): i for i, c in enumerate(trace.calls)}

    def next_in_unit(call: ModuleCall, kind: Callable[[nn.Module], bool]) -> Optional[ModuleCall]:
        if len(call.outputs) != 1:
            return None
        for consumer in consumers.get(id(call.outputs[0]), []):
            passes_through = any(out is call.outputs[0] for out in consumer.outputs)  # Identity, Dropout
            if kind(consumer.module) and consumer.output_shape == call.output_shape and not passes_through:
                return consumer
        return None

    def conv_unit(conv: ModuleCall) -> Optional[str]:
        unit = [conv]
        norm = next_in_unit(conv, _is_norm)
        if norm is not None:
            unit.append(norm)
        act = next_in_unit(unit[-1], _is_activation)
        if act is not None:
            unit.append(act)
        for member in reversed(unit):
            if trace.runs_once(member.name):
                return member.name
        return None

    def visit(call: ModuleCall) -> None:
        for child in call.children:
            four_d = child.output_shape is not None and len(child.output_shape) == 4
            if _is_conv(child.module):
                if four_d and trace.runs_once(child.name):
                    name = conv_unit(child)
                    if name is not None:
                        chosen.append((order[id(child)], name))
            elif four_d and trace.runs_once(child.name) and trace.merges(child):
                chosen.append((order[id(child)], child.name))
            else:
                visit(child)

    visit(trace.root())
    seen: Set[str] = set()
    names = []
    for _, name in sorted(chosen):
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _explicit_layers(trace: ModelTrace, layers: LayerSpec) -> List[str]:
    all_names = [n for n, _ in trace.model.named_modules() if n]
    if callable(layers):
        eligible = {c.name for c in trace.feature_map_calls() if trace.runs_once(c.name)}
        wanted = [n for n, m in trace.model.named_modules() if n in eligible and layers(n, m)]
        if not wanted:
            raise ValueError(
                "the layer predicate selected no module with a 4-D output that runs once per forward pass; "
                "it is called as predicate(name, module) for each such module"
            )
    else:
        wanted = list(layers)
        if not wanted:
            raise ValueError("layers is an empty list; pass module names (model.named_modules()), a predicate, or 'auto'")
        for name in wanted:
            if not isinstance(name, str):
                raise TypeError(f"layer names must be strings, got {type(name).__name__}")
            if name not in trace.names.values():
                close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else f"; the model's modules include: {', '.join(all_names[:8])}"
                raise ValueError(f"the model has no module named {name!r}{hint}")
    first_call: Dict[str, int] = {}
    for i, c in enumerate(trace.calls):
        first_call.setdefault(c.name, i)
    for name in wanted:
        count = trace.call_counts.get(name, 0)
        if count != 1:
            raise ValueError(
                f"module {name!r} runs {count} times per forward pass; a gated layer must run exactly once "
                "(pick a module that is called once, e.g. the block or conv around it)"
            )
        shape = trace.calls[first_call[name]].output_shape
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"module {name!r} outputs {shape if shape is not None else 'no single tensor'}, not a 4-D feature map "
                "(B, C, H, W); gate convolutional layers or blocks only"
            )
    return sorted(set(wanted), key=lambda n: first_call[n])


def select_layers(model: nn.Module, example_input: torch.Tensor, layers: LayerSpec = "auto") -> List[str]:
    """Module paths of the gated layers of ``model``, in execution order.

    ``example_input``: (B, C, H, W) images the model accepts (one is enough).
    ``layers``: ``"auto"`` (the rule in the module docstring), a list of module names
    (``model.named_modules()`` paths) or a predicate ``(name, module) -> bool``
    (asked only about modules that output one 4-D tensor and run once per forward).
    Raises ValueError when the model has no 4-D feature maps or a name is unknown.
    """
    return select_layers_and_blocks(model, example_input, layers)[0]


def select_layers_and_blocks(
    model: nn.Module, example_input: torch.Tensor, layers: LayerSpec = "auto"
) -> Tuple[List[str], List[str]]:
    """``(select_layers(...), the selected layers that are merging blocks)``, from one trace."""
    if isinstance(layers, str) and layers != "auto":
        layers = [layers]
    trace = ModelTrace(model, example_input)
    if not trace.feature_map_calls():
        raise ValueError(
            f"{type(model).__name__} produces no 4-D feature maps (B, C, H, W) in any module; "
            "datapaths need a convolutional network"
        )
    if layers == "auto":
        names = _auto_layers(trace)
        if not names:
            raise ValueError(
                f"found no convolution or merging block in {type(model).__name__} that runs once per forward pass; "
                "pass layers=[module names] explicitly"
            )
    else:
        names = _explicit_layers(trace, layers)
    selected = set(names)
    blocks = [c.name for c in trace.calls if c.name in selected and trace.merges(c)]
    return names, blocks


class GateHooks:
    """Context manager: per-example gates on the 4-D outputs of named modules.

    Inside the ``with`` block, set ``gates`` to a list with one ``(B, C_l)`` tensor per
    layer (same order as ``layers``) before a forward pass; each layer's output
    ``(B, C_l, H_l, W_l)`` is multiplied by ``gates[l][:, :, None, None]``.
    ``gates = None`` runs the network ungated. With ``record=True`` the ungated
    outputs of the last forward pass are kept (detached) in ``activations``.
    Every hook is removed on exit, also when an exception is raised.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], record: bool = False):
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"the model has no module named {missing[0]!r}; use select_layers() to get valid names")
        self.model = model
        self.layers = list(layers)
        self.record = record
        self.gates: Optional[Sequence[torch.Tensor]] = None
        self.activations: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._modules = [modules[n] for n in self.layers]
        self._calls = [0] * len(self.layers)
        self._handles: List[Any] = []

    def __enter__(self) -> "GateHooks":
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset_calls))
            for index, module in enumerate(self._modules):
                self._handles.append(module.register_forward_hook(self._make_hook(index)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this object registered."""
        while self._handles:
            self._handles.pop().remove()

    def _reset_calls(self, module, args) -> None:
        self._calls = [0] * len(self.layers)

    def _make_hook(self, index: int):
        name = self.layers[index]

        def hook(module, args, output):
            self._calls[index] += 1
            if self._calls[index] > 1:
                raise ValueError(f"gated module {name!r} ran twice in one forward pass; gate a module that runs once")
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"gated module {name!r} returned {shape}, not a 4-D feature map (B, C, H, W)")
            if self.record:
                self.activations[index] = output.detach()
            if self.gates is None:
                return None
            gate = self.gates[index]
            if gate.shape != output.shape[:2]:
                raise ValueError(
                    f"gates for layer {name!r} have shape {tuple(gate.shape)}; the layer needs {tuple(output.shape[:2])} (batch, channels)"
                )
            return output * gate.to(output.dtype)[:, :, None, None]

        return hook
