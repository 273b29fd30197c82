"""A saved program's module tree, rebuilt from its checked JSON without torch's export deserializer.

:func:`build_program` turns a program JSON that ``model_artifact.sanitise_program_json``
accepted into a :class:`ProgramTree`: one torch.fx graph per module call, cut along the
nodes' ``nn_module_stack`` exactly as ``torch.export.unflatten`` cuts it, so every module
keeps its path in the user's model; :meth:`ProgramTree.instantiate` makes modules that run
their graphs as generated Python code. A program outside what it rebuilds raises
:class:`UnsupportedProgram` naming the construct (``model_artifact`` then uses torch's
loader). Why and what is supported: docs/architecture.md, "Model artifact".
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

EMPTY_STACK_KEY = "_empty_nn_module_stack_from_metadata_hook"
POSITIONAL, KEYWORD = 1, 2  # torch._export.serde.schema.ArgumentKind
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A module or tensor name inside a path: digits (ModuleList items) and "-" (regnet's block4-11) allowed.
# Such names reach generated code only as getattr(self, "<name>"), so the character set is all that matters.
_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_OPERATOR = re.compile(r"^torch\.ops\.(aten|prims)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_SYMBOL = re.compile(r"^(?:Symbol\('([a-z]+\d+)'(?:, [a-z]+=True)*\)|([a-z]+\d+))$")
_DTYPES = {  # torch._export.serde.schema.ScalarType member -> torch dtype
    "BYTE": "uint8", "CHAR": "int8", "UINT16": "uint16", "SHORT": "int16", "INT": "int32", "LONG": "int64",
    "HALF": "float16", "FLOAT": "float32", "DOUBLE": "float64", "COMPLEXHALF": "complex32",
    "COMPLEXFLOAT": "complex64", "COMPLEXDOUBLE": "complex128", "BOOL": "bool", "BFLOAT16": "bfloat16",
    "UINT32": "uint32", "UINT64": "uint64",
}
_LAYOUTS = {"Strided": "strided", "SparseCoo": "sparse_coo", "SparseCsr": "sparse_csr", "SparseCsc": "sparse_csc",
            "SparseBsr": "sparse_bsr", "SparseBsc": "sparse_bsc"}
_MEMORY_FORMATS = {"ContiguousFormat": "contiguous_format", "ChannelsLast": "channels_last",
                   "ChannelsLast3d": "channels_last_3d", "PreserveFormat": "preserve_format"}


# names a child or weight cannot have: attributes every module has (and torch's add_module refuses)
_RESERVED = set(dir(nn.Module)) | set(vars(nn.Module())) | {"graph", "type_name", "_graph_forward", "_input_dims"}


class UnsupportedProgram(Exception):
    """The program uses a construct :func:`build_program` does not rebuild (the message names it)."""


# ----------------------------------------------------------------------------- the result
class ProgramModule(nn.Module):
    """A module of a loaded program. Its class holds ``graph`` (the fx graph of its one call,
    calls of its children as ``call_module`` nodes, its weights as ``get_attr``), ``forward``
    (that graph as generated code) and ``type_name`` (the original class, a display string)."""

    graph: fx.Graph
    type_name: Optional[str]


class ProgramTree:
    """What :func:`build_program` read: module templates, the weights, the input's expected shape.

    Thread-safe to share: :meth:`instantiate` only reads it.
    """

    def __init__(self, root: "_Template", state: Dict[str, Tuple[str, torch.Tensor, bool]], input_dims: List[Any]):
        self._root, self._state, self._input_dims = root, state, input_dims

    def instantiate(self) -> nn.Module:
        """A new module tree (own modules and Parameter objects, the program's tensors): images -> the output."""
        modules: Dict[str, nn.Module] = {}

        def make(template: "_Template", path: str) -> nn.Module:
            module = template.cls() if template.cls is not None else nn.Module()
            modules[path] = module
            for name, child in template.children.items():
                module._modules[name] = make(child, f"{path}.{name}" if path else name)
            return module

        root = make(self._root, "")
        shared: Dict[int, Any] = {}  # one Parameter object per tensor: aliased names stay aliased
        for fqn, (kind, tensor, persistent) in self._state.items():
            owner, _, name = fqn.rpartition(".")
            module = modules[owner]
            if kind == "parameter":
                key = _tensor_id(tensor)
                if key not in shared:
                    shared[key] = nn.Parameter(tensor, requires_grad=False)
                value = shared[key]
                module._parameters[name] = value
            elif kind == "buffer":
                module._buffers[name] = tensor
                if not persistent:
                    module._non_persistent_buffers_set.add(name)
            else:
                module.__dict__[name] = tensor
        root.__dict__["_input_dims"] = self._input_dims
        return root


class _Template:
    """One module of the tree: its class (None: a container never called) and its children."""

    def __init__(self):
        self.cls: Optional[type] = None
        self.children: Dict[str, "_Template"] = {}


def _root_forward(self, x):
    if not isinstance(x, fx.Proxy):  # torch.fx tracing this module (contribution.lca_graph): no concrete shape
        _check_input(x, self._input_dims)
    return self._graph_forward(x)


def _check_input(x: Any, dims: List[Any]) -> None:
    """Raise RuntimeError unless ``x`` is a tensor with the exported input's shape (as
    ``torch.export``'s own input check: static sizes equal, each symbol in its range, equal everywhere)."""
    if not isinstance(x, torch.Tensor):
        raise RuntimeError(f"the model takes one image tensor, got {type(x).__name__}")
    if x.dim() != len(dims):
        raise RuntimeError(f"the model takes {len(dims)}-D input, got shape {tuple(x.shape)}")
    bound: Dict[str, int] = {}
    for axis, (size, dim) in enumerate(zip(x.shape, dims)):
        if isinstance(dim, int):
            if size != dim:
                raise RuntimeError(f"expected input at shape[{axis}] to be equal to {dim}, but got {size} (input shape {tuple(x.shape)})")
            continue
        symbol, low, high = dim
        if bound.setdefault(symbol, size) != size:
            raise RuntimeError(f"expected input at shape[{axis}] to equal the size {bound[symbol]} of another dimension, but got {size}")
        if size < low or size > high:
            raise RuntimeError(f"expected input at shape[{axis}] to be in [{low}, {high}], but got {size}")


# ----------------------------------------------------------------------------- building
class _Frame:
    """One call of a module while its graph is built (``torch.export.unflatten``'s ``_ModuleFrame``)."""

    def __init__(self, parent: Optional["_Frame"], path: str, type_name: Optional[str], call_index: int, module_id: str):
        self.parent, self.path, self.type_name, self.call_index, self.module_id = parent, path, type_name, call_index, module_id
        self.stack: List[Tuple[str, Optional[str], int]] = (parent.stack if parent else []) + [(path, type_name, call_index)]
        self.scope = path.split(".") if path else []
        self.graph = fx.Graph()
        self.values: Dict[str, fx.Node] = {}  # program value name -> node of this graph (defined here), in order
        self.inputs: Dict[str, fx.Node] = {}  # program value name -> placeholder
        self.attrs: Dict[str, fx.Node] = {}  # attribute path -> get_attr node
        self.call: Optional[fx.Node] = None  # the call_module node in the parent's graph
        self.template: Optional[_Template] = None
        self.accessor = ""  # the child's name path below the parent's module


class _Builder:
    def __init__(self, program: Dict[str, Any], state_dict: Dict[str, torch.Tensor], constants: Dict[str, torch.Tensor]):
        module = program["graph_module"]
        self.graph_json = module["graph"]
        self.signature = module["signature"]
        self.call_graph = module.get("module_call_graph") or []
        self.range_constraints = program.get("range_constraints") or {}
        self.state_dict, self.constants = state_dict, constants
        self.state: Dict[str, Tuple[str, torch.Tensor, bool]] = {}  # fqn -> (kind, tensor, persistent)
        self.state_names: Dict[str, List[str]] = {}  # program input name -> the fqns holding its tensor
        self.user_inputs: List[str] = []
        self.frames_by_module: Dict[str, List[_Frame]] = {}
        self.templates: Dict[str, _Template] = {"": _Template()}
        self.called = {id(self.templates[""])}  # templates of module calls (a container may become one)
        self.classes: Dict[str, Callable] = {}  # generated source -> forward function (one compile per source)

    # ------------------------------------------------------------ signature and weights
    def read_signature(self) -> None:
        order: List[Tuple[str, str, torch.Tensor]] = []
        for spec in self.signature["input_specs"]:
            (kind, body), = spec.items()
            if kind == "user_input":
                arg = body["arg"]
                if set(arg) != {"as_tensor"}:
                    raise UnsupportedProgram(f"a graph input of kind {next(iter(arg))!r} (only tensors are supported)")
                self.user_inputs.append(arg["as_tensor"]["name"])
                continue
            if kind == "parameter":
                fqn, tensor, entry = body["parameter_name"], None, "parameter"
                tensor = self._tensor(self.state_dict, fqn)
                persistent = True
            elif kind == "buffer":
                fqn, persistent, entry = body["buffer_name"], body.get("persistent", True) is not False, "buffer"
                tensor = self._tensor(self.state_dict if persistent else self.constants, fqn)
            elif kind == "tensor_constant":
                fqn, persistent, entry = body["tensor_constant_name"], True, "constant"
                tensor = self._tensor(self.constants, fqn)
            else:
                raise UnsupportedProgram(f"a graph input of kind {kind!r}")
            _check_path(fqn)
            self.state[fqn] = (entry, tensor, persistent)
            order.append((body["arg"]["name"], fqn, tensor))
        if len(self.user_inputs) != 1:
            raise UnsupportedProgram(f"{len(self.user_inputs)} user inputs (the model must take one image tensor)")
        for spec in self.signature["output_specs"]:
            (kind, body), = spec.items()
            if kind != "user_output" or set(body["arg"]) != {"as_tensor"}:
                raise UnsupportedProgram(f"a graph output of kind {kind!r} (only user outputs, tensors, are supported)")
        if len(self.signature["output_specs"]) != 1:
            raise UnsupportedProgram(f"{len(self.signature['output_specs'])} outputs (the model must return one tensor)")
        self._check_root_spec()
        # the tensors not named by the signature (unused, or aliases of used ones: tied weights) are kept
        # too, at their paths, as torch.export.unflatten keeps them
        for table, is_state_dict in ((self.constants, False), (self.state_dict, True)):
            for fqn, tensor in table.items():
                if fqn in self.state:
                    continue
                _check_path(fqn)
                if not is_state_dict:
                    kind = "constant"
                else:
                    kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
                self.state[fqn] = (kind, tensor, True)
        by_tensor: Dict[Any, List[str]] = {}
        for fqn, (_, tensor, _) in self.state.items():
            by_tensor.setdefault(_tensor_id(tensor), []).append(fqn)
        for name, fqn, tensor in order:
            aliases = by_tensor[_tensor_id(tensor)]
            self.state_names[name] = [fqn] + [a for a in aliases if a != fqn]

    @staticmethod
    def _tensor(table: Dict[str, torch.Tensor], fqn: str) -> torch.Tensor:
        if fqn not in table:
            raise KeyError(f"the weights have no tensor {fqn!r}")
        return table[fqn]

    def _check_root_spec(self) -> None:
        root = next((e for e in self.call_graph if e.get("fqn") == ""), None)
        signature = root.get("signature") if root else None
        if not signature:
            raise UnsupportedProgram("no call signature of the root module")
        in_spec, out_spec = json.loads(signature["in_spec"])[1], json.loads(signature["out_spec"])[1]
        children = in_spec.get("children_spec") or []
        one_tensor = (in_spec.get("type") == "builtins.tuple" and len(children) == 2
                      and children[0].get("type") == "builtins.tuple" and [c.get("type") for c in children[0]["children_spec"]] == [None]
                      and children[1].get("type") == "builtins.dict" and not children[1]["children_spec"])
        if not one_tensor:
            raise UnsupportedProgram("a root module that takes more than one positional tensor")
        if out_spec.get("type") is not None:
            raise UnsupportedProgram("a root module that returns a container (the model must return one tensor)")

    def input_dims(self) -> List[Any]:
        meta = self.graph_json["tensor_values"][self.user_inputs[0]]
        dims: List[Any] = []
        for size in meta["sizes"]:
            if "as_int" in size:
                dims.append(int(size["as_int"]))
                continue
            match = _SYMBOL.match(size["as_expr"]["expr_str"])
            if match is None:
                raise UnsupportedProgram(f"an input size given by the expression {size['as_expr']['expr_str'][:60]!r}")
            symbol = match.group(1) or match.group(2)
            bounds = self.range_constraints.get(symbol, {})
            dims.append((symbol, int(bounds.get("min_val", 0)), _bound(bounds.get("max_val"))))
        return dims

    # ------------------------------------------------------------ outlining the module calls
    def outline(self) -> _Frame:
        nodes = self.graph_json["nodes"]
        last_use: Dict[str, int] = {}
        for index, node in enumerate(nodes):
            for inp in node["inputs"]:
                for name in _referenced(inp["arg"]):
                    last_use[name] = index
        for output in self.graph_json["outputs"]:
            for name in _referenced(output):
                last_use[name] = len(nodes)
        root = _Frame(None, "", None, 0, "")
        root.template = self.templates[""]
        for name in self.user_inputs:
            root.inputs[name] = root.graph.placeholder(_node_name(name) or "x")
        frames = [root]
        for index, node in enumerate(nodes):
            stack, keys = self._module_stack(node, frames[-1].stack)
            while stack[: len(frames[-1].stack)] != frames[-1].stack:
                self._finish(frames.pop(), index, last_use)
            while len(frames[-1].stack) < len(stack):
                path, type_name, call_index = stack[len(frames[-1].stack)]
                frames.append(self._enter(frames[-1], path, type_name, call_index, keys[len(frames[-1].stack)].split("@")[0]))
            self._copy(frames[-1], node)
        while len(frames) > 1:
            self._finish(frames.pop(), len(nodes), last_use)
        outputs = [self._value(root, _output_name(o)) for o in self.graph_json["outputs"]]
        root.graph.output(outputs[0])
        return root

    @staticmethod
    def _module_stack(node: Dict[str, Any], current: List[Tuple[str, Optional[str], int]]) -> Tuple[List[Tuple[str, Optional[str], int]], List[str]]:
        """The node's module stack as (path, type, call index) entries, made a chain of nested paths
        (``torch.export.unflatten``'s ``_fix_nn_module_stacks``), and the entries' keys."""
        text = (node.get("metadata") or {}).get("nn_module_stack")
        if not text:
            raise UnsupportedProgram(f"node {node.get('name')!r} has no module stack")
        entries = [item.split(",") for item in text.split(";")]
        if any(len(e) != 3 for e in entries):
            raise UnsupportedProgram(f"node {node.get('name')!r} has a malformed module stack")
        if len(entries) == 1 and entries[0][0] == EMPTY_STACK_KEY:
            return current, []
        paths = [path for _, path, _ in entries]
        kept = 1
        for previous, path in zip(paths, paths[1:]):
            if not (len(previous) < len(path) and path.startswith(previous)):
                break
            kept += 1
        entries = entries[:kept]
        if entries[0][1] != "":
            raise UnsupportedProgram(f"node {node.get('name')!r} has a module stack that does not start at the root")
        stack = [(path, type_name if path else None, int(key.rsplit("@", 1)[1]) if "@" in key else 0)
                 for key, path, type_name in entries]
        return stack, [key for key, _, _ in entries]

    def _enter(self, parent: _Frame, path: str, type_name: str, call_index: int, module_id: str) -> _Frame:
        frame = _Frame(parent, path, type_name, call_index, module_id)
        call_name = path if call_index == 0 else f"{path}@{call_index}"
        parent_parts, child_parts = parent.scope, call_name.split(".")
        if child_parts[: len(parent_parts)] != parent_parts or len(child_parts) == len(parent_parts):
            raise UnsupportedProgram(f"module {path!r} is called from {parent.path!r}, which does not contain it")
        accessor = child_parts[len(parent_parts):]
        for part in accessor[:-1]:
            _check_attribute(part)
        _check_attribute(accessor[-1].split("@")[0])
        owner = parent.template
        for part in accessor[:-1]:
            owner = owner.children.setdefault(part, _Template())
        name = accessor[-1]
        template = owner.children.get(name)
        if template is None:
            template = owner.children[name] = _Template()
        elif id(template) in self.called:
            raise UnsupportedProgram(f"module {call_name!r} is entered twice under one name")
        self.called.add(id(template))
        frame.template, frame.accessor = template, ".".join(accessor)
        frame.call = parent.graph.call_module(frame.accessor, ())
        self.frames_by_module.setdefault(module_id, []).append(frame)
        return frame

    def _finish(self, frame: _Frame, next_index: int, last_use: Dict[str, int]) -> None:
        """Close a call: its outputs are the values it defined that a later node reads."""
        outputs = [name for name in frame.values if last_use.get(name, -1) >= next_index]
        parent = frame.parent
        if len(outputs) == 1:
            frame.graph.output(frame.values[outputs[0]])
            parent.values[outputs[0]] = frame.call
        else:
            frame.graph.output([frame.values[n] for n in outputs])
            for i, name in enumerate(outputs):
                parent.values[name] = parent.graph.call_function(operator.getitem, (frame.call, i))

    def _value(self, frame: _Frame, name: str, before: Optional[fx.Node] = None) -> fx.Node:
        """The node standing for program value ``name`` in ``frame`` (``torch.export.unflatten``'s
        ``remap_input`` followed by its ``_sink_params``): a weight inside the frame's module is a
        ``get_attr``; any other value defined outside is a new first argument of the frame's call."""
        if name in frame.values:
            return frame.values[name]
        if name in frame.inputs:
            return frame.inputs[name]
        for fqn in self.state_names.get(name, ()):
            parts = fqn.split(".")
            if parts[: len(frame.scope)] == frame.scope:
                target = ".".join(parts[len(frame.scope):])
                if target not in frame.attrs:
                    if before is None:
                        frame.attrs[target] = frame.graph.get_attr(target)
                    else:
                        with frame.graph.inserting_before(before):
                            frame.attrs[target] = frame.graph.get_attr(target)
                return frame.attrs[target]
        if frame.parent is None:
            raise KeyError(f"the program reads {name!r} before defining it")
        with frame.graph.inserting_before(None):  # prepended, as torch's (the call's arguments: last-read first)
            frame.inputs[name] = frame.graph.placeholder(_node_name(name) or "arg")
        frame.call.insert_arg(0, self._value(frame.parent, name, before=frame.call))
        return frame.inputs[name]

    def _copy(self, frame: _Frame, node: Dict[str, Any]) -> None:
        target = _operator(node["target"])
        args, kwargs = self._arguments(frame, target, node)
        fx_node = frame.graph.create_node("call_function", target, args, kwargs, _node_name(node.get("name") or ""))
        outputs = node["outputs"]
        if not outputs:
            return
        if len(outputs) == 1:
            (kind, value), = outputs[0].items()
            if kind == "as_tensor":
                frame.values[value["name"]] = fx_node
                return
            if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
                frame.values[value["as_name"]] = fx_node
                return
            if kind == "as_none":
                return
            if kind == "as_tensors":
                outputs = [{"as_tensor": v} for v in value]
        self._getitems(frame, fx_node, outputs)

    def _getitems(self, frame: _Frame, fx_node: fx.Node, outputs: Sequence[Dict[str, Any]]) -> None:
        for index, output in enumerate(outputs):
            (kind, value), = output.items()
            if kind in ("as_tensor", "as_sym_int", "as_sym_float"):
                name = value["name"] if kind == "as_tensor" else value["as_name"]
                frame.values[name] = frame.graph.create_node("call_function", operator.getitem, (fx_node, index), {}, _node_name(name))
            elif kind in ("as_tensors", "as_sym_ints", "as_sym_floats"):
                item = frame.graph.call_function(operator.getitem, (fx_node, index))
                self._getitems(frame, item, [{"as_tensor": v} if kind == "as_tensors" else {kind[:-1]: v} for v in value])
            elif kind != "as_none":
                raise UnsupportedProgram(f"an operator output of kind {kind!r}")

    def _arguments(self, frame: _Frame, target: Any, node: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any]]:
        """Positional and keyword arguments, placed by the operator's schema as torch's deserializer places them."""
        given = {inp["name"]: (inp.get("kind"), self._argument(frame, inp["arg"])) for inp in node["inputs"]}
        if target is operator.getitem:  # no schema: positional unless named a keyword
            args = tuple(v for k, (kind, v) in given.items() if kind == POSITIONAL or k == "")
            return args, {k: v for k, (kind, v) in given.items() if not (kind == POSITIONAL or k == "")}
        if target is torch.ops.aten.item.default:
            return tuple(v for _, v in given.values()), {}
        args: List[Any] = []
        kwargs: Dict[str, Any] = {}
        for schema_arg in target._schema.arguments:
            name = schema_arg.name
            if name in given:
                kind, value = given[name]
                if kind == POSITIONAL:
                    args.append(value)
                    continue
                if kind == KEYWORD and not _keyword(name):
                    kwargs[name] = value
                    continue
            if not schema_arg.has_default_value() and not schema_arg.kwarg_only:
                if name not in given:
                    raise KeyError(f"node {node.get('name')!r} lacks the argument {name!r} of {node['target']}")
                args.append(given[name][1])
            elif _keyword(name):
                kwargs.clear()
                args.append(given[name][1])
            elif name in given:
                kwargs[name] = given[name][1]
        return tuple(args), kwargs

    def _argument(self, frame: _Frame, arg: Dict[str, Any]) -> Any:
        (kind, value), = arg.items()
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            return self._value(frame, value["name"])
        if kind == "as_tensors":
            return [self._value(frame, v["name"]) for v in value]
        if kind == "as_optional_tensors":
            return [None if "as_none" in v else self._value(frame, v["as_tensor"]["name"]) for v in value]
        if kind in ("as_int", "as_bool", "as_string"):
            return {"as_int": int, "as_bool": bool, "as_string": str}[kind](value)
        if kind in ("as_ints", "as_bools", "as_strings"):
            convert = {"as_ints": int, "as_bools": bool, "as_strings": str}[kind]
            return [convert(v) for v in value]
        if kind == "as_float":
            return float(value)
        if kind == "as_floats":
            return [float(v) for v in value]
        if kind == "as_complex":
            return complex(value["real"], value["imag"])
        if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
            return self._symbolic(frame, value)
        if kind in ("as_sym_ints", "as_sym_floats", "as_sym_bools"):
            return [self._symbolic(frame, v) for v in value]
        if kind == "as_scalar_type":
            return _enum_value("ScalarType", _DTYPES, value)
        if kind == "as_layout":
            return _enum_value("Layout", _LAYOUTS, value)
        if kind == "as_memory_format":
            return _enum_value("MemoryFormat", _MEMORY_FORMATS, value)
        if kind == "as_device":
            device_type = str(value["type"])
            return torch.device(device_type) if value.get("index") is None else torch.device(device_type, int(value["index"]))
        raise UnsupportedProgram(f"an operator argument of kind {kind!r}")

    def _symbolic(self, frame: _Frame, value: Dict[str, Any]) -> Any:
        (kind, item), = value.items()
        if kind == "as_name":
            return self._value(frame, item)
        return {"as_int": int, "as_float": float, "as_bool": bool}[kind](item)

    # ------------------------------------------------------------ repeated calls, code, the tree
    def deduplicate(self) -> None:
        """A module called more than once keeps one graph, as ``torch.export.unflatten`` does when
        every call's graph is the same; calls with different graphs are not supported."""
        for frames in self.frames_by_module.values():
            for index, frame in enumerate(frames):
                if frame.call_index == 0:
                    continue
                same = next((f for f in frames[:index] if f.path == frame.path and f.call_index == 0
                             and _graph_dump(f.graph) == _graph_dump(frame.graph)), None)
                if same is None:
                    raise UnsupportedProgram(f"module {frame.path!r} is called {len(frames)} times with different graphs")
                owner = frame.parent.template
                parts = frame.accessor.split(".")
                for part in parts[:-1]:
                    owner = owner.children[part]
                del owner.children[parts[-1]]
                frame.call.target = ".".join(parts[:-1] + [parts[-1].split("@")[0]])

    def compile(self, frame: _Frame) -> None:
        """Give each called module's template its class: the graph as ``forward`` (the root: behind the input check)."""
        frame.graph.lint()
        code = frame.graph.python_code(root_module="self")
        forward = self.classes.get(code.src)
        if forward is None:
            namespace = dict(code.globals)
            exec(compile(code.src, "<aevis program>", "exec", dont_inherit=True), namespace)  # noqa: S102 - fx's code of a checked graph
            forward = self.classes[code.src] = namespace["forward"]
        body = {"graph": frame.graph, "type_name": frame.type_name}
        if frame.parent is None:
            body.update(forward=_root_forward, _graph_forward=forward)
        else:
            body["forward"] = forward
        frame.template.cls = type("ProgramModule", (ProgramModule,), body)

    def complete_tree(self) -> None:
        """Every module the program names (also those that run no operator, e.g. nn.Identity) and every
        weight's module exist; children in the order of the program's module list."""
        for entry in self.call_graph:
            fqn = entry.get("fqn") or ""
            if fqn and "@" not in fqn:
                _check_path(fqn)
                self._template(fqn.split("."))
        for fqn in self.state:
            self._template(fqn.split(".")[:-1])
        order = {e.get("fqn"): i for i, e in enumerate(self.call_graph)}

        def reorder(template: _Template, prefix: str) -> None:
            items = list(template.children.items())
            for name, child in items:
                reorder(child, f"{prefix}{name}.")
            items.sort(key=lambda item: order.get(prefix + item[0], len(order)))
            template.children = dict(items)

        reorder(self.templates[""], "")
        for fqn in self.state:
            owner, _, name = fqn.rpartition(".")
            if name in self._template(owner.split(".") if owner else []).children:
                raise UnsupportedProgram(f"weight {fqn!r} has the name of a module")

    def _template(self, parts: Sequence[str]) -> _Template:
        template = self.templates[""]
        for part in parts:
            template = template.children.setdefault(part, _Template())
        return template


def build_program(program: Dict[str, Any], state_dict: Dict[str, torch.Tensor], constants: Dict[str, torch.Tensor]) -> ProgramTree:
    """The module tree of a checked program JSON (``model_artifact.sanitise_program_json``) with its
    weights (``torch.load(weights_only=True)`` of weights.pt / constants.pt).

    Raises:
        UnsupportedProgram: the program uses a construct this loader does not rebuild (named).
        KeyError, ValueError, TypeError: the JSON is malformed.
    """
    builder = _Builder(program, state_dict, constants)
    builder.read_signature()
    dims = builder.input_dims()
    root = builder.outline()
    builder.deduplicate()
    for frame in [root] + [f for frames in builder.frames_by_module.values() for f in frames if f.call_index == 0]:
        builder.compile(frame)
    builder.complete_tree()
    return ProgramTree(builder.templates[""], builder.state, dims)


# ----------------------------------------------------------------------------- helpers
def _operator(target: Any) -> Any:
    """The operator a node calls: ``operator.getitem`` or an ATen / prims OpOverload looked up by name."""
    if target == "_operator.getitem":
        return operator.getitem
    match = _OPERATOR.match(target) if isinstance(target, str) else None
    if match is None:
        raise UnsupportedProgram(f"a call of {str(target)[:80]!r}")
    namespace, name, overload = match.groups()
    if name.startswith("__") or overload.startswith("__"):
        raise UnsupportedProgram(f"a call of {target!r}")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        raise UnsupportedProgram(f"operator {target!r}, which this torch does not have") from None
    if not isinstance(packet, torch._ops.OpOverloadPacket) or overload not in packet.overloads():
        raise UnsupportedProgram(f"operator {target!r}, which this torch does not have")
    op = getattr(packet, overload)
    if not isinstance(op, torch._ops.OpOverload):
        raise UnsupportedProgram(f"a call of {target!r}")
    return op


def _referenced(arg: Any) -> Iterator[str]:
    """The program value names an argument (or a graph output) reads."""
    stack = [arg]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("name", "as_name") and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _output_name(output: Dict[str, Any]) -> str:
    (kind, value), = output.items()
    if kind != "as_tensor":
        raise UnsupportedProgram(f"a graph output of kind {kind!r}")
    return value["name"]


def _node_name(name: str) -> Optional[str]:
    """``name`` when it is a plain Python identifier (fx may still rename it); else None (fx names the node)."""
    return name if _IDENTIFIER.match(name) and not _keyword(name) and not name.startswith("__") else None


def _keyword(name: str) -> bool:
    import keyword

    return keyword.iskeyword(name)


def _check_attribute(name: str) -> None:
    """A module or weight name: letters, digits, ``_``, ``-``; no keyword (``self.if`` is no code), no dunder, no
    attribute every module has."""
    if not _ATTRIBUTE.match(name) or name.startswith("__") or name in _RESERVED or _keyword(name):
        raise UnsupportedProgram(f"a module or weight named {name[:80]!r}")


def _check_path(fqn: str) -> None:
    for part in fqn.split("."):
        _check_attribute(part)


def _bound(value: Any) -> float:
    return float("inf") if value is None or (isinstance(value, str) and "oo" in value) else int(value)


def _tensor_id(tensor: torch.Tensor) -> Any:
    """Equal for two names of one tensor (torch.load keeps shared storage shared)."""
    if tensor.numel() == 0:
        return id(tensor)
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _enum_value(schema_enum: str, table: Dict[str, str], value: Any) -> Any:
    from torch._export.serde import schema

    member = next((m for m in getattr(schema, schema_enum) if m.value == value), None)
    if member is None or member.name not in table or not hasattr(torch, table[member.name]):
        raise UnsupportedProgram(f"{schema_enum} {value!r}")
    return getattr(torch, table[member.name])


def _graph_dump(graph: fx.Graph) -> List[Tuple]:
    """The graph's structure (``torch.export.unflatten``'s ``_check_graph_equivalence``): ops, call and attribute
    targets and arguments, with nodes as their positions; a called child by its name without call index."""
    index: Dict[fx.Node, int] = {}
    dump = []

    def arg(value: Any) -> Any:
        if isinstance(value, fx.Node):
            return ("%", index[value])
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, tuple(arg(v) for v in value))
        if isinstance(value, dict):
            return ("dict", tuple((k, arg(v)) for k, v in value.items()))
        return (type(value).__name__, repr(value))

    for i, node in enumerate(graph.nodes):
        target = node.target if node.op in ("call_function", "get_attr") else ""
        if node.op == "call_module":  # stricter than torch's: the same children, whichever call of them
            target = ".".join(part.split("@")[0] for part in node.target.split("."))
        dump.append((node.op, str(target), arg(node.args), arg(node.kwargs)))
        index[node] = i
    return dump
